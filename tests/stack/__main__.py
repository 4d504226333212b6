"""``python -m tests.stack up``: the local stack with the agent and the examples, in the
foreground until Ctrl-C (or SIGTERM), then everything is torn down.

By default the stack runs a real node (kubelet on the stack's dockerd), the agent image
is built into that dockerd and Chart/ is installed with Helm's engine, so the agent is
the DaemonSet's pod, as on a cluster. ``--agent-process`` runs the agent as a plain
process instead (no kubelet; what most tests do).

``python -m tests.stack reclaim``: take back what stacks whose process was killed
outright left behind (tests/stack/reclaim.py; every stack's start does it first)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from tests.stack import reclaim
from tests.stack.agent_process import NODE_NAME, AgentProcess
from tests.stack.helm_chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    build_image,
    helm,
    local_stack_values,
)
from tests.stack.localstack import KUBE_BIN_DIR, REPO_ROOT, LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the stack, the agent and the examples")
    up.add_argument("--gpus", type=int, default=8, help="simulated GPUs per node (default 8)")
    up.add_argument("--nodes", type=int, default=2,
                    help="GPU nodes, each an agent with its own dockerd (default 2); the "
                         "first is the chart's DaemonSet pod unless --agent-process")
    up.add_argument("--no-examples", action="store_true", help="do not apply examples/")
    up.add_argument("--agent-process", action="store_true",
                    help="run the agent as a process, without a kubelet and the chart")
    commands.add_parser("reclaim", help="take back what stacks whose process was "
                        "killed outright left on the machine (each start does it too)")
    args = parser.parse_args(argv)
    if args.command == "reclaim":
        for base_dir in reclaim.reclaim_dead_stacks():
            print(f"reclaimed {base_dir}")
        return 0

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with LocalStack(node=not args.agent_process) as stack:
        allowed = stack.shared_dir("host-paths")
        agents: list[AgentProcess] = []
        if args.agent_process:
            stack.kubectl("create", "namespace", NAMESPACE)  # where the Lease lives
            agents.append(AgentProcess(stack, gpus=args.gpus, extra_args=[
                "--allowed-host-path", str(allowed),
                "--release-namespace", NAMESPACE]).start())
            where = f"the agent process (log: {agents[0].log_path})"
        else:
            build_image(stack)
            helm(stack.kubeconfig).install(
                str(CHART_DIR), RELEASE, local_stack_values(
                    stack, simulatedGpus=args.gpus, allowedHostPaths=[str(allowed)]),
                namespace=NAMESPACE, create_namespace=True, wait="watcher", timeout=300)
            where = (f"the agent DaemonSet's pod (kubectl -n {NAMESPACE} logs "
                     f"ds/gpudock-agent)")
        for number in range(2, args.nodes + 1):  # more nodes: agents, each its dockerd
            engine = stack.add_engine(f"node-{number}")
            agents.append(AgentProcess(
                stack, node_name=f"gpu-node-{number}", gpus=args.gpus,
                name=f"agent-{number}", extra_args=[
                    "--docker-host", engine.host, "--instance-subnet", engine.instance_subnet,
                    "--allowed-host-path", str(allowed), "--release-namespace", NAMESPACE,
                    "--port-range", f"{30000 + 1000 * number}-{30999 + 1000 * number}",
                ]).start())
        try:
            if not args.no_examples:
                for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
                    print(stack.kubectl("apply", "-f", str(example)).stdout.strip())
            _print_banner(stack, args.gpus, allowed, where, args.nodes)
            while not stopping:
                for agent in agents:
                    if agent.process and not agent.process.alive():
                        print(f"the agent of {agent.node_name} exited:\n"
                              f"{agent.process.log_tail()}", file=sys.stderr)
                        return 1
                time.sleep(1)
        finally:
            print("stopping the agents and tearing the stack down ...")
            for agent in agents:
                agent.stop()
    print("done: no process, mount or container left behind")
    return 0


def _print_banner(stack: LocalStack, gpus: int, allowed: Path, where: str,
                  nodes: int) -> None:
    node = ", kubelet, controller-manager, scheduler" if stack.with_node else ""
    more = (f"\nNodes gpu-node-2 to gpu-node-{nodes}: agent processes, each with its own "
            "dockerd." if nodes > 1 else "")
    print(f"""
gpudock local stack is up: etcd, kube-apiserver, dockerd{node}, and the agent for node
{NODE_NAME} with {gpus} simulated GPUs as {where}.{more}
The agents elect the scheduler's leader; unpinned instances go where it places them.
In another shell:

  export KUBECONFIG={stack.kubeconfig}
  export DOCKER_HOST={stack.docker_host}
  export PATH={KUBE_BIN_DIR}:$PATH

  kubectl get gpunodes                   # the fleet
  kubectl get grs,svol -o wide           # the examples, their nodes and status
  kubectl describe grs knock             # conditions and events
  docker ps --format '{{{{.Names}}}} {{{{.Status}}}} {{{{.Ports}}}}'
  kubectl apply -f {REPO_ROOT / 'examples'}

hostPath mounts are allowed under {allowed}.
Press Ctrl-C to stop; everything is removed.
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())
