"""Falling back: after the switch, a target that cannot run the instance gives it back
to the source, which starts its same stopped container again with the same disk
(docs/migration.md, "Falling back"; issue #23 item 4).

The source decides, from the target's status: while it holds its copy (the hold of
migration_switch.py), the target reports a problem (Degraded, a change it cannot
apply, a wait for GPUs) and is not Ready, for 20 s in a row (fallback_after). The
source then records why in the GpuMigration's ``status.fallback`` (so a restarted
source never switches again) and asks the target by an annotation on the
GpuReplicaSet. The target's agent, which holds the binding, is the one that may end
its own container: it removes it, moves the SizedVolumes' bindings back, then the
instance's (a compare-and-set of status.nodeName), and drops its finalizers and what
the transfer brought. The source sees the binding back, starts its container and
ends the migration Failed, reason TargetFailed. Each step is done again after a crash
of either agent; each one looks first whether it was done. A target whose agent is
gone never answers: the instance then waits (its status says so), as a pod of a
silent node does; the source's copy is kept.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gpudock.adapters.kube_api import ConflictError, KubeUnavailableError, ObjectNotFoundError
from gpudock.agent import migration_leftovers, migration_volumes
from gpudock.agent.migration_context import (
    CAS_TRIES,
    MigrationContext,
    Show,
    drop_finalizer,
    migrating_status,
    stopped_for_the_move,
)
from gpudock.agent.replica_set_outcome import problem_of
from gpudock.api import gpu_migration, gpu_replica_set, ownership
from gpudock.api.gpu_migration import FALLBACK_ANNOTATION, FALLBACK_FIELD, Phase
from gpudock.api.reasons import Reason
from gpudock.core.observed import ResourceKey
from gpudock.core.replica_set.status import STABLE_SECONDS, WAITING_REASONS
from gpudock.core.revision import layers_named
from gpudock.crash_points import CrashPoints
from gpudock.errors import UserError

logger = logging.getLogger(__name__)
GRS = gpu_replica_set.PLURAL
GIVE_BACK_WAIT_SECONDS = 0.25  # how often the source looks for the binding back
RECORD_RETRY_SECONDS = 1.0  # status.fallback is written before anything is asked
# The target's dependencies not answering: not the target failing to run it.
UNAVAILABLE = (Reason.DOCKER_UNAVAILABLE, Reason.REVISION_STORE_UNAVAILABLE,
               Reason.API_SERVER_UNAVAILABLE)
# Written by other agents of a silent one: whether it runs the instance is not known,
# and it could not give it back before it answers again.
SILENT = (Reason.NODE_NOT_READY, Reason.NODE_NOT_FOUND)


class TargetFailedError(UserError):
    """The target has not run the instance and says why (its reason and message),
    for long enough: it goes back to the source."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(Reason.TARGET_FAILED, f"{reason}: {message}")
        self.target_reason, self.target_message = reason, message


