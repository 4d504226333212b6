"""The one table from a --volume-backend name to the backend that serves it, and the
only module that imports the backends (each imports base.py and nothing else of
this package, so nothing imports in a circle). A new backend is one module and one
line here; the flag's choices come from this table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpudock.adapters.volumes.base import VolumeBackend
from gpudock.adapters.volumes.btrfs import BtrfsBackend
from gpudock.adapters.volumes.copy import CopyBackend
from gpudock.adapters.volumes.loopfile import LoopfileBackend
from gpudock.adapters.volumes.xfs_quota import XfsQuotaBackend
from gpudock.api.reasons import Reason
from gpudock.core.ports import ContainerRuntime
from gpudock.errors import UserError

VolumeBackendFactory = Callable[[Path, ContainerRuntime], VolumeBackend]
"""Makes the backend for a volume root; the Docker engine for those that use it."""

BACKENDS: dict[str, VolumeBackendFactory] = {
    "loopfile": lambda root, _docker: LoopfileBackend(root),
    "btrfs": lambda root, _docker: BtrfsBackend(root),
    "xfs-quota": lambda root, docker: XfsQuotaBackend(root, docker),
    "copy": lambda root, docker: CopyBackend(root, docker),
}


def open_volume_backend(name: str, root: Path, docker: ContainerRuntime) -> VolumeBackend:
    """The backend ``name`` for volumes under ``root`` (not checked: see check())."""
    if name not in BACKENDS:
        raise UserError(Reason.UNKNOWN_VOLUME_BACKEND, f"volume backend {name!r}: not one of "
                        f"{', '.join(BACKENDS)}")
    return BACKENDS[name](root, docker)
