"""A SizedVolume backend that resizes in place, as loopfile, btrfs and xfs-quota do
(the copy backend moves instead): it grows online, shrinks offline with the volume's
users stopped, and is detached by a host restart. Its data is the Docker volume's
directory in the fake Docker; its sizes and attachments are kept here.

Self-contained: it implements the VolumeBackend protocol of adapters/volumes/base.py
by shape, importing nothing of the real backends."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpudock.adapters.volumes.base import ResizesInPlace
from gpudock.core.volumes import BackendState
from tests.unit.fakes.docker import InMemoryDocker


@dataclass(frozen=True)
class Resize:
    volume: str
    size_bytes: int
    online: bool
    running_users: tuple[str, ...]  # the containers that mount it and ran meanwhile


def _used_bytes(directory: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(directory):
        for name in (".", *files):
            total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


class InPlaceVolumeBackend(ResizesInPlace):
    name = "loopfile"
    online_shrink = False

    def __init__(self, root: Path, docker: InMemoryDocker) -> None:
        self.root = root
        self._docker = docker
        self.sizes: dict[str, int] = {}
        self.attached: set[str] = set()
        self.resizes: list[Resize] = []

    def detach_all(self) -> None:
        """A host restart: nothing is attached (mounted) until the agent attaches it."""
        self.attached.clear()

    def check(self) -> None:
        """Any root will do."""

    def free_bytes(self) -> int:
        return 2**40

    def state(self, volume: str) -> BackendState | None:
        if volume not in self.sizes:
            return None
        size = self.sizes[volume]
        if volume not in self.attached:
            return BackendState(size_bytes=size, attached=False)
        info = self._docker.volume_info(volume)
        used = _used_bytes(str(info["Mountpoint"])) if info else 0
        return BackendState(size_bytes=size, attached=True, capacity_bytes=size,
                            used_bytes=used)

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        self.sizes[volume] = size_bytes
        self.attached.add(volume)

    def attach(self, volume: str) -> None:
        self.attached.add(volume)

    def docker_options(self, volume: str) -> dict[str, str] | None:
        return None  # its Docker volume holds the data

    def data_dir(self, volume: str) -> Path | None:
        info = self._docker.volume_info(volume) if volume in self.attached else None
        return Path(str(info["Mountpoint"])) if info else None

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        self._resize(volume, size_bytes, online=True)
        return True

    def minimum_bytes(self, volume: str) -> int:
        state = self.state(volume)
        return state.used_bytes if state else 0

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        self._resize(volume, size_bytes, online=False)

    def delete(self, volume: str) -> None:
        self.sizes.pop(volume, None)
        self.attached.discard(volume)
        self._docker.remove_volume(volume)

    def _resize(self, volume: str, size_bytes: int, *, online: bool) -> None:
        running = tuple(c.name for c in self._docker.containers.values() if c.running
                        and any(m.is_volume and m.source == volume for m in c.mounts))
        self.resizes.append(Resize(volume, size_bytes, online, running))
        self.sizes[volume] = size_bytes
