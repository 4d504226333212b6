"""The btrfs volume backend: one subvolume per volume under --volume-root (a btrfs
mount), its qgroup's referenced-bytes limit the hard size; a Docker volume binds it.

Grow and shrink are a limit change: no copy, no consumer stopped. A write past the
limit fails with "Disk quota exceeded"; df inside shows the whole filesystem (a
qgroup limit is not a filesystem size). The agent enables quotas itself when they
are off; a root that is not btrfs is refused at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpudock.adapters.filesystem_info import free_bytes, mount_of
from gpudock.adapters.host_tools import VolumeToolError, run_tool
from gpudock.adapters.volumes.base import ResizesInPlace, bind_options
from gpudock.api.reasons import Reason
from gpudock.core.volumes import BackendState
from gpudock.errors import UserError


class BtrfsBackend(ResizesInPlace):
    name = "btrfs"
    online_shrink = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        if not self.root.is_dir():
            raise UserError(Reason.VOLUME_ROOT_UNUSABLE, f"--volume-root {self.root} does not "
                            "exist; the btrfs backend needs a mounted btrfs filesystem there")
        fstype = mount_of(self.root).fstype
        if fstype != "btrfs":
            raise UserError(Reason.VOLUME_ROOT_UNUSABLE, f"--volume-root {self.root} is on "
                            f"{fstype}, not btrfs; mount a btrfs filesystem there or pick "
                            "another --volume-backend")
        try:
            run_tool("btrfs", "qgroup", "show", str(self.root))
        except VolumeToolError:  # quotas are off: turn them on (idempotent)
            run_tool("btrfs", "quota", "enable", str(self.root))

    def path(self, volume: str) -> Path:
        return self.root / volume

    def docker_options(self, volume: str) -> dict[str, str] | None:
        return bind_options(self.path(volume))

    def data_dir(self, volume: str) -> Path | None:
        return self.path(volume) if self.path(volume).is_dir() else None

    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def _subvolume_id(self, volume: str) -> int | None:
        path = self.path(volume)
        if not path.is_dir():
            return None
        out = run_tool("btrfs", "inspect-internal", "rootid", str(path))
        return int(out.strip())

    def _qgroup(self, subvolume_id: int) -> tuple[int, int | None]:
        """(referenced bytes, limit or None) of the subvolume's qgroup."""
        out = run_tool("btrfs", "qgroup", "show", "-re", "--raw", str(self.root))
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] == f"0/{subvolume_id}":
                limit = fields[3]
                return int(fields[1]), None if limit == "none" else int(limit)
        raise VolumeToolError(f"btrfs: no qgroup 0/{subvolume_id} under {self.root}")

    def state(self, volume: str) -> BackendState | None:
        ident = self._subvolume_id(volume)
        if ident is None:
            return None
        used, limit = self._qgroup(ident)
        size = limit or 0
        return BackendState(size_bytes=size, attached=True, capacity_bytes=size,
                            used_bytes=used)

    def _noted(self, volume: str) -> Path:
        """Where the subvolume's ID is kept, so its qgroup can be found after a
        delete cut short between removing the subvolume and its qgroup."""
        return self.root / ".gpudock-qgroups" / volume

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        path = self.path(volume)
        if not path.is_dir():
            run_tool("btrfs", "subvolume", "create", str(path))
        self._noted(volume).parent.mkdir(exist_ok=True)
        self._noted(volume).write_text(str(self._subvolume_id(volume)))
        run_tool("btrfs", "qgroup", "limit", str(size_bytes), str(path))

    def attach(self, volume: str) -> None:
        """A subvolume is there whenever its filesystem is mounted."""

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        run_tool("btrfs", "qgroup", "limit", str(size_bytes), str(self.path(volume)))
        return True

    def minimum_bytes(self, volume: str) -> int:
        """The bytes the subvolume references, counted after a sync (qgroups are
        updated when a transaction commits)."""
        ident = self._subvolume_id(volume)
        if ident is None:
            return 0
        run_tool("btrfs", "filesystem", "sync", str(self.root))
        return self._qgroup(ident)[0]

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        self.resize_online(volume, size_bytes)

    def delete(self, volume: str) -> None:
        """The subvolume, then its qgroup once btrfs has cleaned the subvolume up
        (until then the qgroup is busy)."""
        ident = self._subvolume_id(volume)
        if ident is not None:
            run_tool("btrfs", "subvolume", "delete", "--commit-after",
                     str(self.path(volume)))
        elif self._noted(volume).exists():
            ident = int(self._noted(volume).read_text())
        else:
            return
        run_tool("btrfs", "subvolume", "sync", str(self.root), str(ident))
        try:
            run_tool("btrfs", "qgroup", "destroy", f"0/{ident}", str(self.root))
        except VolumeToolError as exc:
            if "No such file" not in str(exc):  # destroyed before a crash: fine
                raise
        self._noted(volume).unlink(missing_ok=True)
