"""The seam every SizedVolume backend sits behind, the tools they share, and the one
table that maps a backend's name to its module (a fifth backend: one new module and
one line here).

A backend keeps volumes under its root and answers for one volume at a time, by the
volume's ID (which is also its Docker volume's name). Errors of the tools it runs are
VolumeToolErrors (transient: tried again); a change the backend cannot make to this
volume is a UserError (reported in the status, nothing changed).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.api.reasons import Reason
from gpudock.core.volumes import BackendState
from gpudock.errors import TransientError, UserError

BACKEND_NAMES = ("loopfile", "btrfs", "xfs-quota", "copy")


class VolumeToolError(TransientError):
    reason = Reason.VOLUME_BACKEND_FAILED


def run_tool(*argv: str, timeout: float = 600, ok: tuple[int, ...] = (0,)) -> str:
    """Run a storage tool; its output, or VolumeToolError with what it said. The tool
    dies with the agent (as it would with the agent's pod): a tool left running by a
    killed agent would race the restarted agent's recovery of the same volume."""
    try:
        done = subprocess.run(["setpriv", "--pdeathsig", "KILL", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeToolError(f"{argv[0]}: {exc}") from exc
    if done.returncode not in ok:
        raise VolumeToolError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def bind_options(path: Path) -> dict[str, str]:
    """The local driver's options for a Docker volume that binds a host directory."""
    return {"type": "none", "o": "bind", "device": str(path)}


def tree_bytes(path: Path) -> int:
    """The bytes a directory tree holds on disk (what du counts; hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, _dirs, files in os.walk(path):
        for entry in (top, *(os.path.join(top, f) for f in files)):
            info = os.lstat(entry)
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


class VolumeBackend(Protocol):
    """What the reconciler asks of a backend (core/volumes.py decides when)."""

    name: str
    root: Path
    online_shrink: bool  # a shrink needs no consumer stopped (a limit change)
    moves_on_resize: bool  # a resize makes a new volume and copies into it

    def check(self) -> None:
        """Refuse (UserError) a root this backend cannot work on; idempotent set-up."""

    def free_bytes(self) -> int: ...

    def state(self, volume: str) -> BackendState | None:
        """None when the volume does not exist."""

    def create(self, volume: str, size_bytes: int) -> None: ...

    def attach(self, volume: str) -> None:
        """Make an existing volume usable again (after an agent or host restart)."""

    def docker_options(self, volume: str) -> dict[str, str] | None:
        """The local driver's options for the Docker volume that serves it; None when
        the backend's volume is a Docker volume already."""

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        """Resize with its users running; False when it has to be done offline."""

    def minimum_bytes(self, volume: str) -> int:
        """The smallest size that still holds what the volume has."""

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        """Resize with its users stopped."""

    def delete(self, volume: str) -> None:
        """Remove everything the backend made for it; gone already is fine."""


def open_volume_backend(name: str, root: Path,
                        docker: DockerRuntime) -> VolumeBackend:
    makers: dict[str, Callable[[], VolumeBackend]] = {
        "loopfile": lambda: _loopfile(root),
        "btrfs": lambda: _btrfs(root),
        "xfs-quota": lambda: _xfs_quota(root, docker),
        "copy": lambda: _copy(root, docker),
    }
    if name not in makers:
        raise UserError(Reason.UNKNOWN_VOLUME_BACKEND, f"volume backend {name!r}: not one of "
                        f"{', '.join(BACKEND_NAMES)}")
    return makers[name]()


def _loopfile(root: Path) -> VolumeBackend:
    from gpudock.adapters.loopfile_volumes import LoopfileBackend
    return LoopfileBackend(root)


def _btrfs(root: Path) -> VolumeBackend:
    from gpudock.adapters.btrfs_volumes import BtrfsBackend
    return BtrfsBackend(root)


def _xfs_quota(root: Path, docker: DockerRuntime) -> VolumeBackend:
    from gpudock.adapters.xfs_quota_volumes import XfsQuotaBackend
    return XfsQuotaBackend(root, docker)


def _copy(root: Path, docker: DockerRuntime) -> VolumeBackend:
    from gpudock.adapters.copy_volumes import CopyBackend
    return CopyBackend(root, docker)
