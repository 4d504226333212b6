"""SizedVolumes that move with their instance (docs/migration.md, "SizedVolumes").

A volume moves when only the migrating instance mounts it (no other GpuReplicaSet
of the namespace names it in its mounts) and it is held by the source node, not
pinned by its own spec.nodeName to another node than the target. The source sends
its files like the writable layer (a first pass while the instance runs, the rest
once it is stopped); the target makes a fresh volume of the same size on its own
backend (its --volume-backend and root), builds the received tree inside it, checks
it against the source's manifest, then moves it into place. At the switch the
volume's binding (status.nodeName) and finalizer move with the instance's; the
source's copy is removed only once the target serves the instance.

From the start of the transfer the source's agent neither reconciles the volume nor
writes its status (VolumeReconciler.start_moving): a resize waits for the move.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpudock.adapters import tree_copy
from gpudock.adapters.kube_api import ConflictError, KubeUnavailableError, ObjectNotFoundError
from gpudock.adapters.user_trees import remove_tree
from gpudock.agent.migration_context import (
    CAS_TRIES,
    MIGRATED_PREFIX,
    MigrationContext,
    MigrationError,
    add_finalizer,
)
from gpudock.api import gpu_replica_set, ownership, sized_volume
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.reasons import Reason
from gpudock.core.observed import ResourceKey
from gpudock.errors import SpecError

SVOL = sized_volume.PLURAL
STATUS_FIELD = "sizedVolumes"  # on the GpuMigration: [{name, uid}] that move with it
INCOMING = ".gpudock-incoming"  # inside the target volume: the tree being built
PRECOPY = ".gpudock-precopy"  # inside the target volume: the first pass


@dataclass(frozen=True)
class MovingVolume:
    name: str
    uid: str
    pinned: str = ""  # its spec.nodeName

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "uid": self.uid}

    @classmethod
    def parse(cls, raw: Any) -> MovingVolume:
        return cls(str(raw["name"]), str(raw["uid"]))

    @property
    def tree(self) -> str:
        """The name its files travel under."""
        return f"{MIGRATED_PREFIX}svol-{self.uid}"


def listed(status: dict[str, Any]) -> list[MovingVolume]:
    """The volumes a GpuMigration's status says move with it."""
    return [MovingVolume.parse(v) for v in status.get(STATUS_FIELD) or ()]


# ---------------------------------------------------------------------- the source
def exclusive(agent: MigrationContext, namespace: str, name: str,
              spec: GpuReplicaSetSpec) -> list[MovingVolume]:
    """The SizedVolumes the instance mounts, each checked movable: held here, not
    being deleted, mounted by no other GpuReplicaSet (MigrationError else)."""
    wanted = sorted({m.volume for m in spec.mounts if m.volume is not None})
    if not wanted:
        return []
    node = agent.settings.node_name
    others: dict[str, list[str]] = {}
    for body in agent.kube.list_objects(gpu_replica_set.PLURAL, (namespace,)):
        if body["metadata"]["name"] == name:
            continue
        with contextlib.suppress(SpecError):
            for mount in GpuReplicaSetSpec.parse(body.get("spec") or {}).mounts:
                if mount.volume in wanted:
                    others.setdefault(mount.volume, []).append(body["metadata"]["name"])
    moving = []
    for volume in wanted:
        if volume in others:
            raise MigrationError(Reason.NOT_MIGRATABLE, (
                f"SizedVolume {volume} is mounted by GpuReplicaSet "
                f"{', '.join(sorted(others[volume]))} too: a shared volume is not moved"))
        try:
            body = agent.kube.get(SVOL, namespace, volume)
        except ObjectNotFoundError as exc:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"SizedVolume {volume} it mounts "
                                 "does not exist") from exc
        meta = body["metadata"]
        held = ownership.holds((body.get("status") or {}).get("nodeName"),
                               meta.get("finalizers") or (), node)
        if not held or meta.get("deletionTimestamp"):
            raise MigrationError(Reason.NOT_MIGRATABLE, f"SizedVolume {volume} is not held "
                                 f"by node {node} (or it is being deleted)")
        if agent.volumes.files(namespace, volume, str(meta["uid"])) is None:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"SizedVolume {volume} is not "
                                 f"there on node {node} (see its status)")
        moving.append(MovingVolume(volume, str(meta["uid"]),
                                   str((body.get("spec") or {}).get("nodeName") or "")))
    return moving


def check_pins(volumes: list[MovingVolume], target: str) -> None:
    """A volume pinned by its spec.nodeName goes only where it is pinned."""
    for volume in volumes:
        if volume.pinned and volume.pinned != target:
            raise MigrationError(Reason.NOT_MIGRATABLE, (
                f"SizedVolume {volume.name} is pinned to node {volume.pinned} by its "
                f"spec.nodeName; set it to {target} (or unset it) to move it with the "
                "instance"))


def source_trees(agent: MigrationContext, namespace: str,
                 volumes: list[MovingVolume]) -> dict[str, Path]:
    """Each volume's files here, by the name they travel under."""
    found = {}
    for volume in volumes:
        files = agent.volumes.files(namespace, volume.name, volume.uid)
        if files is None:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"the files of SizedVolume "
                                 f"{volume.name} cannot be reached")
        found[volume.tree] = files
    return found


