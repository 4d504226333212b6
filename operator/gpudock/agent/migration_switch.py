"""The end of a migration, on the source: the binding moves to the target (a
compare-and-set of status.nodeName), the target's finalizer is added, the target's
agent resumes the instance from the disk it received, and only once it serves there
does the source remove its container, records, saved disks and, last, its
finalizer. Every step is done again after a crash of the source agent: each one
looks first whether it was done (docs/migration.md, "Safety").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpudock.adapters.kube_api import (
    ConflictError,
    KubeUnavailableError,
    ObjectNotFoundError,
)
from gpudock.agent import migration_volumes
from gpudock.agent.migration_context import (
    CAS_TRIES,
    MIGRATION_FIELDS,
    MigrationContext,
    Show,
    SwitchRefusedError,
    add_finalizer,
    migrating_status,
    moving_message,
    seconds,
)
from gpudock.agent.migration_fallback import (
    FailingWatch,
    FallBack,
    TargetFailedError,
    failing,
    fallback_after,
)
from gpudock.api import gpu_replica_set, ownership
from gpudock.api.gpu_migration import FALLBACK_FIELD, Phase
from gpudock.api.gpu_replica_set import DesiredState, GpuReplicaSetSpec
from gpudock.api.reasons import Reason
from gpudock.core.observed import ResourceKey
from gpudock.core.revision import layers_named
from gpudock.crash_points import CrashPoints
from gpudock.errors import SpecError

logger = logging.getLogger(__name__)
GRS = gpu_replica_set.PLURAL
SERVE_WAIT_SECONDS = 0.25  # how often the target's status is read after the switch
VOLUMES_WAIT = 60.0  # for a deleted instance's container here to let its volumes go

class Switch:
    def __init__(self, agent: MigrationContext, crash: CrashPoints,
                 wake: Callable[[str], None]) -> None:
        self._agent, self._crash = agent, crash
        self.fallback = FallBack(agent, crash, wake)

    def show_instance(self, key: ResourceKey, status: dict[str, Any],
                      down: bool = True) -> None:
        """The GpuReplicaSet's status.migration; while it is down for the move
        (``down``) also phase Migrating and Ready=False reason Migrating."""
        migration = {k: status.get(k) for k in MIGRATION_FIELDS if k in status}
        patch: dict[str, Any] = {"migration": migration}
        try:
            if down:
                body = self._agent.kube.get(GRS, key.namespace, key.name)
                patch.update(migrating_status(body.get("status") or {},
                                              moving_message(status), self._agent.now()))
            self._agent.kube.patch_status(GRS, key.namespace, key.name, patch)
        except (KubeUnavailableError, ObjectNotFoundError) as exc:
            logger.warning("%s: status.migration not written: %s", key, exc)

    def finish(self, body: dict[str, Any], status: dict[str, Any], show: Show) -> None:
        """Switching to Succeeded; never undone once the binding moved (the target
        may run it already). SwitchRefusedError, before it moved, when it may not."""
        namespace = body["metadata"]["namespace"]
        key = ResourceKey(namespace, str(body["spec"]["replicaSetName"]))
        target = str(status["targetNode"])
        self._agent.replica_sets.migrating.add(key)
        served_at: float | None = None
        moving: list[migration_volumes.MovingVolume] = []
        if status.get(FALLBACK_FIELD):  # decided before this agent restarted
            self._fall_back(body, key, status, None, show)
            return
        try:
            grs = self._bind(key, target, status)
            if grs is not None:
                self._crash.reach("Migrate.switched")
                add_finalizer(self._agent.kube, GRS, key.namespace, key.name,
                              ownership.node_finalizer(target))
                moving = migration_volumes.listed(status)
                migration_volumes.bind(self._agent, namespace, moving, target)
                self._crash.reach("Migrate.handedOver")
                status["message"] = f"waiting for node {target} to run it"
                show(status)
                served_at = self._wait_served(key, target, status, show)
        except ObjectNotFoundError:
            grs = None
        except TargetFailedError as failed:  # docs/migration.md, "Falling back"
            self._fall_back(body, key, status, failed, show)
            return
        if grs is None or served_at is None:
            self._deleted(key, moving, status, show)
            return
        stopped = status.get("stoppedAt")
        status["downtimeSeconds"] = round(max(0.0, served_at - seconds(str(stopped))), 3) \
            if stopped else 0.0
        self._clean_source(key, str(grs["metadata"]["uid"]), moving)
        self._agent.replica_sets.migrating.discard(key)
        status.update({"phase": Phase.SUCCEEDED, "reason": Reason.MIGRATED,
                       "message": f"moved from {status.get('sourceNode')} to {target}",
                       "completionTime": self._agent.now()})
        show(status)
        self.show_instance(key, status, down=False)

    def _fall_back(self, body: dict[str, Any], key: ResourceKey, status: dict[str, Any],
                   failed: TargetFailedError | None, show: Show) -> None:
        if self.fallback.take_back(body, status, failed, show):
            self.show_instance(key, status, down=False)
        else:  # deleted meanwhile: every copy of its volumes is kept (take_back)
            self._deleted(key, [], status, show)

    def _deleted(self, key: ResourceKey, moving: list[migration_volumes.MovingVolume],
                 status: dict[str, Any], show: Show) -> None:
        """Deleted meanwhile: nothing is left to move, and each node's delete handler
        removes what it holds of it (this node's stopped copy too); the SizedVolumes
        bound to the target already keep their data there."""
        self._let_volumes_go(key.namespace, moving)
        self._agent.replica_sets.migrating.discard(key)
        show({**status, "phase": Phase.FAILED, "reason": Reason.REPLICA_SET_NOT_FOUND,
              "message": "the GpuReplicaSet was deleted during the migration",
              "completionTime": self._agent.now()})

    def _bind(self, key: ResourceKey, target: str,
              status: dict[str, Any]) -> dict[str, Any] | None:
        """status.nodeName := target, at the resourceVersion read (compare-and-set)."""
        for _ in range(CAS_TRIES):
            grs = self._agent.kube.get(GRS, key.namespace, key.name)
            if str(grs["metadata"].get("uid")) != status.get("replicaSetUID"):
                return None
            current = grs.get("status") or {}
            if current.get("nodeName") == target:
                return grs
            pinned = (grs.get("spec") or {}).get("nodeName")
            if pinned not in (None, "", target):
                raise SwitchRefusedError(f"spec.nodeName was changed to {pinned} during the "
                                         "move; the binding stays")
            if current.get("nodeName") not in (None, "", status.get("sourceNode")):
                raise SwitchRefusedError(f"it was bound to node {current.get('nodeName')} "
                                         "meanwhile; the binding stays")
            migrating = migrating_status(current, moving_message(
                {**status, "phase": Phase.SWITCHING}), self._agent.now())
            try:
                self._agent.kube.patch_status_at(GRS, key.namespace, key.name, {
                    **migrating, "nodeName": target,
                    "migration": {k: status.get(k) for k in MIGRATION_FIELDS if k in status}
                    | {"phase": Phase.SWITCHING}},
                    str(grs["metadata"]["resourceVersion"]))
                return grs
            except ConflictError:
                continue
        raise KubeUnavailableError(f"{key}: the binding kept changing; tried again later")

    def _wait_served(self, key: ResourceKey, target: str, migration: dict[str, Any],
                     show: Show) -> float | None:
        """When the target's agent first said the instance is in its wanted state
        there (its status, written by that agent only: this one writes none now);
        returns once it has kept saying so, Ready, for --migration-hold-seconds
        (docs/migration.md, "Safety"): until then this node keeps its stopped
        container, GPUs, ports and disk. None when the resource is being deleted or
        gone. The GpuMigration's message says what the target says, when it changes."""
        waiting = str(migration.get("message") or "")
        watch = ServeWatch(self._agent.settings.migration_hold_seconds)
        failed = FailingWatch()  # raises TargetFailedError: the source takes it back
        while True:
            try:
                grs = self._agent.kube.get(GRS, key.namespace, key.name)
                if grs["metadata"].get("deletionTimestamp") or \
                        grs["metadata"].get("uid") != migration.get("replicaSetUID"):
                    return None
                status = grs.get("status") or {}
                try:
                    wanted = str(GpuReplicaSetSpec.parse(grs.get("spec") or {}).state)
                except SpecError:
                    wanted = DesiredState.RUNNING
                ready = _ready(status)
                running = wanted == DesiredState.RUNNING
                # A Stopped instance has no container to watch run there.
                watch.hold = self._agent.settings.migration_hold_seconds if running else 0.0
                serving = status.get("nodeName") == target and \
                    status.get("phase") == wanted and (ready is not None or not running)
                failed.see(failing(status) if status.get("nodeName") == target else None,
                           time.monotonic(),
                           fallback_after(self._agent.settings.migration_hold_seconds))
                since = str((ready or {}).get("lastTransitionTime") or "")
                if watch.see(serving, since, time.time(), time.monotonic()):
                    return watch.served_at()
                why = _not_ready(status) if status.get("nodeName") == target else ""
                message = f"waiting for node {target} to run it" + (f": {why}" if why else "")
                if serving and watch.hold:
                    message = (f"node {target} runs it; node {self._agent.settings.node_name} "
                               f"keeps its stopped copy until it has run {watch.hold:g} s")
                if message != waiting:
                    waiting = message
                    show({**migration, "message": message})
            except KubeUnavailableError as exc:
                logger.info("%s: waiting for node %s: %s", key, target, exc)
            time.sleep(SERVE_WAIT_SECONDS)

    def _let_volumes_go(self, namespace: str,
                        moving: list[migration_volumes.MovingVolume]) -> None:
        """This node's copies of SizedVolumes the target holds now go, once the
        instance's container here (removed by its delete handler) no longer mounts
        them; at most VOLUMES_WAIT seconds are waited for that."""
        deadline = time.monotonic() + VOLUMES_WAIT
        while moving:
            try:
                migration_volumes.hand_over(self._agent, namespace, moving)
                return
            except KubeUnavailableError as exc:
                if time.monotonic() > deadline:
                    logger.warning("%s: this node's copy of its volumes is kept: %s",
                                   namespace, exc)
                    return
            time.sleep(1.0)

    def _clean_source(self, key: ResourceKey, uid: str,
                      moving: list[migration_volumes.MovingVolume]) -> None:
        """The target serves it: this node's container, records, saved disks and
        SizedVolumes of it go, then its finalizer (the target's holds the resource)."""
        agent = self._agent
        for container in agent.docker.list_containers():
            if container.owner == key and container.uid == uid:
                agent.docker.remove(container.id, container.name)
        records = [r for r in agent.store.list(key.namespace, key.name) if r.uid == uid]
        for record in records:
            agent.store.delete(key.namespace, key.name, record.revision)
        agent.replica_sets.disks.remove_saved(layers_named(records))
        agent.docker.remove_volumes(key.namespace, key.name, uid)  # its image VOLUMEs
        migration_volumes.hand_over(agent, key.namespace, moving)
        agent.kube.remove_finalizer(GRS, key.namespace, key.name,
                                    ownership.node_finalizer(agent.settings.node_name))


@dataclass
class ServeWatch:
    """Whether the target has served long enough for the source to let go of its
    copy: the instance in its wanted state there, Ready, continuously for ``hold``
    seconds of this agent's clock. Not serving, or a new Ready transition (its
    container restarted there), starts the count again."""

    hold: float
    first_served: float | None = None  # wall-clock, when this agent first saw it
    first_since: str = ""              # the Ready lastTransitionTime then
    since: float | None = None         # monotonic: when this run of serving was seen
    transition: str | None = None      # the Ready condition's lastTransitionTime then

    def see(self, serving: bool, transition: str, wall: float, monotonic: float) -> bool:
        if not serving:
            self.since = self.transition = None
            return False
        if self.first_served is None:
            self.first_served, self.first_since = wall, transition
        if self.since is None or transition != self.transition:
            self.since, self.transition = monotonic, transition
        return monotonic - self.since >= self.hold

    def served_at(self) -> float:
        """The end of the downtime: when this agent first saw it served, or, when that
        was more than a second after the target's Ready transition (this agent
        restarted meanwhile), that transition (whole seconds: at most 1 s late)."""
        assert self.first_served is not None
        try:
            ready = seconds(self.first_since) + 1.0
        except ValueError:
            return self.first_served
        return min(self.first_served, ready)


def _ready(status: dict[str, Any]) -> dict[str, Any] | None:
    """The Ready condition when it is True, else None."""
    return next((c for c in status.get("conditions") or ()
                 if c.get("type") == "Ready" and c.get("status") == "True"), None)


def _not_ready(status: dict[str, Any]) -> str:
    """What the target's agent says keeps the instance from its wanted state (its
    Ready condition's reason and message), "" while it has said nothing yet."""
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready" and condition.get("status") != "True" and \
                condition.get("reason") not in (None, Reason.MIGRATING):
            return f"{condition.get('reason')}: {condition.get('message') or ''}".strip()
    return ""
