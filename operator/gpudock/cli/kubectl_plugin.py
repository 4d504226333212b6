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

from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.agent.gpu_health import READMIT
from gpudock.agent.node_health import PLURAL as GPU_NODES
from gpudock.api import GROUP, VERSION, exec_request, image_commit
from gpudock.api.parsing import is_object_name
from gpudock.api.reasons import Reason
from gpudock.cli import exec_tty, log_command, migrate_commands, restart_command, rollout_commands
from gpudock.cli.retained_commands import table
from gpudock.errors import GpudockError

DEADLINE_EXIT = 124  # as timeout(1) says a command ran out of time


def _kube_flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    """kubectl's flags; a subcommand takes them too (``exec NAME -n NS -- cmd``), its
    default suppressed so that one given before the subcommand is kept."""
    parser.add_argument("-n", "--namespace", default=default, help="default: the context's")
    parser.add_argument("--context", default=default,
                        help="kubeconfig context (default: the current)")
    parser.add_argument("--kubeconfig", default=default,
                        help="default: $KUBECONFIG or ~/.kube/config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl gpudock", description=__doc__)
    _kube_flags(parser, None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("exec", help="run a command in a GpuReplicaSet's container "
                              "(an ExecRequest); exits with the command's exit code")
    run.add_argument("name", help="the GpuReplicaSet")
    run.add_argument("--timeout", type=int, default=60, metavar="SECONDS",
                     help="kill the command after this long (default 60)")
    run.add_argument("argv", nargs="*", metavar="-- COMMAND [ARG...]",
                     help="everything after -- is the command")
    run.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the "
                     "command (interactive: streamed by the node's agent, docs/day2.md)")
    run.add_argument("-t", "--tty", action="store_true", help="a TTY for the command "
                     "(with -i: your terminal in raw mode, resized as it is)")
    commit = commands.add_parser("commit", help="save a GpuReplicaSet's running "
                                 "container as an image (an ImageCommit); prints its ID")
    commit.add_argument("name", help="the GpuReplicaSet")
    commit.add_argument("image", help="repository:tag to make, under the namespace's repository "
                        "(by default gpudock.invalid/<namespace>/; never overwritten)")
    commit.add_argument("--no-pause", action="store_true",
                        help="do not pause the container during the commit")
    commit.add_argument("--timeout", type=float, default=1800, metavar="SECONDS")
    history = commands.add_parser("history", help="a GpuReplicaSet's revisions, or a "
                                  "SizedVolume's sizes (svol/NAME)")
    history.add_argument("name", help="NAME, grs/NAME or svol/NAME")
    history.add_argument("--retained", action="store_true",
                         help="the histories deleted resources of this name left on the "
                         "node, with the UID to adopt one (as the live resource reports)")
    rollback = commands.add_parser("rollback", help="roll a GpuReplicaSet back (spec and "
                                   "disk) to an earlier revision")
    rollback.add_argument("name")
    rollback.add_argument("--to-revision", type=int, required=True, metavar="N",
                          help="the revision to restore (it must have run and not be "
                          "the current one)")
    rollback.add_argument("--wait", type=float, default=0, metavar="SECONDS")
    logs = commands.add_parser("logs", help="a GpuReplicaSet's container output, streamed "
                               "by its node's agent (TLS; your token and permission are "
                               "checked by the API server)")
    logs.add_argument("name", help="the GpuReplicaSet")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    logs.add_argument("--tail", type=int, metavar="N", help="the last N lines only")
    logs.add_argument("-p", "--previous", action="store_true",
                      help="the output of the runs before the last (re)start (a crash "
                      "loop's earlier runs)")
    migrate = commands.add_parser("migrate", help="move a GpuReplicaSet with its disk "
                                  "to another node (a GpuMigration)")
    migrate.add_argument("name")
    migrate.add_argument("--to", metavar="NODE", help="the target (default: the node "
                         "the scheduler's filters and policy pick)")
    migrate.add_argument("--wait", type=float, default=0, metavar="SECONDS")
    for verb, what in (("cordon", "bind nothing new to a node (what runs there stays)"),
                       ("uncordon", "let the scheduler bind to a node again")):
        commands.add_parser(verb, help=what).add_argument("node")
    drain = commands.add_parser("drain", help="cordon a node and migrate every instance "
                                "bound to it away")
    drain.add_argument("node")
    commands.add_parser("nodes", help="every node's GPUs, one line each, with holders")
    ports = commands.add_parser("ports", help="a node's host ports and their holders")
    ports.add_argument("node")
    readmit = commands.add_parser("readmit", help="take an Unhealthy GPU back into service "
                                  "(docs/gpu-health.md)")
    readmit.add_argument("node")
    readmit.add_argument("gpu", help="its index or UUID")
    restart = commands.add_parser("restart", help="a new revision of a GpuReplicaSet's "
                                  "same spec, its disk kept (gpudock.dev/redeploy)")
    restart.add_argument("name")
    restart.add_argument("--wait", type=float, default=0, metavar="SECONDS")
    for sub in commands.choices.values():
        _kube_flags(sub, argparse.SUPPRESS)
    return parser


