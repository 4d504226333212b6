"""Directory trees a tenant wrote (a container's writable layer, a saved copy of one,
a volume's files): walked, measured and removed without recursion and without ever
naming more than one entry at a time.

A tenant decides a tree's shape. Python stops recursing near 1000 levels (os.walk
and shutil.rmtree recurse in 3.11), and a path name stops at PATH_MAX (4096 bytes),
where cp, rsync and tar give up too; a tree 5000 directories deep has neither limit.
So a walk here holds one open directory per tree and moves through it by single
names: down by a name (O_NOFOLLOW, so never along a symlink) and up by "..", each
move checked against the (device, inode) it expects. A directory swapped underneath
(a tree some process still writes) is an OSError (ESTALE), never a walk elsewhere.

Sizes are what a tree holds on disk, its blocks (``st_blocks * 512``), never the
files' apparent sizes: a sparse terabyte takes nothing and counts for nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# A directory opened for a walk: never through a symlink, never inherited by a tool.
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SHOWN_PATH = 240  # characters of a (deep) path a message shows
# What a directory entry can have become since it was listed (in a tree in use).
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _changed(what: str) -> OSError:
    """A directory was replaced while a walk was in it (the tree is not at rest)."""
    return OSError(errno.ESTALE, what)


def identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


@dataclass(frozen=True, eq=False)
class Dir:
    """A directory on a walk's path: its name and the directory holding it (the
    walk's root has none). The chain names its place without a path string."""

    name: str
    parent: Dir | None = None

    def parts(self) -> list[str]:
        found: list[str] = []
        here: Dir | None = self
        while here is not None and here.parent is not None:
            found.append(here.name)
            here = here.parent
        return found[::-1]


def shown(parent: Dir, name: str) -> str:
    """A path for a message: the end of a deep one, with its depth."""
    parts = [*parent.parts(), name]
    path = "/".join(parts)
    if len(path) <= SHOWN_PATH:
        return path
    return f".../{path[-SHOWN_PATH:]} ({len(parts)} levels deep)"


@dataclass(frozen=True)
class Entry:
    """One entry of a tree: ``name`` in the open directory ``dir_fd`` (valid until
    the walk goes on), its lstat, and where it is. A directory's entries follow it,
    then a Leave of it."""

    name: str
    info: os.stat_result
    dir_fd: int
    parent: Dir


@dataclass(frozen=True)
class Leave:
    """A directory's entries are done; the walk is back in its parent (``dir_fd``),
    where it is named ``name``."""

    name: str
    info: os.stat_result
    dir_fd: int
    parent: Dir