def bind(agent: MigrationContext, namespace: str, volumes: list[MovingVolume],
         target: str) -> None:
    """Each volume's binding and the target's finalizer (the target's agent serves
    it from then on); done again after a crash, each step looked at first."""
    for volume in volumes:
        agent.volumes.start_moving(ResourceKey(namespace, volume.name))
        for _ in range(CAS_TRIES):
            body = _get(agent, namespace, volume)
            if body is None:
                break  # gone, or another incarnation: nothing of it moves
            if (body.get("status") or {}).get("nodeName") == target:
                with contextlib.suppress(ObjectNotFoundError):
                    add_finalizer(agent.kube, SVOL, namespace, volume.name,
                                  ownership.node_finalizer(target), volume.uid)
                break
            with contextlib.suppress(ConflictError):
                agent.kube.patch_status_at(SVOL, namespace, volume.name, {"nodeName": target},
                                           str(body["metadata"]["resourceVersion"]))
        else:
            raise KubeUnavailableError(f"SizedVolume {volume.name}: it kept changing")


def hand_over(agent: MigrationContext, namespace: str,
              volumes: list[MovingVolume]) -> None:
    """The target serves the instance: this node's copy of each volume goes, then its
    finalizer."""
    node = agent.settings.node_name
    for volume in volumes:
        users = agent.volumes.hand_over(namespace, volume.name, volume.uid)
        if users:
            raise KubeUnavailableError(f"SizedVolume {volume.name} is still mounted here by "
                                       f"{', '.join(users)}; tried again later")
        with contextlib.suppress(ObjectNotFoundError):
            agent.kube.remove_finalizer(SVOL, namespace, volume.name,
                                        ownership.node_finalizer(node))


def release(agent: MigrationContext, namespace: str, volumes: list[MovingVolume]) -> None:
    """The migration ended before Switching: the volumes are served here again."""
    for volume in volumes:
        agent.volumes.stop_moving(ResourceKey(namespace, volume.name))


def _get(agent: MigrationContext, namespace: str,
         volume: MovingVolume) -> dict[str, Any] | None:
    try:
        body = agent.kube.get(SVOL, namespace, volume.name)
    except ObjectNotFoundError:
        return None
    return body if str(body["metadata"]["uid"]) == volume.uid else None


# ---------------------------------------------------------------------- the target
def make_here(agent: MigrationContext, namespace: str,
              volumes: list[MovingVolume]) -> dict[str, Path]:
    """A fresh volume for each, on this node's backend at its spec's size (what an
    earlier failed move left goes first); by tree name, the directory each one's
    files are built in. UserError when one cannot be made (no room: the reason the
    volume's own reconcile gives)."""
    node = agent.settings.node_name
    made = {}
    for volume in volumes:
        body = _get(agent, namespace, volume)
        if body is None:
            raise MigrationError(Reason.TRANSFER_FAILED, f"SizedVolume {volume.name} "
                                 "is gone")
        if ownership.held_here(body, node):
            raise MigrationError(Reason.TRANSFER_FAILED, f"SizedVolume {volume.name} is "
                                 f"held by node {node} already")
        made[volume.tree] = agent.volumes.make_arriving(body)
    return made


@dataclass(frozen=True)
class Staging:
    """Inside a target volume (its own filesystem, so a move is a rename): where the
    first pass is built, and where the checked final tree is."""

    precopy: Path
    incoming: Path


def staging(files: Path) -> Staging:
    return Staging(precopy=files / PRECOPY, incoming=files / INCOMING)


def place(files: Path, checked: Path) -> None:
    """The ``checked`` tree (the final pass, its manifest matched) becomes the
    volume's content: each top entry moved into the volume's root, what a fresh
    filesystem made there (an empty lost+found) replaced; the root gets the source
    root's owner, mode, xattrs and times. The first pass's leftovers go after."""
    if checked.parent != files or checked.name != INCOMING:
        raise OSError(f"{checked} is not the checked tree of the volume at {files}")
    incoming = checked
    info = os.stat(incoming)  # before its entries leave it (that changes its times)
    attrs = tree_copy.xattrs(str(incoming))
    for name in sorted(os.listdir(incoming)):
        there = files / name
        if there.is_dir() and not there.is_symlink():
            there.rmdir()  # lost+found of the new filesystem: empty
        elif there.exists() or there.is_symlink():
            raise OSError(f"{there} exists in a volume made for the move")
        os.rename(incoming / name, there)
    fd = os.open(files, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tree_copy.set_metadata(fd, -1, "", info, attrs)
    finally:
        os.close(fd)
    os.rmdir(incoming)
    remove_tree(staging(files).precopy, ignore_errors=True)
    os.utime(files, ns=(info.st_atime_ns, info.st_mtime_ns))


def discard_here(agent: MigrationContext, namespace: str,
                 volumes: list[MovingVolume]) -> None:
    """What a failed or cancelled move made here, unless the volume is held here by
    now (then it is this node's volume)."""
    node = agent.settings.node_name
    for volume in volumes:
        body = _get(agent, namespace, volume)
        if body is not None and ownership.held_here(body, node):
            continue
        agent.volumes.discard_arrival(namespace, volume.name, volume.uid)