def parse(words: Sequence[str]) -> argparse.Namespace:
    """The plugin's arguments; kubectl's flags before or after the subcommand, and
    everything after ``--`` the command (never parsed as options of the plugin)."""
    words, command = list(words), []
    if "--" in words:
        at = words.index("--")
        words, command = words[:at], words[at + 1:]
    args = build_parser().parse_args(words)
    args.argv = [*getattr(args, "argv", []), *command]
    return args


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command in ("exec", "commit", "logs") and not is_object_name(args.name):
        print(f"error: {args.name!r} is not a GpuReplicaSet name", file=err)
        return 2
    try:
        kube = KubeApi(args.kubeconfig, in_cluster=False, context=args.context)
        namespace = args.namespace or kube.default_namespace
        match args.command:
            case "exec":
                return _exec(kube, namespace, args, out, err)
            case "commit":
                return _commit(kube, namespace, args, out, err)
            case "history" if args.retained:
                return rollout_commands.retained_history(kube, namespace, args.name, out)
            case "history" | "rollback":
                return rollout_commands.dispatch(
                    kube, namespace, args.command, args.name,
                    getattr(args, "to_revision", 0), getattr(args, "wait", 0), out)
            case "logs":
                return log_command.logs(kube, namespace, args.name, args.follow, args.tail,
                                        args.previous, out, err)
            case "migrate":
                return migrate_commands.migrate(kube, namespace, args.name, args.to,
                                                args.wait, out)
            case "cordon" | "uncordon":
                return migrate_commands.cordon(kube, args.node, args.command == "cordon", out)
            case "drain":
                return migrate_commands.drain(kube, args.node, out)
            case "nodes":
                return _nodes(kube, out)
            case "ports":
                return _ports(kube, args.node, out)
            case "readmit":
                return _readmit(kube, args.node, args.gpu, out)
            case "restart":
                return restart_command.restart(kube, namespace, args.name, args.wait,
                                               out, err)
    except ObjectNotFoundError as exc:
        print(f"error: not found: {exc}", file=err)
    except GpudockError as exc:
        print(f"error: {exc}", file=err)
    return 1