def failing(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """What the target says keeps it from running the instance, (reason, message):
    it wrote its own Ready (not the source's Migrating), which is not True, and its
    conditions report a problem: Degraded, a change it cannot apply, a wait for GPUs,
    a volume or an address. None otherwise, also while the target's own Docker, store
    or API server does not answer, or its agent is silent (it could not give the
    instance back then anyway: it must remove its container first)."""
    conditions = [c for c in status.get("conditions") or () if isinstance(c, Mapping)]
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True" or \
            ready.get("reason") in (None, Reason.MIGRATING, *SILENT):
        return None
    found = [(str(c.get("type")), c.get("status") in ("True", True), str(c.get("reason")),
              str(c.get("message") or "")) for c in conditions]
    progressing = next((c for c in found if c[0] == "Progressing"), None)
    if progressing is not None and progressing[2] in UNAVAILABLE:
        return None
    if progressing is not None and progressing[1] and progressing[2] in WAITING_REASONS:
        return progressing[2], progressing[3]
    return problem_of(found)


def fallback_after(hold: float) -> float:
    """How long the target must say it cannot run the instance before it goes back:
    --migration-hold-seconds, and longer than a container restarted once by Docker
    shows CrashLoop (STABLE_SECONDS), so one restart that recovers is not a failure."""
    return max(hold, 2.0 * STABLE_SECONDS)


class FailingWatch:
    """How long the target has said it cannot run the instance, without a break."""

    def __init__(self) -> None:
        self._since: float | None = None

    def see(self, problem: tuple[str, str] | None, monotonic: float, after: float) -> None:
        """Raises TargetFailedError once ``problem`` has lasted ``after`` seconds."""
        if problem is None:
            self._since = None
            return
        if self._since is None:
            self._since = monotonic
        if monotonic - self._since >= after:
            raise TargetFailedError(*problem)


class FallBack:
    """Both sides of a fallback."""

    def __init__(self, agent: MigrationContext, crash: CrashPoints,
                 wake: Callable[[str], None]) -> None:
        self._agent, self._crash, self._wake = agent, crash, wake

    @property
    def _node(self) -> str:
        return self._agent.settings.node_name

    # ------------------------------------------------------------------ the source
    def take_back(self, migration: Mapping[str, Any], status: dict[str, Any],
                  why: TargetFailedError | None, show: Show) -> bool:
        """Ask the target to give the instance back (``why``: newly decided; None:
        decided before, this agent restarted since), wait for the binding, run the
        same container here again. False when the GpuReplicaSet went meanwhile."""
        meta = migration["metadata"]
        namespace, name = meta["namespace"], str(meta["name"])
        key = ResourceKey(namespace, str(migration["spec"]["replicaSetName"]))
        target, uid = str(status["targetNode"]), str(status.get("replicaSetUID") or "")
        if why is not None:
            status[FALLBACK_FIELD] = {"reason": why.target_reason, "message": why.target_message,
                                      "time": self._agent.now()}
        fallback = status[FALLBACK_FIELD]
        status["message"] = (f"node {target} cannot run it ({fallback['reason']}: "
                             f"{fallback['message']}); it gives it back to node {self._node}")
        # Recorded first: never switched again, even by an agent restarted after this.
        self._record(namespace, name, status, (FALLBACK_FIELD, "message"))
        show(status)
        self._crash.reach("Migrate.fallingBack")
        self._agent.replica_sets.migrating.add(key)
        moving = migration_volumes.listed(status)
        if not self._given_back(key, uid, name):
            # Deleted meanwhile, perhaps while the target still gives its volumes
            # back: no copy of them is removed here (each node's delete handler of
            # the SizedVolume removes its own, once it is deleted).
            migration_volumes.release(self._agent, namespace, moving)
            return False
        for volume in moving:
            drop_finalizer(self._agent.kube, migration_volumes.SVOL, namespace, volume.name,
                           ownership.node_finalizer(target))
        drop_finalizer(self._agent.kube, GRS, key.namespace, key.name,
                       ownership.node_finalizer(target))
        try:
            self._start_here(key, uid)
        finally:
            self._agent.replica_sets.migrating.discard(key)
            migration_volumes.release(self._agent, namespace, moving)
            self._wake(uid)
        with contextlib.suppress(ObjectNotFoundError):
            self._agent.kube.patch(GRS, key.namespace, key.name, {
                "metadata": {"annotations": {FALLBACK_ANNOTATION: None}}})
        status.update({"phase": Phase.FAILED, "reason": Reason.TARGET_FAILED,
                       "message": (f"node {target} could not run it ({fallback['reason']}: "
                                   f"{fallback['message']}); it runs on node {self._node} "
                                   "again, the same container with the same disk"),
                       "completionTime": self._agent.now()})
        self._record(namespace, name, status, ("phase", "reason", "message", "completionTime"))
        show(status)  # (and its event)
        return True

    def _record(self, namespace: str, name: str, status: dict[str, Any],
                fields: tuple[str, ...]) -> None:
        """``fields`` of the GpuMigration's status written, tried until the API
        server takes them (the status the runner shows is written once, and a lost
        write is logged only): status.fallback, so a source restarted after it takes
        the instance back instead of switching again; the end, so the migration
        does not stay Switching."""
        while True:
            try:
                self._agent.kube.patch_status(gpu_migration.PLURAL, namespace, name,
                                              {k: status[k] for k in fields})
                return
            except KubeUnavailableError as exc:
                logger.info("%s/%s: status not written yet: %s", namespace, name, exc)
            time.sleep(RECORD_RETRY_SECONDS)

    def _given_back(self, key: ResourceKey, uid: str, migration: str) -> bool:
        """Ask (the annotation) until the binding names this node again; False when
        the GpuReplicaSet is gone or being deleted."""
        while True:
            try:
                grs = self._agent.kube.get(GRS, key.namespace, key.name)
                meta = grs["metadata"]
                if meta.get("uid") != uid or meta.get("deletionTimestamp"):
                    return False
                if (grs.get("status") or {}).get("nodeName") == self._node:
                    return True
                if (meta.get("annotations") or {}).get(FALLBACK_ANNOTATION) != migration:
                    self._agent.kube.patch(GRS, key.namespace, key.name, {
                        "metadata": {"annotations": {FALLBACK_ANNOTATION: migration}}})
            except ObjectNotFoundError:
                return False
            except KubeUnavailableError as exc:
                logger.info("%s: waiting for the target to give it back: %s", key, exc)
            time.sleep(GIVE_BACK_WAIT_SECONDS)

    def _start_here(self, key: ResourceKey, uid: str) -> None:
        """The container stopped for the move starts again when the spec wants it
        running (a Stopped instance stays stopped)."""
        stopped = stopped_for_the_move(self._agent, key, uid)
        if stopped is not None:
            self._agent.docker.start(stopped.id, stopped.name)

    # ------------------------------------------------------------------ the target
    def give_back(self, body: Mapping[str, Any]) -> bool:
        """When the source asks for it (the annotation, and its GpuMigration says
        so): this node's container of the instance goes, then the SizedVolumes'
        bindings and the instance's move back to the source, then this node's
        finalizers and what the transfer brought. True when it was given back."""
        meta = body["metadata"]
        asked = (meta.get("annotations") or {}).get(FALLBACK_ANNOTATION)
        bound = (body.get("status") or {}).get("nodeName")
        mine = ownership.node_finalizer(self._node)
        if not asked or (bound != self._node and mine not in (meta.get("finalizers") or ())):
            return False
        namespace, name, uid = meta["namespace"], meta["name"], str(meta["uid"])
        try:
            migration = self._agent.kube.get(gpu_migration.PLURAL, namespace, str(asked))
        except ObjectNotFoundError:
            return False
        status = migration.get("status") or {}
        if gpu_migration.phase_of(migration) is not Phase.SWITCHING or \
                not status.get(FALLBACK_FIELD) or status.get("targetNode") != self._node or \
                status.get("replicaSetUID") != uid:
            return False
        source, key = str(status["sourceNode"]), ResourceKey(namespace, name)
        if bound == source:  # given back already; this node's finalizer was left on
            drop_finalizer(self._agent.kube, GRS, namespace, name, mine)
            return True  # (a changed spec.nodeName naming this node: never reconciled here)
        if bound != self._node:
            return False
        moving = migration_volumes.listed(status)
        with self._agent.replica_sets.lock(key):  # no reconcile here acts on it now
            self._agent.replica_sets.migrating.add(key)
        try:
            for container in self._agent.docker.list_containers():
                if container.owner == key and container.uid == uid:
                    self._agent.docker.remove(container.id, container.name)
            self._crash.reach("Migrate.givenBack")
            migration_volumes.bind(self._agent, namespace, moving, source)
            for volume in moving:
                drop_finalizer(self._agent.kube, migration_volumes.SVOL, namespace, volume.name,
                               mine)
            # What the transfer brought and what the resume made of it go while the
            # binding is still here: after it leaves, nothing of this node looks again.
            records = [r for r in self._agent.store.list(namespace, name) if r.uid == uid]
            self._agent.replica_sets.disks.remove_saved(layers_named(records))
            migration_leftovers.remove(self._agent, migration, giving_back=True)
            if not self._bind_back(key, uid, source, str(status[FALLBACK_FIELD].get(
                    "message") or "")):
                return False
        finally:
            self._agent.replica_sets.migrating.discard(key)
            migration_volumes.release(self._agent, namespace, moving)
        with contextlib.suppress(KubeUnavailableError):  # the source drops it too
            drop_finalizer(self._agent.kube, GRS, namespace, name, mine)
        logger.info("%s: given back to node %s", key, source)
        return True

    def _bind_back(self, key: ResourceKey, uid: str, source: str, why: str) -> bool:
        """status.nodeName := the source, at the resourceVersion read; False when the
        instance is gone or another incarnation."""
        for _ in range(CAS_TRIES):
            try:
                grs = self._agent.kube.get(GRS, key.namespace, key.name)
            except ObjectNotFoundError:
                return False
            if grs["metadata"].get("uid") != uid:
                return False
            if (grs.get("status") or {}).get("nodeName") != self._node:
                return True
            message = f"node {self._node} gives it back to node {source}: {why}"
            migrating = migrating_status(grs.get("status") or {}, message, self._agent.now())
            with contextlib.suppress(ConflictError):
                self._agent.kube.patch_status_at(GRS, key.namespace, key.name, {
                    **migrating, "nodeName": source, "containerID": None,
                    "containerName": None, "gpus": [], "ports": []},
                    str(grs["metadata"]["resourceVersion"]))
                return True
        raise KubeUnavailableError(f"{key}: the binding kept changing; tried again later")

