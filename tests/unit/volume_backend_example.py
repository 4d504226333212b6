"""A volume backend that lives only in the tests: what a new backend has to be, one
module that imports adapters/volumes/base.py (and no other backend) and one line in
the registry's table (test_volume_backend_seam.py adds that line).

A volume is a directory under the root, its size a number kept beside it (nothing
enforces it); the directory is made by attach(), so a new volume starts detached.
DirectoryBackend resizes in place; MovingDirectoryBackend resizes by a move into a
new volume, as the copy backend does. Each notes the calls it gets.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.user_trees import tree_bytes
from gpudock.adapters.volumes.base import ResizesInPlace, bind_options
from gpudock.core.ports import ContainerRuntime
from gpudock.core.volumes import BackendState


class DirectoryBackend(ResizesInPlace):
    name = "example"
    online_shrink = True

    def __init__(self, root: Path, docker: ContainerRuntime) -> None:
        self.root = root
        self._docker = docker
        self.calls: list[tuple[str, str]] = []  # (method, volume)

    def path(self, volume: str) -> Path:
        return self.root / volume

    def _size_file(self, volume: str) -> Path:
        return self.root / f"{volume}.size"

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return 2**40

    def state(self, volume: str) -> BackendState | None:
        if not self._size_file(volume).exists():
            return None
        size = int(self._size_file(volume).read_text())
        attached = self.path(volume).is_dir()
        return BackendState(size_bytes=size, attached=attached, capacity_bytes=size,
                            used_bytes=tree_bytes(self.path(volume)) if attached else 0)

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        self.calls.append(("create", volume))
        self._size_file(volume).write_text(str(size_bytes))

    def attach(self, volume: str) -> None:
        self.calls.append(("attach", volume))
        self.path(volume).mkdir(exist_ok=True)

    def docker_options(self, volume: str) -> dict[str, str] | None:
        return bind_options(self.path(volume))

    def data_dir(self, volume: str) -> Path | None:
        return self.path(volume) if self.path(volume).is_dir() else None

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        self.calls.append(("resize_online", volume))
        self._size_file(volume).write_text(str(size_bytes))
        return True

    def minimum_bytes(self, volume: str) -> int:
        self.calls.append(("minimum_bytes", volume))
        return tree_bytes(self.path(volume))

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        self.calls.append(("resize_offline", volume))
        self._size_file(volume).write_text(str(size_bytes))

    def delete(self, volume: str) -> None:
        self.calls.append(("delete", volume))
        shutil.rmtree(self.path(volume), ignore_errors=True)
        self._size_file(volume).unlink(missing_ok=True)


class MovingDirectoryBackend(DirectoryBackend):
    name = "example-moving"
    online_shrink = False
    moves_on_resize = True

    def copy(self, source: str, target: str, size_bytes: int) -> None:
        self.calls.append(("copy", target))
        if source == target:
            raise VolumeToolError(f"refusing to copy volume {source} onto itself")
        DirectoryBackend.delete(self, target)
        self.create(target, size_bytes)
        shutil.copytree(self.path(source), self.path(target), symlinks=True)

    def delete(self, volume: str) -> None:
        super().delete(volume)
        self._docker.remove_volume(volume)  # the protocol: a mover's delete takes it
