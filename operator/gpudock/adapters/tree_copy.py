"""Copy a directory tree with everything a user's files carry, and prove it.

The copy keeps owners, modes, times, xattrs (every namespace the agent can read:
``trusted.overlay.*`` of overlayfs too), hard links, symlinks, device nodes, FIFOs
and holes: a file's data ranges are copied, its holes stay holes. Where the
filesystem can, a file's blocks are shared instead of copied (FICLONE: XFS with
reflink, btrfs). The proof does not trust the copy: both trees are walked side by
side and compared entry by entry (type, owner, mode, size, time, content, symlink
target, device numbers, xattrs, which entries share an inode), and a copy that is
not exact is an error, so nothing is removed on the strength of a bad copy.

Content is compared as bytes: a hole reads as zeros, so a hole and written zeros are
the same content, and how a filesystem lays a file out (sparse or not) is no
difference. Both the copy and the proof walk the trees with user_trees (no
recursion, no path longer than a name): any depth, any apparent size.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpudock.adapters.file_data import content_digest, copy_data, shares_blocks
from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.user_trees import (
    O_DIR,
    Cursor,
    Dir,
    Entry,
    Leave,
    identity,
    open_dir,
    shown,
    walk,
)

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
Key = tuple[int, int]
State = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
RACY_NS = 1_000_000_000  # a ctime this close to a read may hide a write in the same tick


def file_state(info: os.stat_result) -> State:
    """What changes whenever a file's bytes or metadata do: a user can set mtime back,
    never ctime (the kernel sets it at every change, also at that of mtime)."""
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def unchanged_while_read(before: os.stat_result, after: os.stat_result) -> bool:
    """The file was not changed while it was read (the same state before and after),
    nor within RACY_NS before (a write in the same clock tick leaves the times)."""
    return file_state(before) == file_state(after) and \
        time.time_ns() - after.st_ctime_ns > RACY_NS


@dataclass
class PreCopy:
    """A copy of a tree made while the tree was in use (a running container's writable
    layer), and each file's state as it was read whole and unchanged: a later copy of
    the tree at rest takes a file whose state is still that one from here (a hard
    link, on the same filesystem) instead of copying its bytes again (``reused``
    counts them)."""

    root: Path
    states: dict[str, State] = field(default_factory=dict)
    reused: int = 0


# ------------------------------------------------------------------------ metadata
def _proc(dir_fd: int, name: str) -> str:
    """A path naming ``name`` in an open directory, short whatever the depth."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """Every extended attribute of ``path`` (not followed when a symlink)."""
    with contextlib.suppress(OSError):
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in names))
    return ()


def _set_metadata(fd: int | None, dir_fd: int, name: str, info: os.stat_result,
                  attrs: tuple[tuple[str, bytes], ...]) -> None:
    """Owner, then mode (a chown clears set-ID bits), then xattrs (a chown clears
    security.capability), then times: on ``fd`` when open, else by name."""
    kind = stat.S_IFMT(info.st_mode)
    if fd is not None:
        os.fchown(fd, info.st_uid, info.st_gid)
        os.fchmod(fd, stat.S_IMODE(info.st_mode))
        for key, value in attrs:
            os.setxattr(fd, key, value)
        if kind != stat.S_IFDIR:  # a directory's times are set once it is filled
            os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        return
    os.chown(name, info.st_uid, info.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    if kind != stat.S_IFLNK:
        os.chmod(name, stat.S_IMODE(info.st_mode), dir_fd=dir_fd)
    for key, value in attrs:
        os.setxattr(_proc(dir_fd, name), key, value, follow_symlinks=False)
    os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=dir_fd,
             follow_symlinks=False)



set_metadata = _set_metadata  # for tree_stream, which builds a tree received


# ---------------------------------------------------------------------------- copy
def copy_tree(source: Path, target: Path, share_with: Path | None = None,
              pre_copy: PreCopy | None = None, noting: PreCopy | None = None) -> None:
    """Copy what ``source`` holds into the empty directory ``target`` (and the
    source directory's own owner, mode, xattrs and times onto it). Raises
    VolumeToolError (its text has the system's words: "No space left on device").

    With ``share_with`` (a tree nothing writes to any more) on a filesystem without
    reflinks, every file it holds at the same place with the same bytes, size, mode,
    owner, time and xattrs is hard-linked from there instead of copied (as rsync's
    ``--link-dest --checksum``: a file rewritten with its old size and time is not
    taken for unchanged). Where reflinks work every block is shared anyway, changed
    or not, without reading the files, so ``share_with`` is not used.

    ``noting``: this copy is a pre-copy (``target`` is its root): the state of each
    file read whole and unchanged is noted in it. ``pre_copy``: such an earlier copy
    of ``source``, on the filesystem of ``target``; a file whose state is still the
    one noted there is linked from it, not read."""
    if share_with is not None and (not share_with.is_dir() or shares_blocks(target.parent)):
        share_with = None
    if pre_copy is not None and not pre_copy.root.is_dir():
        pre_copy = None
    try:
        _Copy(source, target, share_with, pre_copy, noting).run()
    except OSError as exc:
        raise VolumeToolError(f"copying {source} to {target}: {exc}") from exc


class _Shadow:
    """The same place in another tree, where it has that directory."""

    def __init__(self, root: Path) -> None:
        self.cursor = Cursor(root)
        self.missing = 0  # levels below the deepest one it has

    def fd(self) -> int | None:
        return None if self.missing else self.cursor.fd

    def down(self, name: str) -> None:
        if not self.missing:
            try:
                self.cursor.enter(os.open(name, O_DIR, dir_fd=self.cursor.fd))
                return
            except OSError:
                pass
        self.missing += 1

    def up(self) -> None:
        if self.missing:
            self.missing -= 1
        else:
            self.cursor.up()


class _Copy:
    def __init__(self, source: Path, target: Path, share_with: Path | None,
                 pre_copy: PreCopy | None, noting: PreCopy | None) -> None:
        self.source, self.target = source, target
        self.share_with = share_with
        self.pre_copy, self.noting = pre_copy, noting
        self.first: dict[Key, tuple[Dir, str]] = {}  # an inode's first copy

    def run(self) -> None:
        with contextlib.ExitStack() as stack:
            self.root_fd = os.open(self.target, O_DIR)
            stack.callback(os.close, self.root_fd)
            self.into = stack.enter_context(Cursor(self.target))
            self.shadow = _Shadow(self.share_with) if self.share_with else None
            self.earlier = _Shadow(self.pre_copy.root) if self.pre_copy else None
            for shadow in (self.shadow, self.earlier):
                if shadow is not None:
                    stack.callback(shadow.cursor.close)
            for step in walk(self.source):
                if isinstance(step, Leave):
                    self.into.up()
                    for shadow in (self.shadow, self.earlier):
                        if shadow is not None:
                            shadow.up()
                    os.utime(step.name, ns=(step.info.st_atime_ns, step.info.st_mtime_ns),
                             dir_fd=self.into.fd, follow_symlinks=False)
                else:
                    self._entry(step)
            root = os.lstat(self.source)
            _set_metadata(self.into.fd, -1, "", root, xattrs(str(self.source)))
            os.utime(self.into.fd, ns=(root.st_atime_ns, root.st_mtime_ns))

    def _entry(self, entry: Entry) -> None:
        info, name, here = entry.info, entry.name, self.into.fd
        kind = stat.S_IFMT(info.st_mode)
        attrs = xattrs(_proc(entry.dir_fd, name))
        if kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=here)
            fd = os.open(name, O_DIR, dir_fd=here)
            try:
                _set_metadata(fd, here, name, info, attrs)
            except BaseException:
                os.close(fd)
                raise
            self.into.enter(fd)
            for shadow in (self.shadow, self.earlier):
                if shadow is not None:
                    shadow.down(name)
            return
        if info.st_nlink > 1 and self._link_first(entry):
            return
        if kind == stat.S_IFREG:
            self._file(entry, attrs)
        else:
            if kind == stat.S_IFLNK:
                os.symlink(os.readlink(name, dir_fd=entry.dir_fd), name, dir_fd=here)
            else:  # device nodes (overlayfs's whiteouts), FIFOs, sockets
                os.mknod(name, info.st_mode, info.st_rdev, dir_fd=here)
            _set_metadata(None, here, name, info, attrs)
        if info.st_nlink > 1:
            self.first[identity(info)] = (entry.parent, name)

    def _link_first(self, entry: Entry) -> bool:
        """A further name of an inode copied already: linked to that copy."""
        first = self.first.get(identity(entry.info))
        if first is None:
            return False
        where, name = first
        fd = open_dir(self.root_fd, where.parts())
        try:
            os.link(name, entry.name, src_dir_fd=fd, dst_dir_fd=self.into.fd,
                    follow_symlinks=False)
        finally:
            os.close(fd)
        return True

    def _file(self, entry: Entry, attrs: tuple[tuple[str, bytes], ...]) -> None:
        source = os.open(entry.name, _O_READ, dir_fd=entry.dir_fd)
        try:
            if identity(os.fstat(source)) != identity(entry.info):
                raise OSError(errno.ESTALE, f"{entry.name!r} was replaced during the copy")
            path = "/".join([*entry.parent.parts(), entry.name]) \
                if self.pre_copy or self.noting else ""
            if self._link_earlier(entry, path):
                return
            if not self._link_shared(entry, source, attrs):
                target = os.open(entry.name, _O_NEW, 0o600, dir_fd=self.into.fd)
                try:
                    copy_data(source, target, entry.info.st_size)
                    _set_metadata(target, self.into.fd, entry.name, entry.info, attrs)
                finally:
                    os.close(target)
            if self.noting is not None and unchanged_while_read(entry.info,
                                                                os.fstat(source)):
                self.noting.states[path] = file_state(entry.info)
        finally:
            os.close(source)

    def _link_earlier(self, entry: Entry, path: str) -> bool:
        """A file unchanged since the pre-copy read it: linked from there."""
        earlier = self.earlier.fd() if self.earlier is not None else None
        if earlier is None or self.pre_copy is None or \
                self.pre_copy.states.get(path) != file_state(entry.info):
            return False
        try:
            os.link(entry.name, entry.name, src_dir_fd=earlier, dst_dir_fd=self.into.fd,
                    follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EMLINK):
                return False
            raise
        self.pre_copy.reused += 1
        return True

    def _link_shared(self, entry: Entry, source: int,
                     attrs: tuple[tuple[str, bytes], ...]) -> bool:
        """The same file in ``share_with`` (bytes, size, mode, owner, time, xattrs):
        linked from there."""
        shadow = self.shadow.fd() if self.shadow is not None else None
        if shadow is None:
            return False
        info = entry.info
        try:
            other = os.stat(entry.name, dir_fd=shadow, follow_symlinks=False)
            if not stat.S_ISREG(other.st_mode) or (
                    other.st_size, other.st_mode, other.st_uid, other.st_gid,
                    other.st_mtime_ns) != (info.st_size, info.st_mode, info.st_uid,
                                           info.st_gid, info.st_mtime_ns):
                return False
            if xattrs(_proc(shadow, entry.name)) != attrs:
                return False
            fd = os.open(entry.name, _O_READ, dir_fd=shadow)
            try:
                same = content_digest(fd, info.st_size) == content_digest(
                    source, info.st_size)
            finally:
                os.close(fd)
            if same:
                os.link(entry.name, entry.name, src_dir_fd=shadow,
                        dst_dir_fd=self.into.fd, follow_symlinks=False)
            return same
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EMLINK):
                return False
            raise


# --------------------------------------------------------------------------- proof
Signature = tuple[object, ...]
Where = tuple[Dir | None, str]  # the directory holding an entry (None: the root), its name


def _path(where: Where) -> str:
    parent, name = where
    return name if parent is None else shown(parent, name)


def _signatures(root: Path, content: bool) -> Iterator[tuple[Where, Signature]]:
    """What a copy must keep of each entry, in walk order (both trees walk alike):
    the root's first, a marker at each directory's end. An entry that shares its
    inode with an earlier one names that one's position; one whose other names are
    outside the tree (a saved copy sharing unchanged files with an earlier one)
    names its own."""
    info = os.lstat(root)
    yield (None, "."), (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                info.st_gid, xattrs(str(root)))
    links: dict[Key, int] = {}
    for position, step in enumerate(walk(root), start=1):
        if isinstance(step, Leave):
            yield (step.parent, step.name), ("end of directory", step.name)
            continue
        info, name, kind = step.info, step.name, stat.S_IFMT(step.info.st_mode)
        link = position
        if kind != stat.S_IFDIR and info.st_nlink > 1:
            link = links.setdefault(identity(info), position)
        body: object = None
        if kind == stat.S_IFREG and content:
            fd = os.open(name, _O_READ, dir_fd=step.dir_fd)
            try:
                body = content_digest(fd, info.st_size)
            finally:
                os.close(fd)
        elif kind == stat.S_IFLNK:
            body = os.readlink(name, dir_fd=step.dir_fd)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            body = info.st_rdev
        when = None if kind in (stat.S_IFLNK, stat.S_IFDIR) else info.st_mtime_ns
        yield (step.parent, name), (
            name, kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
            info.st_size if kind == stat.S_IFREG else 0, when, body, link,
            xattrs(_proc(step.dir_fd, name)))


def verify_copy(source: Path, target: Path, content: bool = True) -> None:
    """Raises VolumeToolError naming the first entry that differs. Without
    ``content`` files are compared by size only, not read (a check whose cost
    follows the number of files, not their bytes)."""
    try:
        pairs = itertools.zip_longest(_signatures(source, content),
                                      _signatures(target, content))
        for want, have in pairs:
            if want is None or have is None or want[1] != have[1]:
                where = _path((want or have or ((None, "?"), ()))[0])
                raise VolumeToolError(
                    f"copy of {source} to {target} differs at {where!r}: source "
                    f"{want[1] if want else 'nothing'!r}, copy "
                    f"{have[1] if have else 'nothing'!r}; the source was kept")
    except OSError as exc:
        raise VolumeToolError(f"checking the copy of {source} to {target}: {exc}") from exc


def manifest(root: Path, content: bool = True) -> dict[str, Signature]:
    """Every entry of a (small) tree by its path, as verify_copy compares them; an
    inode's other names give the path of its first."""
    steps = list(_signatures(root, content))
    found: dict[str, Signature] = {}
    for path, sig in steps:
        if len(sig) == 10 and isinstance(sig[8], int):
            found[_path(path)] = (*sig[:8], _path(steps[sig[8]][0]), sig[9])
        elif sig[0] != "end of directory":
            found[_path(path)] = sig
    return found