class Cursor:
    """One open directory of a tree, moved down by name and up by "..", each move
    checked against the directory it should reach."""

    def __init__(self, root: Path | str) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._path = [identity(os.fstat(self.fd))]

    def down(self, name: str, expected: tuple[int, int] | None = None) -> None:
        """Into the directory ``name`` (raises OSError when it is none, or not the
        one ``expected``)."""
        fd = os.open(name, O_DIR, dir_fd=self.fd)
        found = identity(os.fstat(fd))
        if expected is not None and found != expected:
            os.close(fd)
            raise _changed(f"directory {name!r} was replaced during the walk")
        self.enter(fd)

    def enter(self, fd: int) -> None:
        """Into a directory opened here already (the cursor owns ``fd`` now)."""
        self._path.append(identity(os.fstat(fd)))
        os.close(self.fd)
        self.fd = fd

    def up(self) -> None:
        fd = os.open("..", O_DIR, dir_fd=self.fd)
        self._path.pop()
        if identity(os.fstat(fd)) != self._path[-1]:
            os.close(fd)
            raise _changed("a directory was moved during the walk")
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def walk(root: Path | str) -> Iterator[Entry | Leave]:
    """Every entry under ``root`` (not the root itself), depth first in name order,
    one open directory at a time. An entry that goes away meanwhile is skipped."""
    with Cursor(root) as cursor:
        here = Dir("")
        pending = [iter(_listing(cursor.fd))]
        entered: list[os.stat_result] = []
        while pending:
            name = next(pending[-1], None)
            if name is None:
                pending.pop()
                if not entered:
                    return
                info = entered.pop()
                cursor.up()
                left = here
                assert left.parent is not None  # only the root has none, and it is left last
                here = left.parent
                yield Leave(left.name, info, cursor.fd, here)
                continue
            try:
                info = os.stat(name, dir_fd=cursor.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield Entry(name, info, cursor.fd, here)
            if stat.S_ISDIR(info.st_mode):
                try:
                    cursor.down(name, identity(info))
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise
                    yield Leave(name, info, cursor.fd, here)  # gone (or a symlink) now
                    continue
                here = Dir(name, here)
                entered.append(info)
                pending.append(iter(_listing(cursor.fd)))


def _listing(fd: int) -> list[str]:
    """The names in an open directory, sorted; none once it was removed."""
    try:
        return sorted(os.listdir(fd))
    except FileNotFoundError:
        return []


def open_dir(root_fd: int, parts: list[str]) -> int:
    """Open the directory ``parts`` below the open directory ``root_fd`` (any depth:
    whole names at a time, each call well under PATH_MAX); the caller closes it."""
    fd = os.dup(root_fd)
    try:
        while parts:
            chunk: list[str] = []
            length = 0
            while parts and length + len(parts[0]) < 3000:
                length += len(parts[0]) + 1
                chunk.append(parts.pop(0))
            if not chunk:  # one name longer than a chunk cannot be; be safe
                chunk.append(parts.pop(0))
            nxt = os.open("/".join(chunk), O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def tree_bytes(root: Path | str, attempts: int = 3) -> int:
    """The bytes a directory tree holds on disk (what ``du`` counts: blocks, hard
    links once), whatever the files' apparent sizes. A tree changed under the walk
    (a volume in use) is measured again."""
    return tree_usage(root, attempts)[0]


def tree_usage(root: Path | str, attempts: int = 3) -> tuple[int, int]:
    """What a directory tree holds on disk: its bytes (as tree_bytes) and its inodes
    (every entry, the root included, hard links once): what a copy of it takes."""
    for attempt in range(attempts):
        try:
            return _usage_under(root)
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def tree_entries(root: Path | str) -> int:
    """How many entries a directory tree holds (each file a commit writes takes an
    inode)."""
    return sum(1 for step in walk(root) if isinstance(step, Entry))


def _usage_under(root: Path | str) -> tuple[int, int]:
    seen: set[tuple[int, int]] = set()
    total, inodes = os.lstat(root).st_blocks * 512, 1
    for step in walk(root):
        if isinstance(step, Entry):
            info = step.info
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if identity(info) in seen:
                    continue
                seen.add(identity(info))
            total += info.st_blocks * 512
            inodes += 1
    return total, inodes


def remove_tree(path: Path | str, ignore_errors: bool = False) -> None:
    """Remove ``path`` and everything under it, never following a symlink (one is
    removed, not its target); gone already is fine. With ``ignore_errors`` what
    cannot be removed is left and the rest removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    quiet = contextlib.suppress(OSError) if ignore_errors else contextlib.nullcontext()
    if not stat.S_ISDIR(info.st_mode):
        with quiet:
            os.unlink(path)
        return
    with quiet:
        for step in walk(path):
            if isinstance(step, Leave):
                _remove_entry(step, True, ignore_errors)
            elif not stat.S_ISDIR(step.info.st_mode):
                _remove_entry(step, False, ignore_errors)
        os.rmdir(path)


def _remove_entry(step: Entry | Leave, directory: bool, ignore_errors: bool) -> None:
    try:
        if directory:
            os.rmdir(step.name, dir_fd=step.dir_fd)
        else:
            os.unlink(step.name, dir_fd=step.dir_fd)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise
