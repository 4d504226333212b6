"""Runs one SizedVolume to its spec: observe the records, the backend and Docker,
plan (core/volumes.py), act, repeat until the plan is empty; returns the status.

The backend of a volume is the one its records name (with the root it had), so
changing --volume-backend or --volume-root later never strands an existing volume;
new volumes get the node's. Volume steps do not take the node lock (a check and
resize of a big filesystem, or a copy, would stall every other resource); the
GpuReplicaSets that mount a volume see it not Ready while it is resized and do not
start their containers meanwhile.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gpudock import metrics
from gpudock.adapters.volumes.base import VolumeBackend
from gpudock.adapters.volumes.registry import open_volume_backend
from gpudock.agent.node_locks import NodeLocks
from gpudock.api import sized_volume
from gpudock.api.quantity import format_size
from gpudock.api.reasons import Reason
from gpudock.api.sized_volume import SizedVolumeSpec
from gpudock.core import labels
from gpudock.core import volumes as core
from gpudock.core.conditions import with_transition_times
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.ports import ContainerRuntime
from gpudock.core.revision import RevisionStore
from gpudock.core.volume_revision import VolumeRevision
from gpudock.crash_points import CrashPoints
from gpudock.errors import InternalError, SpecError, UserError

logger = logging.getLogger(__name__)
MAX_PASSES = 12
DELETED_KEPT = 1024  # deleted volumes' UIDs remembered against a late reconcile


class VolumeReconciler:
    def __init__(self, backend: str, root: Path, docker: ContainerRuntime,
                 store: RevisionStore, clock: Callable[[], str],
                 crash: CrashPoints | None = None, *, locks: NodeLocks) -> None:
        self._default = (backend, str(root))
        self._docker = docker
        self._store = store
        self._clock = clock
        self._crash = crash or CrashPoints()
        self._backends: dict[tuple[str, str], VolumeBackend] = {}
        # A reconcile and the delete of one volume never run at once (a reconcile
        # begun before the delete would make again what the delete removed: found by
        # the soak), and one of a volume deleted since does nothing.
        self._locks = locks
        self._deleted: dict[str, None] = {}  # UIDs, the last DELETED_KEPT, oldest first
        # Volumes a migration moves away from this node: not reconciled here, no
        # status written (migration_volumes.py).
        self._moving: set[ResourceKey] = set()

    def backend(self, name: str, root: str) -> VolumeBackend:
        """The backend a volume's record names (opened and checked once)."""
        if (name, root) not in self._backends:
            backend = open_volume_backend(name, Path(root), self._docker)
            backend.check()
            self._backends[(name, root)] = backend
        return self._backends[(name, root)]

    def reconcile(self, body: Mapping[str, Any],
                  progress: Callable[[dict[str, Any]], None],
                  event: Callable[[str, str, str], None] = lambda *_: None,
                  consumer_event: Callable[[ObservedContainer, str, str, str], None]
                  = lambda *_: None) -> dict[str, Any]:
        """Converge; ``progress`` gets each status before a step is taken, ``event``
        (type, reason, message) each step done and each refusal first seen."""
        meta, previous = body["metadata"], dict(body.get("status") or {})
        key = ResourceKey(meta["namespace"], meta["name"])
        try:
            spec = SizedVolumeSpec.parse(body.get("spec") or {})
        except SpecError as exc:
            return self._timed({"phase": "Failed", "reason": exc.reason, "conditions": [
                {"type": "Degraded", "status": "True", "reason": exc.reason,
                 "message": exc.message}]}, previous, meta.get("generation"))
        with self._locks.resource(key):
            if meta["uid"] in self._deleted or key in self._moving:
                return previous
            return self._converge(key, meta, spec, previous, progress, event, consumer_event)

    def _converge(self, key: ResourceKey, meta: Mapping[str, Any], spec: SizedVolumeSpec,
                  previous: dict[str, Any], progress: Callable[[dict[str, Any]], None],
                  event: Callable[[str, str, str], None],
                  consumer_event: Callable[[ObservedContainer, str, str, str], None],
                  ) -> dict[str, Any]:
        minimum = False
        for _ in range(MAX_PASSES):
            obs = self._observe(key, meta, spec, minimum)
            plan = core.plan_volume(obs)
            if plan.needs_minimum and not minimum:
                minimum = True
                continue
            minimum = False
            status = self._timed(plan.status, previous, meta.get("generation"))
            if not plan.actions:
                problem, before = _problem(status), _problem(previous)
                if problem is not None and (before is None or problem[0] != before[0]):
                    event("Warning", *problem)  # once, not at every resync
                return status
            progress(status)
            previous = status
            try:
                for action in plan.actions:
                    warning = self._execute(obs, action)
                    event("Normal", *core.describe(action))
                    for user, message in _restarted(obs, action):
                        consumer_event(user, "Normal", Reason.RESTARTED_FOR_VOLUME_RESIZE,
                                       message)
                    if warning is not None:
                        event("Warning", *warning)
            except UserError as exc:
                after = self._observe(key, meta, spec, False)
                event("Warning", exc.reason, exc.message)
                return self._timed(core.refused(after, exc.reason, exc.message), previous,
                                   meta.get("generation"))
        raise InternalError(f"{key}: no convergence after {MAX_PASSES} passes")

    def serving(self, body: Mapping[str, Any]) -> str | None:
        """The Docker volume of a SizedVolume when a container may mount it now: what
        its own reconcile would show as Ready, decided from observing the volume (its
        records, the backend, Docker), never from the status last written."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return None
        try:
            spec = SizedVolumeSpec.parse(body.get("spec") or {})
        except SpecError:
            return None
        key = ResourceKey(meta["namespace"], meta["name"])
        plan = core.plan_volume(self._observe(key, meta, spec, minimum=False))
        if plan.needs_minimum:  # a shrink: done (then not mountable now) or refused?
            plan = core.plan_volume(self._observe(key, meta, spec, minimum=True))
        status = plan.status
        volume = status.get("volumeName")
        return str(volume) if status.get("phase") == "Ready" and volume else None

    def _records(self, key: ResourceKey, uid: str) -> tuple[VolumeRevision, ...]:
        return tuple(r for r in self._store.list_volume(key.namespace, key.name)
                     if r.uid == uid)

    def _observe(self, key: ResourceKey, meta: Mapping[str, Any], spec: SizedVolumeSpec,
                 minimum: bool) -> core.VolumeObservation:
        metrics.OBSERVATIONS.labels(sized_volume.KIND).inc()
        uid = meta["uid"]
        records = self._records(key, uid)
        latest = core.current_record(records)
        name, root = (latest.backend, latest.root) if latest else self._default
        backend = self.backend(name, root)
        ident = latest.volume_id if latest else core.volume_id(key, uid, name)
        state = backend.state(ident)
        containers = tuple(self._docker.list_containers())
        earlier = tuple(dict.fromkeys(r.volume_id for r in records if r.volume_id != ident))
        return core.VolumeObservation(
            key=key, uid=uid, generation=meta.get("generation"),
            size_bytes=spec.size_bytes,
            backend=core.Backend(name, root, backend.online_shrink, backend.moves_on_resize),
            records=records, volume_id=ident, state=state,
            docker_volume_exists=self._docker.volume_exists(ident),
            consumers=core.consumers_of(containers, ident),
            earlier=tuple((v, core.consumers_of(containers, v)) for v in earlier
                          if self._docker.volume_exists(v)),
            # The room is asked for before a volume is made or grown, never after.
            free_bytes=backend.free_bytes() if latest is None or (
                state is None and not latest.made) or (
                state is not None and spec.size_bytes > state.size_bytes) else None,
            minimum_bytes=backend.minimum_bytes(ident) if minimum and state else None,
            now=self._clock())

    def _execute(self, obs: core.VolumeObservation,
                 action: core.VolumeAction) -> tuple[Reason, str] | None:
        """Take one step; a warning the backend had about it (for an event)."""
        step = type(action).__name__
        self._crash.reach(f"{step}.before")
        warning = self._run(obs, action)
        self._crash.reach(f"{step}.after")
        return warning

    def _run(self, obs: core.VolumeObservation,
             action: core.VolumeAction) -> tuple[Reason, str] | None:
        backend, docker = self.backend(obs.backend.name, obs.backend.root), self._docker
        match action:
            case core.RecordVolume(record=record):
                self._store.put_volume(record)
            case core.CreateVolume(volume_id=ident, size_bytes=size):
                backend.create(ident, size, _owner(obs))
            case core.AttachVolume(volume_id=ident):
                return backend.attach(ident)
            case core.CreateDockerVolume(volume_id=ident):
                docker.create_volume(ident, backend.docker_options(ident) or {}, _owner(obs))
            case core.ResizeVolume(volume_id=ident, size_bytes=size, online=online,
                                   consumers=users):
                if not (online and backend.resize_online(ident, size)):
                    if online:
                        logger.warning("volume %s: online resize refused by the kernel "
                                       "(the agent lacks CAP_SYS_RESOURCE); resizing "
                                       "offline", ident)
                    self._offline(backend, ident, size, users)
            case core.MoveVolume():
                self._move(backend, action)
            case core.RemoveDockerVolume(volume_id=ident):
                backend.delete(ident)
        return None

    def _offline(self, backend: VolumeBackend, ident: str, size: int,
                 users: tuple[tuple[str, str], ...]) -> None:
        """Resize with the volume's users stopped, started again whatever happens
        (after a crash meanwhile their GpuReplicaSets start them once it is Ready)."""
        for cid, name in users:
            self._docker.stop(cid, name)
        self._crash.reach("ResizeVolume.usersStopped")
        try:
            backend.resize_offline(ident, size)
        finally:
            for cid, name in users:
                self._docker.start(cid, name)

    def _move(self, backend: VolumeBackend, move: core.MoveVolume) -> None:
        """The resize of a backend that moves_on_resize. Until the record is written
        the old volume is the volume (a crash before: the copy starts over); a copy
        that fails leaves it as it was and starts its users again."""
        for cid, name in move.consumers:
            self._docker.stop(cid, name)
        self._crash.reach("MoveVolume.usersStopped")
        try:
            backend.copy(move.source, move.target, move.size_bytes)
        except BaseException:
            backend.delete(move.target)
            for cid, name in move.consumers:
                self._docker.start(cid, name)
            raise
        self._crash.reach("MoveVolume.copied")
        self._store.put_volume(move.record)

    def delete(self, body: Mapping[str, Any]) -> list[str]:
        """Remove the volume, every Docker volume it had and its records; returns the
        containers that still use one (then nothing is removed; try again later)."""
        meta = body["metadata"]
        key = ResourceKey(meta["namespace"], meta["name"])
        with self._locks.resource(key):
            users = self._delete(key, meta["uid"])
            if not users:
                self._moving.discard(key)
                self._deleted[meta["uid"]] = None
                for uid in list(self._deleted)[:-DELETED_KEPT]:
                    del self._deleted[uid]
            return users

    def _delete(self, key: ResourceKey, uid: str) -> list[str]:
        records = self._records(key, uid)
        default = core.volume_id(key, uid, self._default[0])
        volumes = list(dict.fromkeys([*(r.volume_id for r in records), default]))
        containers = tuple(self._docker.list_containers())
        users: list[ObservedContainer] = [
            c for v in volumes for c in core.consumers_of(containers, v)]
        if users:
            return sorted({c.name for c in users})
        places = {r.volume_id: (r.backend, r.root) for r in records} or {
            default: self._default}
        for ident, (name, root) in places.items():
            self._docker.remove_volume(ident)
            self.backend(name, root).delete(ident)
        self._store.delete_volume_all(key.namespace, key.name)
        return []

    # ------------------------------------------------------------------ migration
    def served_here(self, key: ResourceKey, uid: str) -> bool:
        """This agent reconciles the volume and writes its status (not while a
        migration moves it away, nor once it was deleted or handed over)."""
        return key not in self._moving and uid not in self._deleted

    def while_served(self, key: ResourceKey, uid: str, act: Callable[[], None]) -> None:
        """``act`` (a status write) unless a migration took the volume meanwhile."""
        with self._locks.resource(key):
            if self.served_here(key, uid):
                act()

    def start_moving(self, key: ResourceKey) -> None:
        with self._locks.resource(key):  # a reconcile under way ends first
            self._moving.add(key)

    def stop_moving(self, key: ResourceKey) -> None:
        self._moving.discard(key)

    def files(self, namespace: str, name: str, uid: str) -> Path | None:
        """The directory that holds the volume's files here, when it is there."""
        latest = core.current_record(self._records(ResourceKey(namespace, name), uid))
        if latest is None or not latest.made:
            return None
        return self.backend(latest.backend, latest.root).data_dir(latest.volume_id)

    def make_arriving(self, body: Mapping[str, Any]) -> Path:
        """On a migration's target: a fresh volume for ``body`` on this node's
        backend at its spec's size (what an earlier move left goes first); the
        directory of its files. UserError when it cannot be made."""
        meta = body["metadata"]
        key, uid = ResourceKey(meta["namespace"], meta["name"]), str(meta["uid"])
        spec = SizedVolumeSpec.parse(body.get("spec") or {})
        with self._locks.resource(key):
            self._deleted.pop(uid, None)
            self._moving.discard(key)
            users = self._delete(key, uid)
            if users:
                raise UserError(Reason.TRANSFER_FAILED, f"SizedVolume {key.name} is in use "
                                f"here by {', '.join(users)}")
            status = self._converge(key, meta, spec, {}, lambda _: None,
                                    lambda *_: None, lambda *_: None)
        files = self.files(key.namespace, key.name, uid)
        if status.get("phase") != "Ready" or files is None:
            problem = _problem(status) or (Reason.TARGET_UNSCHEDULABLE, "not made")
            raise UserError(Reason.TARGET_UNSCHEDULABLE, f"SizedVolume {key.name} cannot "
                            f"be made on this node: {problem[0]}: {problem[1]}")
        return files

    def hand_over(self, namespace: str, name: str, uid: str) -> list[str]:
        """On a migration's source, once the target serves it: this node's copy goes
        (as a delete; the containers that mount it, when any: nothing removed)."""
        return self.delete({"metadata": {"namespace": namespace, "name": name, "uid": uid}})

    def discard_arrival(self, namespace: str, name: str, uid: str) -> list[str]:
        """On a migration's target, after it failed: what it made here goes."""
        key = ResourceKey(namespace, name)
        with self._locks.resource(key):
            return self._delete(key, uid)

    def _timed(self, status: dict[str, Any], previous: Mapping[str, Any],
               generation: int | None) -> dict[str, Any]:
        conditions = status.get("conditions") or ()
        if conditions and not isinstance(conditions[0], dict):
            timed = with_transition_times(conditions, previous.get("conditions") or (),
                                          self._clock(), generation)
            status = {**status, "conditions": [c.to_dict() for c in timed]}
        return status


