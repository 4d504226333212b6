"""A node in a test: the real reconcilers of one agent over the fakes.

:class:`Node` holds what outlives an agent (the fake Docker, the fake API server, the
revision store's file, the clock) and an agent (its Settings, parsed from flags as
the agent parses them, and its two reconcilers). ``start_agent`` starts a fresh one,
as a restart after a crash would. Its methods do what the kopf handlers do with a
reconciler's answer (post the events, write the status when it changed) and what a
user does with kubectl (apply a spec, patch it, delete the object).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpudock.adapters import host_ports
from gpudock.adapters.simulated_gpus import SimulatedGpuInventory
from gpudock.adapters.sqlite_revisions import SqliteRevisionStore
from gpudock.adapters.volumes import registry as volume_registry
from gpudock.adapters.volumes.base import VolumeBackend
from gpudock.agent import volume_reconciler
from gpudock.agent.node_locks import NodeLocks
from gpudock.agent.replica_set_outcome import Event, Outcome
from gpudock.agent.replica_set_reconciler import ReplicaSetReconciler
from gpudock.agent.status_writer import StatusWriter
from gpudock.agent.volume_reconciler import VolumeReconciler
from gpudock.api import gpu_replica_set, sized_volume
from gpudock.api.container_fields import Protocol
from gpudock.api.reasons import Reason
from gpudock.core.observed import HostPort
from gpudock.core.ports import ContainerRuntime
from gpudock.crash_points import CrashPoints
from gpudock.settings import Settings, settings_from
from gpudock.settings_flags import add_agent_arguments
from tests.unit.fakes.clock import FixedClock
from tests.unit.fakes.crash import kill_raises
from tests.unit.fakes.docker import FakeContainer, InMemoryDocker
from tests.unit.fakes.kube import InMemoryKube, merge_patch
from tests.unit.fakes.volumes import InPlaceVolumeBackend

NODE_NAME = "gpu-node-1"
NAMESPACE = "team-a"
IMAGE = "gpudock-test/busybox:1"
OTHER_IMAGE = "gpudock-test/busybox:2"
IDLE_COMMAND = ["sleep", "infinity"]
GRS = gpu_replica_set.PLURAL
SVOL = sized_volume.PLURAL


def agent_settings(state_dir: Path, gpus: int, *flags: str) -> Settings:
    """The agent's Settings from its command line (no GPUDOCK_* variables)."""
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    argv = ["--node-name", NODE_NAME, "--state-dir", str(state_dir),
            "--gpu-backend", "simulated", "--simulated-gpus", str(gpus),
            # The fake Docker is not overlay2: every disk is saved with a commit.
            "--disk-saves", "commit", "--port-range", "40000-40049",
            "--volume-backend", "copy", "--volume-root", str(state_dir / "volumes"),
            "--stop-timeout", "0", *flags]
    return settings_from(parser.parse_args(argv), environ={})


class Node:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, gpus: int = 4) -> None:
        self.tmp = tmp
        self.clock = FixedClock()
        self.docker = InMemoryDocker(tmp / "docker-root", self.clock.now)
        self.docker.load_image(IMAGE)
        self.docker.load_image(OTHER_IMAGE, env=("PATH=/bin", "IMAGE_VERSION=2"))
        self.kube = InMemoryKube()
        self.woken: list[str] = []  # resource UIDs Docker's events named, in order
        self.docker.follow_events(self.woken.append)
        self.events: list[tuple[str, Event]] = []  # (resource name, event) posted
        self.gpus = gpus
        self.state_dir = tmp / "state"
        self._monkeypatch = monkeypatch
        self.in_place: InPlaceVolumeBackend | None = None
        kill_raises(monkeypatch)
        # The kernel's answer on whether a host port is free: the fake node's.
        monkeypatch.setattr(host_ports, "is_busy", self._port_busy)
        self._store: SqliteRevisionStore | None = None
        self.start_agent()

    @property
    def store(self) -> SqliteRevisionStore:
        """The revision store of the agent now (its file outlives the agent)."""
        assert self._store is not None
        return self._store

    # ---------------------------------------------------------------- the agent
    def start_agent(self, *flags: str, gpus: int | None = None) -> None:
        """A fresh agent process (after a crash or a restart), with these flags."""
        if gpus is not None:
            self.gpus = gpus
        self.close()
        self.settings = agent_settings(self.state_dir, self.gpus, *flags)
        self._store = SqliteRevisionStore(
            Path(self.settings.store_url.removeprefix("sqlite:")))
        self.inventory = SimulatedGpuInventory(self.settings.node_name,
                                               self.settings.simulated_gpus)
        self.volumes = VolumeReconciler(self.settings.volume_backend,
                                        self.settings.volumes_at, self.docker, self.store,
                                        self.clock.now, CrashPoints(self.settings.crash_at),
                                        locks=NodeLocks(self.settings.state_dir /
                                                        "volume-locks"))
        self.replica_sets = ReplicaSetReconciler(self.settings, self.docker, self.inventory,
                                                 self.kube, self.store, clock=self.clock.now,
                                                 volumes=self.volumes)

    def use_in_place_volumes(self) -> InPlaceVolumeBackend:
        """New volumes on a backend that resizes in place (tests/unit/fakes/volumes.py)
        instead of the copy backend: the agent is started again with --volume-backend
        loopfile, and that name opens the in-memory backend."""
        backend = InPlaceVolumeBackend(self.state_dir / "volumes", self.docker)

        def open_backend(name: str, root: Path, docker: ContainerRuntime) -> VolumeBackend:
            return backend if name == backend.name else volume_registry.open_volume_backend(
                name, root, docker)

        self._monkeypatch.setattr(volume_reconciler, "open_volume_backend", open_backend)
        self.in_place = backend
        self.start_agent("--volume-backend", backend.name)
        return backend

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def gpu_uuids(self) -> list[str]:
        return [g.uuid for g in self.inventory.list_gpus()]

    def _port_busy(self, port: int, protocol: Protocol) -> bool:
        return HostPort(port, protocol) in self.docker.outside_ports

    # ------------------------------------------------------------ GpuReplicaSets
    def apply(self, name: str, cause: str = "", *, gpus: int = 1, image: str = IMAGE,
              **spec: Any) -> int:
        """`kubectl apply` of a GpuReplicaSet (the whole spec); its generation."""
        full = {"nodeName": NODE_NAME, "image": image, "gpuCount": gpus,
                "command": IDLE_COMMAND, **spec}
        annotations = {"kubernetes.io/change-cause": cause} if cause else {}
        body = self.kube.apply(GRS, NAMESPACE, name, full, annotations)
        return int(body["metadata"]["generation"])

    def patch(self, name: str, spec: dict[str, Any]) -> int:
        """`kubectl patch --type=merge` of the spec; the generation."""
        body = self.kube.get(GRS, NAMESPACE, name)
        merged = merge_patch(body["spec"], spec)
        patched = self.kube.apply(GRS, NAMESPACE, name, merged,
                                  body["metadata"].get("annotations"))
        return int(patched["metadata"]["generation"])

    def annotate(self, name: str, key: str, value: str | None) -> None:
        """`kubectl annotate [--overwrite]` (None: ``key-``); the spec is untouched."""
        body = self.kube.get(GRS, NAMESPACE, name)
        annotations = dict(body["metadata"].get("annotations") or {})
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
        self.kube.apply(GRS, NAMESPACE, name, body["spec"], annotations)

    def reconcile(self, name: str) -> Outcome | None:
        """One pass of the resource's daemon: reconcile, post, write the status."""
        show = self._shower(name)
        outcome = self.replica_sets.reconcile(self.kube.get(GRS, NAMESPACE, name), show)
        if outcome is not None:
            show(outcome)
        return outcome

    def settle(self, name: str, passes: int = 4) -> dict[str, Any]:
        """Reconcile until a pass changes nothing (as the daemon's later wake-ups
        would); the status written."""
        for _ in range(passes):
            before = self.status(name)
            outcome = self.reconcile(name)
            if outcome is None or (not outcome.events and self.status(name) == before):
                break
        return self.status(name)

    def delete(self, name: str) -> list[Event]:
        """`kubectl delete`: the delete handler, then the object is gone."""
        body = self.kube.get(GRS, NAMESPACE, name)
        events = self.replica_sets.delete(body)
        self.events += [(name, e) for e in events]
        self.kube.remove(GRS, NAMESPACE, name)
        return events

    def status(self, name: str, plural: str = GRS) -> dict[str, Any]:
        return dict(self.kube.get(plural, NAMESPACE, name).get("status") or {})

    def condition(self, name: str, kind: str, plural: str = GRS) -> dict[str, Any]:
        found: dict[str, Any] = next((c for c in self.status(name, plural).get(
            "conditions") or () if c.get("type") == kind), {})
        return found

    def reasons(self, name: str) -> list[str]:
        return [e.reason for n, e in self.events if n == name]

    def uid(self, name: str, plural: str = GRS) -> str:
        return str(self.kube.get(plural, NAMESPACE, name)["metadata"]["uid"])

    def containers(self, name: str) -> list[FakeContainer]:
        return self.docker.containers_of(NAMESPACE, name)

    def only_container(self, name: str) -> FakeContainer:
        found = self.containers(name)
        assert len(found) == 1, [(c.name, c.status) for c in found]
        return found[0]

    def _shower(self, name: str) -> Callable[[Outcome], None]:
        def show(outcome: Outcome) -> None:
            self.events += [(name, e) for e in outcome.events]
            # The agent's own writer: a status is patched only when it changed.
            StatusWriter(self.kube, GRS, gpu_replica_set.KIND).write(
                NAMESPACE, name, outcome.status, self.status(name))
        return show

    # --------------------------------------------------------------- SizedVolumes
    def apply_volume(self, name: str, size: str) -> int:
        body = self.kube.apply(SVOL, NAMESPACE, name, {"nodeName": NODE_NAME, "size": size})
        return int(body["metadata"]["generation"])

    def reconcile_volume(self, name: str, *, write: bool = True) -> dict[str, Any]:
        """One pass of the volume's daemon; ``write`` False: its last status write
        is lost (the API server was away), only its progress writes are there."""
        def progress(status: dict[str, Any]) -> None:
            self.kube.patch_status(SVOL, NAMESPACE, name, status)

        def event(kind: str, reason: str, message: str) -> None:
            self.events.append((name, Event(kind, Reason(reason), message)))

        status = self.volumes.reconcile(self.kube.get(SVOL, NAMESPACE, name), progress,
                                        event)
        if write:
            self.kube.patch_status(SVOL, NAMESPACE, name, status)
        return status

    def delete_volume(self, name: str) -> list[str]:
        """The volume's delete handler; the object goes once nothing uses it."""
        users = self.volumes.delete(self.kube.get(SVOL, NAMESPACE, name))
        if not users:
            self.kube.remove(SVOL, NAMESPACE, name)
        return users
