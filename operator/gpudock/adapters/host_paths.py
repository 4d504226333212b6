"""The node's hostPath policy, checked against the real filesystem.

A hostPath in a spec is only a string; what Docker mounts is whatever that string
resolves to on the host when the container is created. A tenant who can write into an
allowed directory can plant a symlink there (``ok/hostroot -> /``), so the check must
resolve every symlink and ``..`` first and then decide on the resolved path:

* the resolved path must be an allowed root or lie under one (roots are resolved too);
* it must not cross a mount point below that root (a bind mount of something else);
* under a read-only root the mount must be ``readOnly: true``;
* it must exist (Docker would refuse it only after the old container was stopped).

A root may be a template, ``/mynfs/{namespace}``: for a resource it is that
resource's namespace's root only (api/paths.py expands it), so one tenant's
directory is never under another tenant's root, and a symlink a tenant plants to a
neighbour's directory resolves outside its own. A root without the placeholder is
shared by every namespace.

The resolved path is what the container config gives Docker, so a symlink swapped in
after the check cannot redirect the mount to the place the symlink pointed at before.
What remains (a directory on the resolved path replaced by a symlink between this check
and runc's mount, a window of milliseconds) is caught after start by
:func:`identity` (docs/security.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from gpudock.adapters.filesystem_info import mounts
from gpudock.api.paths import expand_roots, is_under
from gpudock.api.reasons import Reason
from gpudock.errors import UserError


@dataclass(frozen=True)
class HostPathPolicy:
    """The node's roots as configured: shared ones and per-namespace templates."""

    allowed_roots: tuple[str, ...] = ()
    read_only_roots: tuple[str, ...] = ()  # also allowed, but only for readOnly mounts

    def roots(self, namespace: str) -> tuple[str, ...]:
        """Every root a resource of ``namespace`` may mount under (both kinds)."""
        return tuple(root for root, _ in self._roots(namespace))

    def _roots(self, namespace: str) -> list[tuple[str, bool]]:
        return [(r, False) for r in expand_roots(self.allowed_roots, namespace)] + \
            [(r, True) for r in expand_roots(self.read_only_roots, namespace)]

    def resolve(self, path: str, *, namespace: str, read_only: bool) -> str:
        """The real path Docker should mount for ``path`` in a resource of
        ``namespace``; raises UserError."""
        roots = self._roots(namespace)
        if not any(is_under(path, root) for root, _ in roots):
            listed = ", ".join(r for r, _ in roots) or "none"
            raise UserError(Reason.HOST_PATH_NOT_ALLOWED, f"hostPath {path} is not under an "
                            f"allowed root (allowed: {listed})")
        real = os.path.realpath(path)
        inside = [(os.path.realpath(root), ro) for root, ro in roots
                  if is_under(real, os.path.realpath(root))]
        if not inside:  # said before "missing": no probing of the host's tree
            raise UserError(Reason.HOST_PATH_NOT_ALLOWED, f"hostPath {path} leads outside every "
                            "allowed root (through a symlink or '..')")
        if not os.path.lexists(real):
            raise UserError(Reason.HOST_PATH_MISSING, f"hostPath {path} does not exist on the "
                            "node; create it there first")
        # The most specific root decides (a read-only root inside a writable one).
        root, root_read_only = max(inside, key=lambda item: len(item[0]))
        crossed = _mount_points_between(root, real)
        if crossed:
            raise UserError(Reason.HOST_PATH_CROSSES_MOUNT, f"hostPath {path} ({real}) crosses "
                            f"the mount point {crossed[0]} below the allowed root {root}; "
                            "list that mount as an allowed root to permit it")
        if root_read_only and not read_only:
            raise UserError(Reason.HOST_PATH_READ_ONLY, f"hostPath {path} is under the read-only "
                            f"root {root}: set readOnly: true")
        return real


def identity(path: str) -> tuple[int, int]:
    """(device, inode) of ``path`` without following a final symlink."""
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def _mount_points_between(root: str, path: str) -> list[str]:
    """Mount points strictly below ``root`` on the way to ``path`` (inclusive)."""
    return [point for point in _mount_points()
            if point != root and is_under(point, root) and is_under(path, point)]


def _mount_points() -> Sequence[str]:
    return [m.mount_point for m in mounts()]
