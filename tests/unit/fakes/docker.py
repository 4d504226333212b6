"""An in-memory Docker engine behind the ContainerRuntime port (core/ports.py).

Faithful where the reconcilers look: containers carry their labels, state, exit
codes, restart counts and time stamps, and are observed as the real adapter
observes them (the ObservedContainer of an inspect, see ``inspect`` and the
contract test in test_ports.py); GPUs and host ports are what the labels and the
port bindings say; images have IDs, tags, labels (a commit carries its container's)
and layer counts; a commit snapshots the container's files into a new image; named
volumes have a real directory (so the copy volume backend works on them); every
change of a gpudock container is told to the follower of the events.

What Docker refuses is raised as the adapter raises it (DockerUnavailableError,
ContainerGoneError, HostPortBusyError, UserError with the adapter's reasons), so
the reconcilers meet the same errors as on a node.

Test hooks change the node behind the agent's back (``stop_outside``,
``remove_outside``, ``pause_outside``, ``crash``, ...) or make Docker fail
(``unavailable``, ``fail_next``, ``refuse_next_create``). Files live in a
per-container dict (path -> bytes): ``write_file`` / ``read_file`` are what a user
does in the container; paths under a volume mount go to the volume's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpudock.adapters.docker.errors import (
    ContainerGoneError,
    DiskFullError,
    DockerUnavailableError,
    HostPortBusyError,
)
from gpudock.api import gpu_replica_set
from gpudock.api.container_fields import Protocol
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.container_config import ContainerConfig, exact_env
from gpudock.core.limits import ContainerLimits, NodeCapacity
from gpudock.core.observed import HostPort, ImageInfo, ObservedContainer, ResourceKey
from gpudock.errors import GpudockError, UserError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ZERO_TIME = "0001-01-01T00:00:00Z"
SIGTERM_EXIT = 143  # a process stopped by `docker stop` (SIGTERM through the init)
SIGKILL_EXIT = 137
BUSYBOX_FILES = {
    "/bin/sh": b"busybox sh",
    "/bin/sleep": b"busybox sleep",
    "/bin/busybox": b"busybox",
    "/etc/os-release": b"NAME=busybox",
}


@dataclass
class FakeImage:
    id: str
    files: dict[str, bytes]
    env: list[str]
    cmd: list[str] | None
    labels: dict[str, str]
    volumes: tuple[str, ...] = ()  # the config's VOLUME paths
    layers: int = 1
    parent: str | None = None  # the image a commit was made over


@dataclass
class FakeMount:
    target: str
    source: str  # a volume's name or a host path
    is_volume: bool
    read_only: bool = False


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str  # the reference it was created from (Config.Image)
    image_id: str
    labels: dict[str, str]
    env: list[str]
    cmd: list[str] | None
    files: dict[str, bytes]
    mounts: list[FakeMount]
    port_bindings: dict[tuple[int, Protocol], int]
    restart_policy: str
    runtime: str | None
    init: bool
    status: str = "created"
    exit_code: int = 0
    restart_count: int = 0
    oom_killed: bool = False
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    limits: ContainerLimits = field(default_factory=ContainerLimits)

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting")

    @property
    def gpus(self) -> tuple[str, ...]:
        return tuple(g for g in self.labels.get(labels.GPUS, "").split(",") if g)

    @property
    def revision(self) -> int:
        return int(self.labels.get(labels.REVISION, "0"))


@dataclass
class FakeVolume:
    name: str
    options: dict[str, str]
    labels: dict[str, str]
    mountpoint: Path


@dataclass
class _Failure:
    method: str
    error: Exception
    times: int = 1


@dataclass
class DockerEvent:
    action: str  # create, start, die, stop, pause, unpause, rename, update, destroy
    container: str  # its name at the time
    uid: str = ""


@dataclass(frozen=True)
class Snapshot:
    """What the node holds, comparable: to check that a refused step changed nothing."""

    containers: tuple[tuple[str, str, str, tuple[str, ...]], ...]
    images: tuple[tuple[str, tuple[str, ...]], ...]
    volumes: tuple[str, ...]
    files: tuple[tuple[str, tuple[tuple[str, bytes], ...]], ...] = field(default=())


def _hex(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _merged_env(image_env: list[str], given: list[str]) -> list[str]:
    """Docker's merge of the image's variables with the ones given at create: a given
    NAME=value replaces or appends, a given NAME (no '=') removes the inherited one."""
    merged: dict[str, str | None] = {}
    for entry in image_env:
        name, _, value = entry.partition("=")
        merged[name] = value
    for entry in given:
        name, sep, value = entry.partition("=")
        if sep:
            merged[name] = value
        else:
            merged.pop(name, None)
    return [f"{k}={v}" for k, v in merged.items()]


def _docker_time(stamp: str) -> str:
    """A clock stamp (whole seconds, "Z") as Docker writes it (nanoseconds)."""
    return stamp if stamp == ZERO_TIME else stamp.removesuffix("Z") + ".000000000Z"


class InMemoryDocker:
    """The node's Docker engine, in memory; thread-safe (one lock)."""

    def __init__(self, root: Path, clock: Callable[[], str]) -> None:
        self.root = root  # the engine's root directory: volumes' directories live here
        self._clock = clock
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.images: dict[str, FakeImage] = {}  # by ID
        self.tags: dict[str, str] = {}  # "repository:tag" -> image ID, in tag order
        self.containers: dict[str, FakeContainer] = {}  # by ID, in creation order
        self.volumes: dict[str, FakeVolume] = {}
        self.free: int | None = 500 * 2**30  # free bytes in the root (None: unseen)
        self.capacity: NodeCapacity | None = NodeCapacity(cpu=16000, memory=64 * 2**30)
        self.inodes: int | None = 10**7  # free inodes in the root (None: no fixed number)
        self.unavailable = False  # every request fails as if the engine were down
        # Host ports held by processes outside Docker (the kernel refuses to bind them).
        self.outside_ports: set[HostPort] = set()
        self.log: list[DockerEvent] = []  # every container event, in order
        self.requests: list[str] = []  # every call of the port, by method name
        self._failures: list[_Failure] = []
        self._on_event: Callable[[str], None] | None = None
        # The registries: reference -> the image there; registry host -> the one
        # (username, password) it takes (absent: it takes anyone).
        self.registry: dict[str, FakeImage] = {}
        self.registry_users: dict[str, tuple[str, str]] = {}
        root.mkdir(parents=True, exist_ok=True)

    # ================================================================== test hooks
    def load_image(self, reference: str, files: dict[str, bytes] | None = None, *,
                   env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",),
                   cmd: tuple[str, ...] | None = ("sh",),
                   volumes: tuple[str, ...] = (),
                   image_labels: dict[str, str] | None = None, published: bool = True) -> str:
        """``docker load`` of an image (busybox's files by default); its ID. Unless
        ``published`` is False, its registry has it too (a pull gets the same one)."""
        with self._lock:
            image = FakeImage(id=f"sha256:{_hex(f'image {reference} {next(self._ids)}')}",
                              files=dict(BUSYBOX_FILES if files is None else files),
                              env=list(env), cmd=list(cmd) if cmd is not None else None,
                              labels=dict(image_labels or {}), volumes=tuple(volumes))
            self.images[image.id] = image
            self._tag(image.id, reference)
            if published:
                self.registry[reference] = image
            return image.id

    def publish(self, reference: str, files: dict[str, bytes] | None = None) -> str:
        """Push an image to its registry only (not on the node); its ID."""
        with self._lock:
            image = FakeImage(id=f"sha256:{_hex(f'pushed {reference} {next(self._ids)}')}",
                              files=dict(BUSYBOX_FILES if files is None else files),
                              env=[f"PATH={DEFAULT_PATH}"], cmd=["sh"], labels={})
            self.registry[reference] = image
            return image.id

    def fail_next(self, method: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` (a port method's name) raise ``error``
        before doing anything."""
        with self._lock:
            self._failures.append(_Failure(method, error, times))

    def refuse_next_create(self, text: str = "OCI runtime create failed: "
                           "unable to apply cgroup configuration") -> None:
        """Docker refuses the next container create (the runtime's refusal)."""
        self.fail_next("create", UserError(Reason.CONTAINER_CREATE_FAILED, f"create: {text}"))

    def container(self, name_or_id: str) -> FakeContainer:
        with self._lock:
            found = self._find(name_or_id)
            assert found is not None, f"no container {name_or_id}"
            return found

    def containers_of(self, namespace: str, name: str) -> list[FakeContainer]:
        """A resource's containers, oldest first."""
        with self._lock:
            return [c for c in self.containers.values()
                    if c.labels.get(labels.NAMESPACE) == namespace
                    and c.labels.get(labels.NAME) == name]

    def write_file(self, container: str, path: str, data: bytes) -> None:
        """What a user does in the running container: write a file."""
        with self._lock:
            found = self.container(container)
            assert found.running, f"{found.name} is {found.status}: cannot exec in it"
            outside = self._mounted_path(found, path)
            if outside is not None:
                outside.parent.mkdir(parents=True, exist_ok=True)
                outside.write_bytes(data)
            else:
                found.files[path] = data

    def delete_file(self, container: str, path: str) -> None:
        with self._lock:
            found = self.container(container)
            assert found.running, f"{found.name} is {found.status}: cannot exec in it"
            found.files.pop(path, None)

    def read_file(self, container: str, path: str) -> bytes | None:
        with self._lock:
            found = self.container(container)
            outside = self._mounted_path(found, path)
            if outside is not None:
                return outside.read_bytes() if outside.is_file() else None
            return found.files.get(path)

    def stop_outside(self, container: str) -> None:
        """`docker stop` by someone else: exited, not restarted by the policy."""
        with self._lock:
            self._stop(self.container(container), SIGTERM_EXIT)

    def kill_outside(self, container: str, exit_code: int = SIGKILL_EXIT,
                     oom: bool = False) -> None:
        """`docker kill` (or the kernel's OOM killer with ``oom``): exited."""
        with self._lock:
            found = self.container(container)
            self._stop(found, exit_code)
            found.oom_killed = oom

    def crash(self, container: str, exit_code: int = 1) -> None:
        """The process exits by itself and the restart policy starts it again."""
        with self._lock:
            found = self.container(container)
            assert found.status == "running", found.status
            self._event("die", found)
            found.exit_code = exit_code  # kept: the adapter gives the die event's code
            found.restart_count += 1
            found.started_at = self._clock()
            self._event("start", found)

    def pause_outside(self, container: str) -> None:
        with self._lock:
            found = self.container(container)
            assert found.status == "running", found.status
            found.status = "paused"
            self._event("pause", found)

    def remove_outside(self, container: str) -> None:
        """`docker rm -f` by someone else."""
        with self._lock:
            self._remove(self.container(container))

    def rename_outside(self, container: str, new_name: str) -> None:
        with self._lock:
            found = self.container(container)
            found.name = new_name
            self._event("rename", found)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                containers=tuple((c.id, c.name, c.status, c.gpus)
                                 for c in self.containers.values()),
                images=tuple(sorted((i, tuple(sorted(t for t, target in self.tags.items()
                                                     if target == i)))
                                    for i in self.images)),
                volumes=tuple(sorted(self.volumes)),
                files=tuple((c.id, tuple(sorted(c.files.items())))
                            for c in self.containers.values()))

    def gpus_in_use(self) -> list[str]:
        """Every GPU every container holds (a GPU twice in the list: held twice)."""
        with self._lock:
            return [g for c in self.containers.values() for g in c.gpus]

    def inspect(self, container: str) -> dict[str, Any]:
        """The container as Docker's inspect shows it (the fields the adapter reads)."""
        with self._lock:
            c = self.container(container)
            return {
                "Id": c.id, "Image": c.image_id, "Name": f"/{c.name}",
                "RestartCount": c.restart_count,
                "State": {"Status": c.status, "ExitCode": c.exit_code,
                          "OOMKilled": c.oom_killed, "StartedAt": _docker_time(c.started_at),
                          "FinishedAt": _docker_time(c.finished_at)},
                "Config": {"Image": c.image, "Labels": dict(c.labels), "Env": list(c.env),
                           "Cmd": c.cmd},
                "HostConfig": {
                    "RestartPolicy": {"Name": c.restart_policy}, "Runtime": c.runtime,
                    "PortBindings": {f"{port}/{proto.lower()}": [
                        {"HostIp": "", "HostPort": str(host)}]
                        for (port, proto), host in c.port_bindings.items()}},
                "Mounts": [{"Type": "volume" if m.is_volume else "bind",
                            "Name": m.source if m.is_volume else None,
                            "Source": m.source, "Destination": m.target,
                            "RW": not m.read_only} for m in c.mounts],
                "GraphDriver": {"Name": "vfs", "Data": None},
            }

    # ============================================================ the port: events
    def follow_events(self, on_event: Callable[[str], None] | None = None,
                      on_reconnect: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._on_event = on_event or (lambda _uid: None)

    def events_followed(self) -> bool:
        with self._lock:
            return self._on_event is not None

    # ======================================================= the port: observation
    def list_containers(self) -> list[ObservedContainer]:
        with self._request("list_containers"):
            # Docker lists the newest first.
            return [self._observed(c) for c in reversed(self.containers.values())]

    def image_exists(self, image: str) -> bool:
        return self.image_info(image) is not None

    def image_info(self, image: str) -> ImageInfo | None:
        with self._request("image_info"):
            found = self._image(image)
            if found is None:
                return None
            owner = None
            if found.labels.get(labels.KIND) == gpu_replica_set.KIND:
                owner = (found.labels.get(labels.NAMESPACE, ""),
                         found.labels.get(labels.NAME, ""), found.labels.get(labels.UID, ""))
            return ImageInfo(id=found.id, repo_tags=self._tags_of(found.id), owner=owner,
                             volumes=tuple(sorted(found.volumes)))

    def preserved_tags(self, repository: str) -> frozenset[str]:
        with self._request("preserved_tags"):
            return frozenset(t for t in self.tags if t.startswith(repository + ":"))

    def writable_layer_bytes(self, container_id: str) -> int:
        with self._request("writable_layer_bytes"):
            found = self._find(container_id)
            if found is None:
                return 0
            base = self.images[found.image_id].files if found.image_id in self.images else {}
            return sum(len(data) for path, data in found.files.items()
                       if base.get(path) != data)

    def writable_layer_entries(self, container_id: str) -> int:
        with self._request("writable_layer_entries"):
            found = self._find(container_id)
            if found is None:
                return 0
            base = self.images[found.image_id].files if found.image_id in self.images else {}
            return sum(1 for path, data in found.files.items() if base.get(path) != data)

    def writable_layer_dir(self, container_id: str) -> str | None:
        with self._request("writable_layer_dir"):
            self._existing(container_id, "inspect")
            return None  # not overlay2: disks are saved with a commit

    def storage(self) -> tuple[str, str]:
        with self._request("storage"):
            return "vfs", str(self.root)

    def free_bytes(self) -> int | None:
        with self._request("free_bytes"):
            return self.free

    def free_inodes(self) -> int | None:
        with self._request("free_inodes"):
            return self.inodes

    def layer_count(self, image: str) -> int:
        with self._request("layer_count"):
            return self._inspect_image(image).layers

    def command_missing(self, container_id: str, command: str,
                        env: list[str]) -> bool | None:
        with self._request("command_missing"):
            found = self._find(container_id)
            if found is None or found.status != "running" or "/bin/sh" not in found.files:
                return None  # the exec cannot run: cannot tell
            path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), None)
            return not _command_found(found.files, command, path or _path_of(found.env))

    # ======================================================== the port: containers
    def create_and_start(self, config: ContainerConfig, *, start: bool = True,
                         prepare: Callable[[str], Callable[[], None] | None] | None = None,
                         ) -> str:
        with self._request("create_and_start"):
            self._fail("create")
            env: list[str] = [f"{k}={v}" for k, v in config.env.items()]
            command = list(config.command) if config.command else None
            image = self._inspect_image(config.image, f"create {config.name}")
            if config.base_image and config.image != config.base_image:
                base = self._inspect_image(config.base_image, f"create {config.name}")
                env = exact_env(base.env, image.env, config.env)
                if command is None:
                    command = base.cmd
            for volume in config.image_volumes:  # labelled, so Purge finds them
                self._create_volume(volume.source, {}, dict(config.volume_labels))
            if self._find(config.name) is not None:
                raise UserError(Reason.CONTAINER_CREATE_FAILED, f"create {config.name}: Conflict. "
                                f"The container name \"/{config.name}\" is already in use")
            for mount in config.mounts:
                if not mount.is_volume and not os.path.exists(mount.source):
                    raise UserError(Reason.HOST_PATH_MISSING, f"create {config.name}: invalid "
                                    "mount config for type \"bind\": bind source path does "
                                    f"not exist: {mount.source}")
            mounts = [FakeMount(m.target, m.source, m.is_volume, m.read_only)
                      for m in (*config.mounts, *config.image_volumes)]
            for made in mounts:
                if made.is_volume:  # Docker makes a named volume that is missing
                    self._create_volume(made.source, {}, {})
            container = FakeContainer(
                id=_hex(f"container {config.name} {next(self._ids)}"), name=config.name,
                image=config.image, image_id=image.id, labels=dict(config.labels),
                env=_merged_env(image.env, env), cmd=command or image.cmd,
                files=dict(image.files), mounts=mounts,
                port_bindings={(p.container_port, p.protocol): p.host_port
                               for p in config.ports},
                restart_policy=config.restart_policy, runtime=config.runtime,
                init=config.init, limits=config.limits)
            self.containers[container.id] = container
            self._event("create", container)
        undo: Callable[[], None] | None = None
        try:
            if prepare is not None:
                undo = prepare(container.id)
            if not start:
                return container.id
            with self._request("create_and_start"):
                self._start(container)
        except Exception:
            # Never leave a created-but-unstartable container holding GPUs and ports.
            if undo is not None:
                undo()
            with contextlib.suppress(GpudockError):
                self.remove(container.id, config.name)
            raise
        return container.id

    def start(self, container_id: str, name: str) -> None:
        with self._request("start"):
            found = self._existing(container_id, f"start {name}")
            if found.status == "paused":
                raise UserError(Reason.CONTAINER_START_FAILED, f"start {name}: cannot start a "
                                "paused container, try unpause instead")
            if not found.running:
                self._start(found)

    def stop(self, container_id: str, name: str) -> None:
        with self._request("stop"):
            found = self._existing(container_id, f"stop {name}")
            if found.running or found.status == "paused":
                self._stop(found, SIGTERM_EXIT)

    def unpause(self, container_id: str, name: str) -> None:
        with self._request("unpause"):
            found = self._existing(container_id, f"unpause {name}")
            if found.status != "paused":
                raise UserError(Reason.DOCKER_REQUEST_FAILED, f"unpause {name}: Container "
                                f"{container_id} is not paused")
            found.status = "running"
            self._event("unpause", found)

    def rename(self, container_id: str, new_name: str) -> None:
        with self._request("rename"):
            found = self._existing(container_id, f"rename to {new_name}")
            other = self._find(new_name)
            if other is not None and other is not found:
                raise UserError(Reason.DOCKER_REQUEST_FAILED, f"rename to {new_name}: Conflict. "
                                f"The container name \"/{new_name}\" is already in use")
            found.name = new_name
            self._event("rename", found)

    def set_restart_policy(self, container_id: str, name: str, policy: str) -> None:
        with self._request("set_restart_policy"):
            found = self._existing(container_id, f"update {name}")
            found.restart_policy = policy
            self._event("update", found)

    def update_limits(self, container_id: str, name: str, limits: ContainerLimits) -> None:
        with self._request("update_limits"):
            found = self._existing(container_id, f"update the limits of {name}")
            # As Docker: a 0 leaves the CPU or memory limit as it is.
            found.limits = replace(found.limits, pids_limit=limits.pids_limit,
                                   nano_cpus=limits.nano_cpus or found.limits.nano_cpus,
                                   memory=limits.memory or found.limits.memory)
            self._event("update", found)

    def node_capacity(self) -> NodeCapacity | None:
        with self._request("node_capacity"):
            return self.capacity

    def remove(self, container_id: str, name: str) -> None:
        with self._request("remove"):
            found = self._find(container_id)
            if found is not None:
                self._remove(found)

    # ============================================================ the port: images
    def commit(self, container_id: str, name: str, image: str) -> None:
        with self._request("commit"):
            found = self._existing(container_id, f"commit {name}")
            self._need_room(found, f"commit {name}")
            source = self.images[found.image_id]
            committed = FakeImage(
                id=f"sha256:{_hex(f'commit {container_id} {next(self._ids)}')}",
                files=dict(found.files), env=list(found.env), cmd=found.cmd,
                labels=dict(found.labels), volumes=source.volumes,
                layers=source.layers + 1, parent=source.id)
            self.images[committed.id] = committed
            self._tag(committed.id, image)

    def flatten(self, container_id: str, name: str, image: str) -> None:
        with self._request("flatten"):
            found = self._existing(container_id, f"flatten {name}")
            committed = self._inspect_image(image)
            flat = replace(committed, id=f"sha256:{_hex(f'import {image} {next(self._ids)}')}",
                           files=dict(found.files), layers=1, parent=None)
            self.images[flat.id] = flat
            self._tag(flat.id, image)
        self.remove_image(committed.id)  # the many-layer commit, now untagged

    def tag_image(self, source: str, target: str) -> bool:
        with self._request("tag_image"):
            found = self._image(source)
            if found is None:
                return False
            self._tag(found.id, target)
            return True

    def remove_image(self, image: str) -> bool:
        with self._request("remove_image"):
            if image in self.tags:
                image_id = self.tags[image]
                if len(self._tags_of(image_id)) == 1 and self._used(image_id):
                    return False  # a container uses it: Docker's 409 (must force)
                del self.tags[image]
                if not self._tags_of(image_id) and not self._children(image_id):
                    self._delete_image(image_id)
                return True  # with child images (or other tags) it is only untagged
            found = self._image(image)
            if found is None:
                return True  # gone already
            if len(self._tags_of(found.id)) > 1 or self._children(found.id) or \
                    self._used(found.id):
                return False  # Docker's 409
            for tag in self._tags_of(found.id):
                del self.tags[tag]
            self._delete_image(found.id)
            return True

    def remove_dangling_images(self, namespace: str, name: str) -> int:
        with self._request("remove_dangling_images"):
            found = [i.id for i in self.images.values() if not self._tags_of(i.id)
                     and i.labels.get(labels.NAMESPACE) == namespace
                     and i.labels.get(labels.NAME) == name]
        for image_id in found:
            self.remove_image(image_id)
        return len(found)

    # =========================================================== the port: volumes
    def remove_volumes(self, namespace: str, name: str, uid: str | None = None) -> int:
        with self._request("remove_volumes"):
            wanted = {labels.NAMESPACE: namespace, labels.NAME: name,
                      labels.KIND: "GpuReplicaSet",
                      **({labels.UID: uid} if uid is not None else {})}
            removed = 0
            for volume in list(self.volumes.values()):
                if all(volume.labels.get(k) == v for k, v in wanted.items()) and \
                        not self._users(volume.name):
                    self._drop_volume(volume)
                    removed += 1
            return removed

    def volume_exists(self, name: str) -> bool:
        with self._request("volume_exists"):
            return name in self.volumes

    def volume_mounted(self, name: str) -> bool:
        with self._request("volume_mounted"):
            volume = self.volumes.get(name)
            if volume is None:
                return False
            options = volume.options
            if options.get("type") == "none" and "bind" in options.get("o", ""):
                return os.path.ismount(options.get("device", ""))
            return True

    def create_volume(self, name: str, options: dict[str, str],
                      extra_labels: dict[str, str] | None = None) -> None:
        with self._request("create_volume"):
            self._create_volume(name, options,
                                {labels.KIND: "SizedVolume", **(extra_labels or {})})

    def volume_info(self, name: str) -> dict[str, Any] | None:
        with self._request("volume_info"):
            volume = self.volumes.get(name)
            if volume is None:
                return None
            return {"Name": volume.name, "Driver": "local",
                    "Mountpoint": str(volume.mountpoint), "Options": dict(volume.options),
                    "Labels": dict(volume.labels)}

    def remove_volume(self, name: str) -> None:
        with self._request("remove_volume"):
            volume = self.volumes.get(name)
            if volume is None:
                return
            users = self._users(name)
            if users:
                raise UserError(Reason.DOCKER_REQUEST_FAILED, f"remove volume {name}: volume is "
                                f"in use - [{', '.join(c.id for c in users)}]")
            self._drop_volume(volume)

    # ============================================================ the port: pulls
    def pull_image(self, image: str, auth: Mapping[str, str] | None,
                   on_message: Callable[[Mapping[str, Any]], None]) -> str:
        with self._request("pull_image"):
            found = self._remote(image, auth, "pull")
            on_message({"status": "Pulling fs layer", "id": "layer1"})
            size = sum(len(data) for data in found.files.values())
            on_message({"status": "Downloading", "id": "layer1",
                        "progressDetail": {"current": size, "total": size}})
            on_message({"status": "Pull complete", "id": "layer1"})
            self.images.setdefault(found.id, replace(found, files=dict(found.files)))
            self._tag(found.id, image)
            return found.id

    def check_pull_access(self, image: str, auth: Mapping[str, str] | None) -> None:
        with self._request("check_pull_access"):
            self._remote(image, auth, "inspect")

    def _remote(self, image: str, auth: Mapping[str, str] | None, what: str) -> FakeImage:
        host = image.split("/", 1)[0] if "/" in image and "." in image.split("/")[0] \
            else "docker.io"
        wanted = self.registry_users.get(host)
        given = (auth["username"], auth["password"]) if auth else None
        if wanted is not None and given != wanted:
            raise UserError(Reason.ERR_IMAGE_PULL, f"{what} {image}: unauthorized: "
                            "authentication required")
        found = self.registry.get(image)
        if found is None:
            raise UserError(Reason.ERR_IMAGE_PULL, f"{what} {image}: manifest unknown")
        return found

    # ================================================================== internals
    @contextlib.contextmanager
    def _request(self, method: str) -> Iterator[None]:
        with self._lock:
            self.requests.append(method)
            if self.unavailable:
                raise DockerUnavailableError(f"{method}: cannot reach Docker: Connection "
                                             "refused")
            self._fail(method)
            yield

    def _fail(self, method: str) -> None:
        for failure in self._failures:
            if failure.method == method:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                raise failure.error

    def _event(self, action: str, container: FakeContainer) -> None:
        uid = container.labels.get(labels.UID, "")
        self.log.append(DockerEvent(action, container.name, uid))
        if uid and self._on_event is not None:
            self._on_event(uid)

    def _find(self, name_or_id: str) -> FakeContainer | None:
        if name_or_id in self.containers:
            return self.containers[name_or_id]
        return next((c for c in self.containers.values() if c.name == name_or_id), None)

    def _existing(self, container_id: str, what: str) -> FakeContainer:
        found = self._find(container_id)
        if found is None:
            raise ContainerGoneError(f"{what}: No such container: {container_id}")
        return found

    def _image(self, reference: str) -> FakeImage | None:
        image_id = self.tags.get(reference, reference)
        if image_id not in self.images:  # Docker takes a unique prefix of an ID too
            digits = reference.removeprefix("sha256:")
            matches = [i for i in self.images if i.removeprefix("sha256:").startswith(digits)]
            image_id = matches[0] if digits and len(matches) == 1 else image_id
        return self.images.get(image_id)

    def _inspect_image(self, reference: str, what: str | None = None) -> FakeImage:
        found = self._image(reference)
        if found is None:
            raise UserError(Reason.IMAGE_NOT_PRESENT, f"{what or f'inspect image {reference}'}: "
                            f"No such image: {reference}")
        return found

    def _tags_of(self, image_id: str) -> tuple[str, ...]:
        return tuple(t for t, target in self.tags.items() if target == image_id)

    def _children(self, image_id: str) -> list[str]:
        return [i.id for i in self.images.values() if i.parent == image_id]

    def _used(self, image_id: str) -> bool:
        return any(c.image_id == image_id for c in self.containers.values())

    def _delete_image(self, image_id: str) -> None:
        """Remove an image and, as Docker prunes, its untagged parents nothing uses."""
        parent = self.images.pop(image_id).parent
        if parent in self.images and not self._tags_of(parent) and \
                not self._children(parent) and not self._used(parent):
            self._delete_image(parent)

    def _tag(self, image_id: str, reference: str) -> None:
        self.tags.pop(reference, None)  # a tag moves: the image it named loses it
        self.tags[reference] = image_id

    def _observed(self, c: FakeContainer) -> ObservedContainer:
        owner = None
        if c.labels.get(labels.KIND) == gpu_replica_set.KIND:
            owner = ResourceKey(c.labels.get(labels.NAMESPACE, ""),
                                c.labels.get(labels.NAME, ""))
        try:
            revision = int(c.labels.get(labels.REVISION, "0"))
        except ValueError:
            revision = 0
        return ObservedContainer(
            id=c.id, name=c.name, status=c.status, owner=owner,
            uid=c.labels.get(labels.UID, ""), revision=revision, gpus=c.gpus,
            address=c.labels.get(labels.ADDRESS, ""),
            spec_hash=c.labels.get(labels.SPEC_HASH, ""),
            base_image=c.labels.get(labels.IMAGE, ""),
            port_bindings=dict(c.port_bindings), image=c.image, image_id=c.image_id,
            upper_dir="",
            restart_policy=c.restart_policy, node=c.labels.get(labels.NODE, ""),
            volumes={m.target: m.source for m in c.mounts if m.is_volume},
            exit_code=c.exit_code, restart_count=c.restart_count,
            oom_killed=c.oom_killed,
            started_at="" if c.started_at == ZERO_TIME else c.started_at,
            finished_at="" if c.finished_at == ZERO_TIME else c.finished_at,
            limits=c.limits)

    def _start(self, c: FakeContainer) -> None:
        command = c.cmd or []
        if command and not _command_found(c.files, command[0], _path_of(c.env)):
            raise UserError(Reason.COMMAND_NOT_FOUND, f"start {c.name}: the command cannot be run "
                            f"in the image: exec: \"{command[0]}\": executable file not "
                            "found in $PATH")
        held = {HostPort(h, p): o for o in self.containers.values() if o.running
                and o is not c for (_, p), h in o.port_bindings.items()}
        for (_, proto), host in c.port_bindings.items():
            if HostPort(host, proto) in held:
                raise HostPortBusyError(f"start {c.name}: driver failed programming "
                                        f"external connectivity: Bind for 0.0.0.0:{host} "
                                        "failed: port is already allocated", host)
            if HostPort(host, proto) in self.outside_ports:
                raise HostPortBusyError(f"start {c.name}: listen {proto.lower()}4 "
                                        f"0.0.0.0:{host}: bind: address already in use", host)
        c.status = "running"
        c.exit_code = 0
        c.restart_count = 0
        c.oom_killed = False
        c.started_at = self._clock()
        self._event("start", c)

    def _stop(self, c: FakeContainer, exit_code: int) -> None:
        if not (c.running or c.status == "paused"):
            return
        self._event("die", c)
        c.status = "exited"
        c.exit_code = exit_code
        c.finished_at = self._clock()
        self._event("stop", c)

    def _remove(self, c: FakeContainer) -> None:
        self._stop(c, SIGKILL_EXIT)
        del self.containers[c.id]
        self._event("destroy", c)

    def _need_room(self, c: FakeContainer, what: str) -> None:
        needed = sum(len(d) for d in c.files.values())
        if self.free is not None and self.free < needed:
            raise DiskFullError(f"{what}: write /var/lib/docker/tmp: no space left on device")

    def _mounted_path(self, c: FakeContainer, path: str) -> Path | None:
        """Where a path of the container lives when a mount covers it."""
        for mount in sorted(c.mounts, key=lambda m: len(m.target), reverse=True):
            target = mount.target.rstrip("/")
            if path == target or path.startswith(target + "/"):
                base = self.volumes[mount.source].mountpoint if mount.is_volume \
                    else Path(mount.source)
                return base / path[len(target):].lstrip("/")
        return None

    def _users(self, volume: str) -> list[FakeContainer]:
        return [c for c in self.containers.values()
                if any(m.is_volume and m.source == volume for m in c.mounts)]

    def _create_volume(self, name: str, options: dict[str, str],
                       volume_labels: dict[str, str]) -> None:
        if name in self.volumes:
            return
        mountpoint = self.root / "volumes" / name / "_data"
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.volumes[name] = FakeVolume(name, dict(options), dict(volume_labels), mountpoint)

    def _drop_volume(self, volume: FakeVolume) -> None:
        del self.volumes[volume.name]
        shutil.rmtree(volume.mountpoint.parent, ignore_errors=True)


def _path_of(env: list[str]) -> str:
    return next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), DEFAULT_PATH)


def _command_found(files: dict[str, bytes], command: str, path: str) -> bool:
    if "/" in command:
        return command in files
    return any(f"{d.rstrip('/')}/{command}" in files for d in path.split(":") if d)
