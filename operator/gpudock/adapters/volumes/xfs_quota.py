"""The xfs-quota volume backend: gpu-docker-api's way. Docker's local driver makes the
volume with its ``size`` option, which Docker turns into an XFS project quota on the
volume's directory; that needs Docker's data root (--volume-root names its volumes
directory, /var/lib/docker/volumes by default) on XFS mounted with project quota
(``prjquota``/``pquota``). A resize changes the project's hard block limit with
xfs_quota in place: no copy, no consumer stopped (the original made a new, empty
volume instead).

Host set-up (docs/sized-volumes.md): XFS for /var/lib/docker with ``pquota`` in its
mount options (for the root filesystem, ``rootflags=pquota`` on the kernel command
line). The agent refuses at start when the root is not XFS with project quota.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from gpudock.adapters.filesystem_info import free_bytes, mount_of
from gpudock.adapters.host_tools import VolumeToolError, run_tool
from gpudock.adapters.volumes.base import ResizesInPlace
from gpudock.api.reasons import Reason
from gpudock.core.ports import ContainerRuntime
from gpudock.core.volumes import BackendState
from gpudock.errors import UserError

PROJECT_QUOTA = frozenset({"prjquota", "pquota", "pqnoenforce"})
KIB = 1024


class XfsQuotaBackend(ResizesInPlace):
    name = "xfs-quota"
    online_shrink = True

    def __init__(self, root: Path, docker: ContainerRuntime,
                 mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
        self.root = root
        self._docker = docker
        self._mountinfo = mountinfo

    def _mount(self) -> str:
        return mount_of(self.root, self._mountinfo).mount_point

    def check(self) -> None:
        found = mount_of(self.root, self._mountinfo)
        if found.fstype != "xfs" or not found.options & PROJECT_QUOTA:
            what = found.fstype if found.fstype != "xfs" else "XFS without project quota"
            raise UserError(Reason.VOLUME_ROOT_UNUSABLE, f"--volume-root {self.root} is on {what} "
                            f"({found.mount_point}); the xfs-quota backend needs Docker's "
                            "volumes on XFS mounted with prjquota (see docs/sized-volumes.md)"
                            " or another --volume-backend")

    def docker_options(self, volume: str) -> dict[str, str] | None:
        return None  # the backend's volume is the Docker volume

    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def _directory(self, volume: str) -> str | None:
        info = self._docker.volume_info(volume)
        return str(info["Mountpoint"]) if info and info.get("Mountpoint") else None

    def data_dir(self, volume: str) -> Path | None:
        directory = self._directory(volume)
        return Path(directory) if directory and Path(directory).is_dir() else None

    def _project(self, directory: str) -> int:
        out = run_tool("xfs_io", "-c", "lsproj", directory)
        found = re.search(r"projid\s*=\s*(\d+)", out)
        if found is None or int(found.group(1)) == 0:
            raise VolumeToolError(f"{directory} has no XFS project (was the volume made "
                                  "without the size option?)")
        return int(found.group(1))

    def _report(self, project: int) -> tuple[int, int]:
        """(used, hard limit) in bytes of the project."""
        out = run_tool("xfs_quota", "-x", "-c", "report -p -b -N -n", self._mount())
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] == f"#{project}":
                return int(fields[1]) * KIB, int(fields[3]) * KIB
        return 0, 0

    def state(self, volume: str) -> BackendState | None:
        directory = self._directory(volume)
        if directory is None:
            return None
        used, limit = self._report(self._project(directory))
        return BackendState(size_bytes=limit, attached=True, capacity_bytes=limit,
                            used_bytes=used)

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        self._docker.create_volume(volume, {"size": str(size_bytes)}, dict(owner or {}))

    def attach(self, volume: str) -> None:
        """Docker's volume directory is there whenever its filesystem is mounted."""

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        directory = self._directory(volume)
        if directory is None:
            raise VolumeToolError(f"Docker volume {volume} is gone")
        blocks = -(-size_bytes // KIB)
        run_tool("xfs_quota", "-x", "-c",
                 f"limit -p bhard={blocks}k {self._project(directory)}", self._mount())
        return True

    def minimum_bytes(self, volume: str) -> int:
        state = self.state(volume)
        return state.used_bytes if state else 0

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        self.resize_online(volume, size_bytes)

    def delete(self, volume: str) -> None:
        """Docker removes the volume and its project quota."""
        self._docker.remove_volume(volume)
