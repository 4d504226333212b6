"""What both sides of a migration share: the agent's parts they use, their errors,
and the names and times they agree on (docs/migration.md)."""

from __future__ import annotations

import calendar
import datetime
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import ConflictError, KubeApi, KubeUnavailableError
from gpudock.agent.replica_set_reconciler import ReplicaSetReconciler
from gpudock.agent.volume_reconciler import VolumeReconciler
from gpudock.api.gpu_migration import Phase
from gpudock.api.reasons import Reason
from gpudock.core.gpus import GpuInventory
from gpudock.core.revision import RevisionStore
from gpudock.errors import UserError
from gpudock.settings import Settings

Show = Callable[[dict[str, Any]], None]
MIGRATED_PREFIX = "migrated-"  # the received layers' directory names on the target
PRECOPY_SUFFIX = ".gpudock-precopy"  # a running layer's first pass, on the target
TRANSFER_FIELD = "transfer"  # GpuNode status.transfer: {address, port}
CAS_TRIES = 20  # compare-and-set writes tried again on a conflict
MIGRATION_FIELDS = ("phase", "sourceNode", "targetNode", "bytesDone", "bytesTotal",
                    "downtimeSeconds", "startTime", "completionTime")


@dataclass(frozen=True)
class MigrationContext:
    """What a migration's two sides use of the node agent (built in wiring.py)."""

    settings: Settings
    kube: KubeApi
    docker: DockerRuntime
    store: RevisionStore
    inventory: GpuInventory
    replica_sets: ReplicaSetReconciler
    volumes: VolumeReconciler
    clock: Callable[[], str]

    def now(self) -> str:
        return self.clock()


class MigrationError(UserError):
    """The migration ends before Switching: the source runs as before."""

    def __init__(self, reason: Reason, message: str, phase: Phase = Phase.FAILED) -> None:
        super().__init__(reason, message)
        self.phase = phase


class SwitchRefusedError(MigrationError):
    """The binding may not move: the resource changed during the move (spec.nodeName
    names another node, or another migration bound it). The source runs on."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.MIGRATION_FAILED, message)


def volume_tree(volume: str) -> str:
    """The name an image VOLUME's tree travels under (one per Docker volume)."""
    return f"{MIGRATED_PREFIX}vol-{hashlib.sha256(volume.encode()).hexdigest()[:16]}"


def precise_now() -> str:
    """Now in RFC 3339 UTC with milliseconds (a downtime is counted from it)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def seconds(stamp: str) -> float:
    """An RFC 3339 UTC time (as the agent writes them) in seconds since the epoch."""
    whole = float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    fraction = stamp[19:].rstrip("Z").split("+")[0]
    return whole + (float(fraction) if fraction.startswith(".") else 0.0)


def add_finalizer(kube: KubeApi, plural: str, namespace: str, name: str, finalizer: str,
                  uid: str | None = None) -> None:
    """Put ``finalizer`` on the object (compare-and-set, tried again on a conflict):
    done when it is there already, or when the object is another incarnation than
    ``uid``. ObjectNotFoundError when it is gone."""
    for _ in range(CAS_TRIES):
        body = kube.get(plural, namespace, name)
        meta = body["metadata"]
        held = list(meta.get("finalizers") or ())
        if finalizer in held or (uid is not None and str(meta.get("uid")) != uid):
            return
        try:
            kube.set_finalizers(plural, namespace, name, [*held, finalizer],
                                str(meta["resourceVersion"]))
            return
        except ConflictError:
            continue
    raise KubeUnavailableError(f"{plural} {namespace}/{name}: its finalizers kept changing")
