"""Runs one SizedVolume to its spec: observe the backend and Docker, plan
(core/volumes.py), act, repeat until the plan is empty; returns the status.

Volume steps do not take the node lock (a shrink's check and resize of a big
filesystem would stall every other resource); the GpuReplicaSets that mount a
volume see it not Ready while it is resized and do not start their containers.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from gpudock.adapters.docker_runtime import DockerRuntime
from gpudock.adapters.loopfile_volumes import LoopfileBackend
from gpudock.api.sized_volume import SizedVolumeSpec
from gpudock.core import volumes as core
from gpudock.core.conditions import with_transition_times
from gpudock.core.labels import base_name
from gpudock.core.observed import ResourceKey
from gpudock.errors import SpecError, UserError

logger = logging.getLogger(__name__)
MAX_PASSES = 8


def volume_id(namespace: str, name: str, uid: str) -> str:
    """The backend's and Docker's name of a volume: one per incarnation (UID)."""
    return f"{base_name(namespace, name)}-svol-{uid[:8]}"


class VolumeReconciler:
    def __init__(self, backend: LoopfileBackend, docker: DockerRuntime,
                 clock: Callable[[], str]) -> None:
        self._backend = backend
        self._docker = docker
        self._clock = clock

    def reconcile(self, body: Mapping[str, Any],
                  progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        meta, previous = body["metadata"], dict(body.get("status") or {})
        key = ResourceKey(meta["namespace"], meta["name"])
        try:
            spec = SizedVolumeSpec.parse(body.get("spec") or {})
        except SpecError as exc:
            return self._timed({"phase": "Failed", "reason": exc.reason, "conditions": [
                {"type": "Degraded", "status": "True", "reason": exc.reason,
                 "message": exc.message}]}, previous, meta.get("generation"))
        ident = volume_id(key.namespace, key.name, meta["uid"])
        minimum = False
        for _ in range(MAX_PASSES):
            obs = self._observe(key, meta, spec, ident, minimum)
            plan = core.plan_volume(obs)
            if plan.needs_minimum and not minimum:
                minimum = True
                continue
            status = self._timed(plan.status, previous, meta.get("generation"))
            if not plan.actions:
                return status
            progress(status)
            previous = status
            try:
                for action in plan.actions:
                    self._run(action)
            except UserError as exc:
                after = self._observe(key, meta, spec, ident, False)
                return self._timed(core.refused(after, exc.reason, exc.message), previous,
                                   meta.get("generation"))
        raise RuntimeError(f"{key}: no convergence after {MAX_PASSES} passes")

    def _observe(self, key: ResourceKey, meta: Mapping[str, Any], spec: SizedVolumeSpec,
                 ident: str, minimum: bool) -> core.VolumeObservation:
        state = self._backend.state(ident)
        return core.VolumeObservation(
            key=key, uid=meta["uid"], generation=meta.get("generation"),
            size_bytes=spec.size_bytes, backend=self._backend.name, volume_id=ident,
            state=state, docker_volume_exists=self._docker.volume_exists(ident),
            consumers=core.consumers_of(tuple(self._docker.list_containers()), ident),
            free_bytes=self._backend.free_bytes() if state is None else None,
            minimum_bytes=self._backend.minimum_bytes(ident) if minimum and state else None)

    def _run(self, action: core.VolumeAction) -> None:
        backend, docker = self._backend, self._docker
        match action:
            case core.CreateVolume(volume_id=ident, size_bytes=size):
                backend.create(ident, size)
            case core.AttachVolume(volume_id=ident):
                backend.attach(ident)
            case core.CreateDockerVolume(volume_id=ident):
                docker.create_bind_volume(ident, str(backend.path(ident)))
            case core.GrowVolume(volume_id=ident, size_bytes=size, consumers=users):
                if not backend.grow_online(ident, size):
                    logger.warning("volume %s: online grow refused by the kernel (the "
                                   "agent lacks CAP_SYS_RESOURCE); growing offline", ident)
                    self._offline(ident, size, users)
            case core.ShrinkVolume(volume_id=ident, size_bytes=size, consumers=users):
                self._offline(ident, size, users)

    def _offline(self, ident: str, size: int, users: tuple[tuple[str, str], ...]) -> None:
        """Resize with the volume's users stopped, started again whatever happens."""
        for cid, name in users:
            self._docker.stop(cid, name)
        try:
            self._backend.resize_offline(ident, size)
        finally:
            for cid, name in users:
                self._docker.start(cid, name)

    def delete(self, body: Mapping[str, Any]) -> list[str]:
        """Remove the volume; returns the containers that still use it (then nothing
        is removed and the caller tries again later)."""
        meta = body["metadata"]
        ident = volume_id(meta["namespace"], meta["name"], meta["uid"])
        users = core.consumers_of(tuple(self._docker.list_containers()), ident)
        if users:
            return [c.name for c in users]
        self._docker.remove_volume(ident)
        self._backend.delete(ident)
        return []

    def _timed(self, status: dict[str, Any], previous: Mapping[str, Any],
               generation: int | None) -> dict[str, Any]:
        conditions = status.get("conditions") or ()
        if conditions and not isinstance(conditions[0], dict):
            timed = with_transition_times(conditions, previous.get("conditions") or (),
                                          self._clock(), generation)
            status = {**status, "conditions": [c.to_dict() for c in timed]}
        return status


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