def _wait(kube: KubeApi, plural: str, namespace: str, name: str, finished: tuple[str, ...],
          timeout: float) -> dict[str, Any] | None:
    """The request's status once finished; None when it is not done in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kube.get(plural, namespace, name).get("status") or {}
        if status.get("phase") in finished:
            return dict(status)
        time.sleep(0.3)
    return None


def _problem(status: dict[str, Any]) -> str:
    message = (status.get("conditions") or [{}])[0].get("message", "")
    return f"{status.get('reason')}: {message}"


def _commit(kube: KubeApi, namespace: str, args: argparse.Namespace, out: TextIO,
            err: TextIO) -> int:
    created = kube.create(image_commit.PLURAL, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": image_commit.KIND,
        "metadata": {"generateName": f"{args.name[:40]}-commit-"},
        "spec": {"replicaSetName": args.name, "image": args.image,
                 "pause": not args.no_pause}})
    name = created["metadata"]["name"]
    status = _wait(kube, image_commit.PLURAL, namespace, name, ("Succeeded", "Failed"),
                   args.timeout)
    if status is None:
        print(f"error: imagecommit {name} did not finish in {args.timeout:.0f}s", file=err)
        return 1
    if status["phase"] == "Failed":
        print(f"error: {_problem(status)}", file=err)
        return 1
    print(status.get("imageID"), file=out)
    return 0


def _exec(kube: KubeApi, namespace: str, args: argparse.Namespace, out: TextIO,
          err: TextIO) -> int:
    command = list(args.argv)
    if not command:
        print("error: no command: kubectl gpudock exec NAME -- COMMAND [ARG...]", file=err)
        return 2
    if args.stdin or args.tty:  # interactive: a stream from the agent, no ExecRequest
        return exec_tty.exec_interactive(kube, namespace, args.name, command,
                                         stdin=args.stdin, tty=args.tty, out=out, err=err)
    created = kube.create(exec_request.PLURAL, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": exec_request.KIND,
        "metadata": {"generateName": f"{args.name[:40]}-exec-"},
        "spec": {"replicaSetName": args.name, "command": command,
                 "timeoutSeconds": args.timeout}})
    name = created["metadata"]["name"]
    status = _wait(kube, exec_request.PLURAL, namespace, name, ("Completed", "Failed"),
                   args.timeout + 60)
    if status is None:
        print(f"error: execrequest {name} did not finish; is the agent of its node "
              "running?", file=err)
        return 1
    try:  # read: it is of no more use (others are kept ttlSecondsAfterFinished)
        kube.delete(exec_request.PLURAL, namespace, name)
    except GpudockError as exc:
        print(f"(kubectl gpudock: execrequest {name} is kept: {exc})", file=err)
    out.write(status.get("stdout") or "")
    err.write(status.get("stderr") or "")
    for stream in ("stdout", "stderr"):
        if status.get(f"{stream}Truncated"):
            print(f"(kubectl gpudock: {stream} was cut at 64 KiB)", file=err)
    if status["phase"] == "Failed":
        print(f"error: {_problem(status)}", file=err)
        return DEADLINE_EXIT if status.get("reason") == Reason.DEADLINE_EXCEEDED else 1
    return int(status.get("exitCode") or 0)


def _nodes(kube: KubeApi, out: TextIO) -> int:
    rows: list[tuple[str, ...]] = [("NODE", "INDEX", "UUID", "MODEL", "HOLDER")]
    for node in sorted(kube.list_cluster(GPU_NODES), key=lambda n: n["metadata"]["name"]):
        for gpu in (node.get("status") or {}).get("gpus") or ():
            holder = gpu.get("holder")
            rows.append((node["metadata"]["name"], str(gpu.get("index")),
                         str(gpu.get("uuid")), str(gpu.get("model") or "-"),
                         _holder(holder, with_revision=True) if holder else "<free>"))
    table(rows, out)
    return 0


def _readmit(kube: KubeApi, node_name: str, gpu: str, out: TextIO) -> int:
    """The GpuNode's gpudock.dev/readmit annotation (GPUs already named in it kept);
    the node's agent lifts the marks and removes it."""
    node = kube.get_cluster(GPU_NODES, node_name)
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    named = [g for g in str(annotations.get(READMIT) or "").split(",") if g]
    kube.patch_cluster(GPU_NODES, node_name, {"metadata": {"annotations": {
        READMIT: ",".join(dict.fromkeys([*named, gpu]))}}})
    print(f"gpunode/{node_name}: GPU {gpu} readmit asked (the node's agent takes it back "
          "into service and removes the annotation)", file=out)
    return 0


def _ports(kube: KubeApi, node_name: str, out: TextIO) -> int:
    ports = (kube.get_cluster(GPU_NODES, node_name).get("status") or {}).get("ports") or {}
    print(f"range {ports.get('range')}: {ports.get('used')} used, {ports.get('free')} free",
          file=out)
    rows: list[tuple[str, ...]] = [("HOST PORT", "PROTOCOL", "HOLDER")]
    for binding in ports.get("bindings") or ():
        rows.append((str(binding.get("hostPort")), str(binding.get("protocol")),
                     _holder(binding.get("holder") or {}, with_revision=False)))
    table(rows, out)
    return 0


def _holder(holder: dict[str, Any], *, with_revision: bool) -> str:
    """``namespace/name``; ``<held>`` where the agent leaves names out
    (--hide-holder-names)."""
    if holder.get("arriving"):  # held for an instance a migration brings here
        return ("<held>" if "name" not in holder else
                f"{holder.get('namespace')}/{holder['name']}") + " (arriving)"
    if "name" not in holder:
        return "<held>"
    revision = f" (revision {holder.get('revision')})" if with_revision else ""
    return f"{holder.get('namespace')}/{holder['name']}{revision}"


def entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())
