"""The seam every SizedVolume backend sits behind, and the tools they share.

A backend is one module of this package that imports this one (and no other
backend); registry.py maps its --volume-backend name to it, in one line. Nothing
else names a backend: the reconciler asks only what the VolumeBackend protocol
states.

A backend keeps volumes under its root and answers for one volume at a time, by the
volume's ID (which is also its Docker volume's name). Errors of the tools it runs are
VolumeToolErrors (transient: tried again); a change the backend cannot make to this
volume is a UserError (reported in the status, nothing changed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from gpudock.api.reasons import Reason
from gpudock.core.volumes import BackendState
from gpudock.errors import UserError


def bind_options(path: Path) -> dict[str, str]:
    """The local driver's options for a Docker volume that binds a host directory."""
    return {"type": "none", "o": "bind", "device": str(path)}


class VolumeBackend(Protocol):
    """What the reconciler asks of a backend (core/volumes.py decides when)."""

    name: str
    root: Path
    online_shrink: bool  # a shrink needs no consumer stopped (a limit change)
    # A resize makes a new volume and copies into it (copy()), never in place; False
    # for a backend that resizes in place (ResizesInPlace gives it that default).
    moves_on_resize: bool

    def check(self) -> None:
        """Refuse (UserError) a root this backend cannot work on; idempotent set-up."""

    def free_bytes(self) -> int: ...

    def state(self, volume: str) -> BackendState | None:
        """None when the volume does not exist."""

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        """Make the volume; a Docker volume the backend makes carries ``owner``'s
        labels (the SizedVolume's namespace, name and UID: core/labels.py)."""
        ...

    def attach(self, volume: str) -> tuple[Reason, str] | None:
        """Make an existing volume usable again (after an agent or host restart); a
        warning (reason, message) to post as an event, when there is one."""

    def docker_options(self, volume: str) -> dict[str, str] | None:
        """The local driver's options for the Docker volume that serves it; None when
        the backend's volume is a Docker volume already."""

    def data_dir(self, volume: str) -> Path | None:
        """The directory that holds the volume's files, as this process sees it (a
        migration reads and fills it); None when it is not there or not reachable."""

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        """Resize with its users running; False when it has to be done offline."""

    def minimum_bytes(self, volume: str) -> int:
        """The smallest size that still holds what the volume has."""

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        """Resize with its users stopped."""

    def copy(self, source: str, target: str, size_bytes: int) -> None:
        """The resize of a backend that moves_on_resize, with the users stopped: make
        ``target`` afresh at the new size (one a cut-short copy left is removed
        first: it was never the volume), copy ``source`` into it and check the copy;
        ``source`` is never written. Asked of no other backend (they refuse)."""

    def delete(self, volume: str) -> None:
        """Remove everything the backend made for it; gone already is fine. A backend
        that moves_on_resize removes the volume's Docker volume as well: an earlier
        volume nobody mounts any more is removed by this call alone."""


class ResizesInPlace:
    """The default of a backend that resizes its volumes in place: it never moves one
    to a new volume, and refuses copy() (the plan never asks it to)."""

    name: str
    moves_on_resize = False

    def copy(self, source: str, target: str, size_bytes: int) -> None:
        raise UserError(Reason.VOLUME_NOT_MOVABLE, f"the {self.name} backend resizes in place, "
                        "never by moving to a new volume")
