"""Copy a directory tree with everything a user's files carry, and prove it.

The copy is GNU cp's archive mode (owners, modes, times, xattrs, hard links,
symlinks) with sparse files kept sparse. The proof does not trust cp: both trees are
walked and compared entry by entry (type, owner, mode, size, time, content checksum,
symlink target, xattrs, which paths share an inode) and a copy that is not exact is
an error, so nothing is removed on the strength of a bad copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import tempfile
from pathlib import Path

from gpudock.adapters.host_tools import VolumeToolError, run_tool

CHUNK = 1 << 20


def copy_tree(source: Path, target: Path, share_with: Path | None = None) -> None:
    """Copy what ``source`` holds into the empty directory ``target`` (and the
    source directory's own owner, mode and times onto it). Device nodes come along
    (overlayfs's whiteouts are character devices 0/0), and a file's blocks are shared
    instead of copied where the filesystem can (a reflink on XFS or btrfs).

    With ``share_with`` (a tree nothing writes to any more) on a filesystem without
    reflinks, every file it holds with the same bytes (``--checksum``: a file
    rewritten with its old size and time is not taken for unchanged), mode, owner and
    xattrs is hard-linked from there instead of copied (rsync's ``--link-dest``).
    Where reflinks work the plain copy already shares every block, changed or not,
    without reading the files, so it is used instead."""
    if share_with is None or shares_blocks(target.parent):
        run_tool("cp", "-a", "--reflink=auto", "--sparse=always", f"{source}/.",
                 f"{target}/")
        return
    run_tool("rsync", "-aHAXS", "--checksum", "--numeric-ids",
             f"--link-dest={share_with.resolve()}", f"{source}/", f"{target}/")


_SHARING: dict[int, bool] = {}  # by st_dev: asked once per filesystem


def shares_blocks(directory: Path) -> bool:
    """True when a copy on the filesystem of ``directory`` can share the source's
    blocks (``cp --reflink=always`` works there: XFS with reflink, btrfs)."""
    device = directory.stat().st_dev
    if device not in _SHARING:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".gpudock-reflink-") as probe:
            first = Path(probe, "first")
            first.write_bytes(b"probe")
            copied = subprocess.run(["cp", "--reflink=always", str(first),
                                     str(Path(probe, "second"))], capture_output=True)
        _SHARING[device] = copied.returncode == 0
    return _SHARING[device]


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    with contextlib.suppress(OSError):
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in names))
    return ()


def manifest(root: Path, content: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (and ``.`` itself) with what a copy must keep;
    hard links within the tree are named by the first path of their inode (a link to
    a file outside it, as a saved copy that shares unchanged files with an earlier one
    has, does not count), sparse files by whether they hold fewer blocks than their
    size, device nodes by their numbers. Without ``content`` files are compared by
    size only, not read (a check whose cost follows the number of files, not their
    bytes)."""
    entries: dict[str, tuple[object, ...]] = {}
    inode_paths: dict[tuple[int, int], list[str]] = {}
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in (".", *sorted(dirs + files)) if top == str(root) else sorted(
                dirs + files):
            path = os.path.normpath(os.path.join(top, name))
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            if kind == stat.S_IFREG and info.st_nlink > 1:
                inode_paths.setdefault((info.st_dev, info.st_ino), []).append(relative)
            body: object = None
            if kind == stat.S_IFREG and content:
                body = _digest(path)
            elif kind == stat.S_IFLNK:
                body = os.readlink(path)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                body = info.st_rdev
            sparse = kind == stat.S_IFREG and info.st_blocks * 512 < info.st_size
            when = None if kind in (stat.S_IFLNK, stat.S_IFDIR) else info.st_mtime_ns
            entries[relative] = (kind, stat.S_IMODE(info.st_mode), info.st_uid,
                                 info.st_gid, info.st_size if kind == stat.S_IFREG else 0,
                                 when, body, None, sparse, _xattrs(path))
    for paths in inode_paths.values():
        if len(paths) > 1:
            for relative in paths:
                entry = entries[relative]
                entries[relative] = (*entry[:7], paths[0], *entry[8:])
    return entries


def verify_copy(source: Path, target: Path, content: bool = True) -> None:
    """Raises VolumeToolError naming the first entry that differs."""
    want, have = manifest(source, content), manifest(target, content)
    for relative in sorted(set(want) | set(have)):
        if want.get(relative) != have.get(relative):
            raise VolumeToolError(
                f"copy of {source} to {target} differs at {relative!r}: "
                f"source {want.get(relative)!r}, copy {have.get(relative)!r}; "
                "the source was kept")
