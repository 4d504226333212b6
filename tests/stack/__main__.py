"""``python -m tests.stack up``: the local stack with the agent and the examples, in the
foreground until Ctrl-C (or SIGTERM), then everything is torn down."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from tests.stack.agent_process import NODE_NAME, AgentProcess
from tests.stack.localstack import KUBE_BIN_DIR, REPO_ROOT, LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the stack, the agent and the examples")
    up.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    up.add_argument("--no-examples", action="store_true", help="do not apply examples/")
    args = parser.parse_args(argv)

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with LocalStack() as stack:
        allowed = stack.base_dir / "host-paths"
        allowed.mkdir()
        agent = AgentProcess(stack, gpus=args.gpus,
                             extra_args=["--allowed-host-path", str(allowed)]).start()
        try:
            if not args.no_examples:
                for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
                    print(stack.kubectl("apply", "-f", str(example)).stdout.strip())
            _print_banner(stack, agent, allowed)
            while not stopping:
                if not agent.healthy() and agent.process and not agent.process.alive():
                    print(f"the agent exited:\n{agent.process.log_tail()}", file=sys.stderr)
                    return 1
                time.sleep(1)
        finally:
            print("stopping the agent and tearing the stack down ...")
            agent.stop()
    print("done: no process, mount or container left behind")
    return 0


def _print_banner(stack: LocalStack, agent: AgentProcess, allowed: Path) -> None:
    print(f"""
gpudock local stack is up: etcd, kube-apiserver, dockerd and the agent for node
{NODE_NAME} with {agent.argv[agent.argv.index('--simulated-gpus') + 1]} simulated GPUs.
In another shell:

  export KUBECONFIG={stack.kubeconfig}
  export DOCKER_HOST={stack.docker_host}
  export PATH={KUBE_BIN_DIR}:$PATH

  kubectl get grs,svol -o wide           # the examples and their status
  kubectl describe grs knock             # conditions and events
  docker ps --format '{{{{.Names}}}} {{{{.Status}}}} {{{{.Ports}}}}'
  kubectl apply -f {REPO_ROOT / 'examples'}

hostPath mounts are allowed under {allowed}. Agent log: {agent.log_path}
Press Ctrl-C to stop; everything is removed.
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())
