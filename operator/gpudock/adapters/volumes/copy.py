"""The copy volume backend: plain Docker volumes (local driver), for hosts whose
volumes cannot be limited or resized in place. The volume's size is kept as a label
of its Docker volume (a label never changes, and neither does the size of one
volume: a resize makes the next one, ``<namespace>_<name>-<revision>``, copies
everything into it and checks the copy; see tree_copy.py). Used space is what the
files hold on disk. The size is enforced only at resize (the data must fit); a plain
Docker volume has no hard limit of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpudock.adapters import tree_copy
from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.user_trees import tree_bytes
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.ports import ContainerRuntime
from gpudock.core.volumes import BackendState
from gpudock.errors import UserError

SIZE_LABEL = "gpudock.dev/size-bytes"
OWNER = (labels.NAMESPACE, labels.NAME, labels.UID)  # carried to a resize's copy


class CopyBackend:
    name = "copy"
    online_shrink = False
    moves_on_resize = True

    def __init__(self, root: Path, docker: ContainerRuntime) -> None:
        self.root = root  # not used: Docker keeps plain volumes under its data root
        self._docker = docker

    def check(self) -> None:
        """Any Docker engine will do."""

    def docker_options(self, volume: str) -> dict[str, str] | None:
        return None

    def directory(self, volume: str) -> Path | None:
        info = self._docker.volume_info(volume)
        return Path(info["Mountpoint"]) if info and info.get("Mountpoint") else None

    def data_dir(self, volume: str) -> Path | None:
        directory = self.directory(volume)
        return directory if directory is not None and directory.is_dir() else None

    def free_bytes(self) -> int:
        free = self._docker.free_bytes()
        return free if free is not None else 2**62  # unseen: Docker will say when full

    def state(self, volume: str) -> BackendState | None:
        info = self._docker.volume_info(volume)
        if info is None:
            return None
        size = int((info.get("Labels") or {}).get(SIZE_LABEL) or 0)
        directory = Path(str(info.get("Mountpoint") or ""))
        try:  # blocks, not apparent sizes; a tree in use may change under the walk
            used = tree_bytes(directory) if directory.is_dir() else 0
        except OSError as exc:
            raise VolumeToolError(f"measuring Docker volume {volume} ({directory}): "
                                  f"{exc}") from exc
        return BackendState(size_bytes=size, attached=True, capacity_bytes=size,
                            used_bytes=used)

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        self._docker.create_volume(volume, {}, {**(owner or {}), SIZE_LABEL: str(size_bytes)})

    def attach(self, volume: str) -> None:
        """Docker's volumes are there whenever Docker is."""

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        return False

    def minimum_bytes(self, volume: str) -> int:
        state = self.state(volume)
        return state.used_bytes if state else 0

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        raise UserError(Reason.VOLUME_NOT_RESIZABLE, "the copy backend resizes by moving to a "
                        "new volume, never in place")

    def copy(self, source: str, target: str, size_bytes: int) -> None:
        """Make ``target`` afresh (one a cut-short copy left, perhaps for another
        size, is removed first: it was never the volume), copy ``source`` into it and
        check the copy; ``source`` is never written."""
        if source == target:
            raise VolumeToolError(f"refusing to copy volume {source} onto itself")
        self.delete(target)
        labels = (self._docker.volume_info(source) or {}).get("Labels") or {}
        self.create(target, size_bytes, {k: v for k, v in labels.items() if k in OWNER})
        into, out_of = self.directory(target), self.directory(source)
        if into is None or out_of is None:
            raise VolumeToolError(f"Docker volume {source} or {target} has no directory")
        tree_copy.copy_tree(out_of, into)
        tree_copy.verify_copy(out_of, into)

    def delete(self, volume: str) -> None:
        self._docker.remove_volume(volume)
