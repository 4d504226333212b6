"""What the node's filesystems are: the mount table (/proc/self/mountinfo, read in one
place, the kernel's octal escapes undone) and the free space under a path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gpudock.api.paths import is_under
from gpudock.api.reasons import Reason
from gpudock.errors import UserError

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str  # the device (a loop device for a loop mount)
    options: frozenset[str]  # the mount's and the filesystem's options together


def mounts(mountinfo: Path = MOUNTINFO) -> list[Mount]:
    """Every mount, in the kernel's order (a later one on the same point hides it)."""
    try:
        text = mountinfo.read_text()
    except OSError:  # pragma: no cover - every Linux has it
        return []
    found = []
    for line in text.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 6 or len(rest) < 2:
            continue
        options = set(fields[5].split(",")) | set(rest[2].split(",") if len(rest) > 2
                                                   else ())
        found.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1]),
                           frozenset(options)))
    return found


def mount_of(path: Path, mountinfo: Path = MOUNTINFO) -> Mount:
    """The mount a path lives on (the innermost one above its real path)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts(mountinfo):
        if is_under(real, mount.mount_point) and (
                best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    if best is None:
        raise UserError(Reason.VOLUME_ROOT_UNUSABLE, f"{path}: not on any mounted filesystem")
    return best


def free_bytes(path: Path | str) -> int:
    """The bytes an unprivileged writer can still put on the filesystem of ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def free_inodes(path: Path | str) -> int:
    """The files an unprivileged writer can still make on the filesystem of ``path``
    (a filesystem without an inode count, btrfs, says 0 of 0: then a large number)."""
    info = os.statvfs(path)
    return info.f_favail if info.f_files else 2**63


def _unescape(text: str) -> str:
    """Field text as the kernel writes it: spaces and the like as octal escapes."""
    return text.encode().decode("unicode_escape") if "\\" in text else text
