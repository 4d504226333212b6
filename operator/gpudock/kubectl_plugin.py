"""``kubectl gpudock``: the day-2 tools for people, as a kubectl plugin (the
executable ``kubectl-gpudock`` on PATH). It talks only to the API server, with the
current kubeconfig context and namespace as kubectl does (-n, --context,
--kubeconfig): exec and history/rollback of a GpuReplicaSet, the nodes' GPUs and
ports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from gpudock import rollout_commands
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.api import GROUP, VERSION, exec_request
from gpudock.errors import GpudockError
from gpudock.node_health import PLURAL as GPU_NODES
from gpudock.retained_commands import table

DEADLINE_EXIT = 124  # as timeout(1) says a command ran out of time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl gpudock", description=__doc__)
    parser.add_argument("-n", "--namespace", help="default: the context's")
    parser.add_argument("--context", help="kubeconfig context (default: the current)")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("exec", help="run a command in a GpuReplicaSet's container "
                              "(an ExecRequest); exits with the command's exit code")
    run.add_argument("name", help="the GpuReplicaSet")
    run.add_argument("--timeout", type=int, default=60, metavar="SECONDS",
                     help="kill the command after this long (default 60)")
    run.add_argument("argv", nargs="*", metavar="-- COMMAND [ARG...]",
                     help="everything after -- is the command")
    history = commands.add_parser("history", help="a GpuReplicaSet's revisions")
    history.add_argument("name")
    rollback = commands.add_parser("rollback", help="roll a GpuReplicaSet back (spec and "
                                   "disk) to an earlier revision")
    rollback.add_argument("name")
    rollback.add_argument("--to-revision", type=int, required=True, metavar="N",
                          help="the revision to restore (it must have run and not be "
                          "the current one)")
    rollback.add_argument("--wait", type=float, default=0, metavar="SECONDS")
    commands.add_parser("nodes", help="every node's GPUs, one line each, with holders")
    ports = commands.add_parser("ports", help="a node's host ports and their holders")
    ports.add_argument("node")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in words:  # the command is never parsed as options of the plugin
        at = words.index("--")
        words, command = words[:at], words[at + 1:]
    args = build_parser().parse_args(words)
    args.argv = [*args.argv, *command]
    try:
        kube = KubeApi(args.kubeconfig, in_cluster=False, context=args.context)
        namespace = args.namespace or kube.default_namespace
        match args.command:
            case "exec":
                return _exec(kube, namespace, args, out, err)
            case "history":
                return rollout_commands.history(kube, namespace, args.name, out)
            case "rollback":
                return rollout_commands.rollback(kube, namespace, args.name,
                                                 args.to_revision, args.wait, out)
            case "nodes":
                return _nodes(kube, out)
            case "ports":
                return _ports(kube, args.node, out)
    except ObjectNotFoundError as exc:
        print(f"error: not found: {exc}", file=err)
    except GpudockError as exc:
        print(f"error: {exc}", file=err)
    return 1


def _exec(kube: KubeApi, namespace: str, args: argparse.Namespace, out: TextIO,
          err: TextIO) -> int:
    command = list(args.argv)
    if not command:
        print("error: no command: kubectl gpudock exec NAME -- COMMAND [ARG...]", file=err)
        return 2
    created = kube.create(exec_request.PLURAL, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": exec_request.KIND,
        "metadata": {"generateName": f"{args.name[:40]}-exec-"},
        "spec": {"replicaSetName": args.name, "command": command,
                 "timeoutSeconds": args.timeout}})
    name = created["metadata"]["name"]
    deadline = time.monotonic() + args.timeout + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = kube.get(exec_request.PLURAL, namespace, name).get("status") or {}
        if status.get("phase") in ("Completed", "Failed"):
            break
        time.sleep(0.3)
    else:
        print(f"error: execrequest {name} did not finish (phase "
              f"{status.get('phase', 'Pending')}); is the agent of its node running?",
              file=err)
        return 1
    out.write(status.get("stdout") or "")
    err.write(status.get("stderr") or "")
    for stream in ("stdout", "stderr"):
        if status.get(f"{stream}Truncated"):
            print(f"(kubectl gpudock: {stream} was cut at 64 KiB)", file=err)
    if status["phase"] == "Failed":
        message = (status.get("conditions") or [{}])[0].get("message", "")
        print(f"error: {status.get('reason')}: {message}", file=err)
        return DEADLINE_EXIT if status.get("reason") == "DeadlineExceeded" else 1
    return int(status.get("exitCode") or 0)


def _nodes(kube: KubeApi, out: TextIO) -> int:
    rows: list[tuple[str, ...]] = [("NODE", "INDEX", "UUID", "MODEL", "HOLDER")]
    for node in sorted(kube.list_cluster(GPU_NODES), key=lambda n: n["metadata"]["name"]):
        for gpu in (node.get("status") or {}).get("gpus") or ():
            holder = gpu.get("holder")
            rows.append((node["metadata"]["name"], str(gpu.get("index")),
                         str(gpu.get("uuid")), str(gpu.get("model") or "-"),
                         f"{holder['namespace']}/{holder['name']} (revision "
                         f"{holder.get('revision')})" if holder else "<free>"))
    table(rows, out)
    return 0


def _ports(kube: KubeApi, node_name: str, out: TextIO) -> int:
    ports = (kube.get_cluster(GPU_NODES, node_name).get("status") or {}).get("ports") or {}
    print(f"range {ports.get('range')}: {ports.get('used')} used, {ports.get('free')} free",
          file=out)
    rows: list[tuple[str, ...]] = [("HOST PORT", "PROTOCOL", "HOLDER")]
    for binding in ports.get("bindings") or ():
        holder = binding.get("holder") or {}
        rows.append((str(binding.get("hostPort")), str(binding.get("protocol")),
                     f"{holder.get('namespace')}/{holder.get('name')}"))
    table(rows, out)
    return 0


def entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())
