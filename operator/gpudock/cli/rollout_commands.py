"""``gpudock history`` and ``gpudock rollback``: work from any kubeconfig.

History is read from the resource's ``status.history``, which the agent mirrors from
its revision store; a rollback sets ``spec.rollbackTo`` and the agent does the rest
(a new revision with the old spec and disk, then the spec written back). NAME is a
GpuReplicaSet, or ``svol/NAME`` for a SizedVolume's sizes (a volume is resized by
its spec.size, not rolled back).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.api import sized_volume
from gpudock.api.gpu_replica_set import PLURAL
from gpudock.api.quantity import format_size
from gpudock.cli import retained_commands
from gpudock.errors import GpudockError


def add_arguments(commands: Any) -> None:
    history = commands.add_parser("history", help="list a GpuReplicaSet's revisions")
    rollback = commands.add_parser("rollback", help="roll a GpuReplicaSet back to an "
                                   "earlier revision (its spec and its disk)")
    rollback.add_argument("--to-revision", type=int, required=True, metavar="N",
                          help="the revision to restore (see gpudock history NAME); it "
                          "must have run and must not be the current one")
    rollback.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                          help="wait this long for the rollback to finish (default: no)")
    history.add_argument("--retained", action="store_true",
                         help="list the histories deleted resources of this name left "
                         "on the node (run on the node; see gpudock purge)")
    retained_commands.add_node_arguments(history)
    for parser in (history, rollback):
        parser.add_argument("name", help="the GpuReplicaSet (history: or svol/NAME)")
        parser.add_argument("-n", "--namespace", help="default: the kubeconfig's")
        parser.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.command == "history" and args.retained:
        return retained_commands.run_history(args, out)
    kube = KubeApi(args.kubeconfig, in_cluster=False)
    return dispatch(kube, args.namespace or kube.default_namespace, args.command,
                    args.name, getattr(args, "to_revision", 0), getattr(args, "wait", 0),
                    out)


def dispatch(kube: KubeApi, namespace: str, command: str, target: str, to_revision: int,
             wait: float, out: TextIO) -> int:
    """``history`` or ``rollback`` of TARGET (NAME, grs/NAME or svol/NAME): the same
    for ``gpudock`` and ``kubectl gpudock``."""
    kind, _, name = target.rpartition("/")
    if kind in VOLUME_KINDS:
        if command != "history":
            print("error: a SizedVolume is not rolled back: set its spec.size",
                  file=sys.stderr)
            return 2
        try:
            return volume_history(kube, namespace, name, out)
        except ObjectNotFoundError:
            print(f"error: sizedvolume {namespace}/{name} not found", file=sys.stderr)
            return 1
    if kind not in ("", "grs", "gpureplicaset", "gpureplicasets"):
        print(f"error: {target}: give a GpuReplicaSet or svol/NAME", file=sys.stderr)
        return 2
    try:
        if command == "history":
            return history(kube, namespace, name, out)
        return rollback(kube, namespace, name, to_revision, wait, out)
    except ObjectNotFoundError:
        print(f"error: gpureplicaset {namespace}/{name} not found", file=sys.stderr)
    except GpudockError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def history(kube: KubeApi, namespace: str, name: str, out: TextIO) -> int:
    status = kube.get(PLURAL, namespace, name).get("status") or {}
    current = status.get("revision")
    rows: list[tuple[str, ...]] = [("REVISION", "CREATED", "GPUS", "IMAGE", "CHANGE-CAUSE")]
    for item in status.get("history") or ():
        mark = " (current)" if item.get("revision") == current else ""
        if item.get("failed"):  # its container never ran
            mark = " (failed)"
        cause = item.get("changeCause") or "<none>"
        if item.get("failed"):
            cause = f"{cause}; never ran: {item['failed']}"
        rows.append((f"{item.get('revision')}{mark}", str(item.get("createdAt", "")),
                     str(item.get("gpuCount", "")), str(item.get("image", "")), cause))
    retained_commands.table(rows, out)
    return 0


def retained_history(kube: KubeApi, namespace: str, name: str, out: TextIO) -> int:
    """The retained histories the live GpuReplicaSet NAME reports (its agent mirrors
    them from the node's store into status.retainedHistories)."""
    try:
        status = kube.get(PLURAL, namespace, name).get("status") or {}
    except ObjectNotFoundError:
        print(f"error: no gpureplicaset {namespace}/{name} to ask: run gpudock history "
              "--retained on its node", file=sys.stderr)
        return 1
    rows: list[tuple[str, ...]] = [("UID", "REVISIONS", "LAST CHANGE")]
    for item in status.get("retainedHistories") or ():
        rows.append((str(item.get("uid")), ",".join(str(r) for r in item.get("revisions")
                                                    or ()), str(item.get("lastChange"))))
    retained_commands.table(rows, out)
    if len(rows) == 1:
        print(f"no retained history for {namespace}/{name}", file=out)
    else:
        print("adopt one: create the resource with the annotation "
              "gpudock.dev/adopt-history: <UID>", file=out)
    return 0


VOLUME_KINDS = ("svol", "sizedvolume", "sizedvolumes")


def volume_history(kube: KubeApi, namespace: str, name: str, out: TextIO) -> int:
    status = kube.get(sized_volume.PLURAL, namespace, name).get("status") or {}
    rows: list[tuple[str, ...]] = [("REVISION", "CREATED", "SIZE", "VOLUME",
                                    "CHANGE-CAUSE")]
    for item in status.get("history") or ():
        mark = " (current)" if item.get("revision") == status.get("revision") else ""
        rows.append((f"{item.get('revision')}{mark}", str(item.get("createdAt", "")),
                     format_size(int(item.get("sizeBytes") or 0)),
                     str(item.get("volumeName", "")), item.get("changeCause") or "<none>"))
    retained_commands.table(rows, out)
    return 0


def rollback_refusal(status: dict[str, Any], revision: int) -> str | None:
    """Why a rollback to ``revision`` cannot be done, from the resource's
    status.history (the agent refuses the same, later, if the CLI is bypassed)."""
    history = {item.get("revision"): item for item in status.get("history") or ()
               if isinstance(item, dict)}
    usable = ", ".join(str(r) for r, item in sorted(history.items())
                       if not item.get("failed") and r != status.get("revision")) or "none"
    if revision not in history:
        return f"revision {revision} does not exist (revisions to roll back to: {usable})"
    if history[revision].get("failed"):
        return (f"revision {revision} never ran ({history[revision]['failed']}); "
                f"revisions to roll back to: {usable}")
    if revision == status.get("revision"):
        return f"revision {revision} is the current revision"
    return None


def rollback(kube: KubeApi, namespace: str, name: str, revision: int, wait: float,
              out: TextIO) -> int:
    if revision < 1:
        print("error: --to-revision must be >= 1", file=sys.stderr)
        return 2
    status = kube.get(PLURAL, namespace, name).get("status") or {}
    before = status.get("revision")
    refusal = rollback_refusal(status, revision)
    if refusal is not None:
        print(f"error: {refusal}; nothing was changed", file=sys.stderr)
        return 1
    kube.patch_spec(PLURAL, namespace, name, {"rollbackTo": {"revision": revision}})
    print(f"gpureplicaset {namespace}/{name}: rollback to revision {revision} requested",
          file=out)
    deadline = time.monotonic() + wait
    while wait > 0:
        body = kube.get(PLURAL, namespace, name)
        status = body.get("status") or {}
        seen = status.get("observedGeneration") == body["metadata"].get("generation")
        problem = next((c for c in status.get("conditions") or ()
                        if c.get("type") == "Degraded" and c.get("status") == "True"), None)
        if seen and problem is not None and body["spec"].get("rollbackTo"):
            print(f"error: {problem.get('reason')}: {problem.get('message')}", file=sys.stderr)
            return 1
        if seen and not body["spec"].get("rollbackTo") and status.get("revision") != before:
            print(f"rolled back: now revision {status.get('revision')} "
                  f"(phase {status.get('phase')})", file=out)
            return 0
        if time.monotonic() > deadline:
            print(f"error: not done after {wait:.0f}s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    return 0
