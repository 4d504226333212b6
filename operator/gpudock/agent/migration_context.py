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
from gpudock.adapters.kube_api import (
    ConflictError,
    KubeApi,
    KubeUnavailableError,
    ObjectNotFoundError,
)
from gpudock.agent.replica_set_reconciler import ReplicaSetReconciler
from gpudock.agent.volume_reconciler import VolumeReconciler
from gpudock.api.gpu_migration import Phase
from gpudock.api.gpu_replica_set import PLURAL as GRS
from gpudock.api.gpu_replica_set import DesiredState, GpuReplicaSetSpec
from gpudock.api.reasons import Reason
from gpudock.core.gpus import GpuInventory
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.revision import RevisionStore
from gpudock.errors import SpecError, UserError
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


def drop_finalizer(kube: KubeApi, plural: str, namespace: str, name: str,
                   finalizer: str) -> None:
    """Remove ``finalizer`` (gone already, or the object gone: done); a concurrent
    change of the list is tried again."""
    for _ in range(CAS_TRIES):
        try:
            kube.remove_finalizer(plural, namespace, name, finalizer)
            return
        except ObjectNotFoundError:
            return
        except ConflictError:
            continue
    raise KubeUnavailableError(f"{plural} {namespace}/{name}: its finalizers kept changing")


def migrating_status(current: dict[str, Any], message: str, now: str) -> dict[str, Any]:
    """Phase Migrating, Ready=False reason Migrating with ``message`` (the other
    conditions kept): the instance's status while neither node serves it."""
    conditions = [c for c in current.get("conditions") or () if c.get("type") != "Ready"]
    conditions.append({"type": "Ready", "status": "False", "reason": Reason.MIGRATING,
                       "message": message, "lastTransitionTime": now})
    return {"phase": str(Reason.MIGRATING), "reason": Reason.MIGRATING, "message": message,
            "conditions": conditions}


def moving_message(migration: dict[str, Any]) -> str:
    """What the instance's Ready says while a migration moves it."""
    return (f"migrating from {migration.get('sourceNode')} to "
            f"{migration.get('targetNode')}: {migration.get('phase')}")


def stopped_for_the_move(agent: MigrationContext, key: ResourceKey,
                         uid: str) -> ObservedContainer | None:
    """The source's newest container of this incarnation when its spec wants it
    running and it is stopped (created or exited): the one the move stopped, to start
    again. None otherwise (a Stopped or paused instance stays as it is)."""
    try:
        spec = GpuReplicaSetSpec.parse(agent.kube.get(GRS, key.namespace, key.name)
                                       .get("spec") or {})
    except (ObjectNotFoundError, SpecError):
        return None
    mine = [c for c in agent.docker.list_containers()
            if c.owner == key and c.uid == uid and uid]
    current = max(mine, key=lambda c: c.revision) if mine else None
    if current is None or spec.state != DesiredState.RUNNING or \
            current.status not in ("created", "exited"):
        return None
    return current