def _problem(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """The Degraded condition's (reason, message) when it is True."""
    found = next((c for c in status.get("conditions") or ()
                  if isinstance(c, dict) and c.get("type") == "Degraded"
                  and c.get("status") == "True"), None)
    return (str(found.get("reason")), str(found.get("message"))) if found else None


def _restarted(obs: core.VolumeObservation, action: core.VolumeAction,
               ) -> list[tuple[ObservedContainer, str]]:
    """The containers a step stopped and started again (an offline resize, a move),
    each with what its GpuReplicaSet's Event says."""
    match action:
        case core.ResizeVolume(online=False, consumers=users, size_bytes=size) | \
                core.MoveVolume(consumers=users, size_bytes=size):
            stopped = {cid for cid, _ in users}
            return [(c, f"container {c.name} was stopped and started again: SizedVolume "
                     f"{obs.key.name} it mounts was resized to {format_size(size)}")
                    for c in obs.consumers if c.id in stopped and c.owner is not None]
    return []


def _owner(obs: core.VolumeObservation) -> dict[str, str]:
    """The labels of the SizedVolume's Docker volumes (with gpudock.dev/kind), as every
    Docker object of gpudock carries (docker volume ls --filter label=...)."""
    return {labels.NAMESPACE: obs.key.namespace, labels.NAME: obs.key.name,
            labels.UID: obs.uid}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
