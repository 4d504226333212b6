"""A directory tree sent over a migration's channel and built again on the other
node with everything tree_copy keeps: owners, modes, times, xattrs (overlayfs's
``trusted.overlay.*`` too), hard links, symlinks, device nodes (whiteouts), FIFOs
and holes (only a file's data ranges travel; the rebuilt file has the same holes).

The stream follows the walk (user_trees): "d" enters a directory, "u" leaves it,
"f" a file (its data ranges follow as DATA frames, or none when it is reused), "h" a
further name of an inode already sent (its first name's path), "s" a symlink, "n" a
device node or FIFO, then "end" with the source's manifest digest: a SHA-256 over
every entry's path, type, mode, owner, size, time, content (SHA-256), link target,
device numbers, xattrs and hard-link grouping. The receiver builds the tree in a
staging directory, computes the same digest of what it wrote, and only a match is
kept: a copy that differs in anything is an error, never a disk.

**Pre-copy.** A running container's layer is sent once while it runs (a "pre" pass,
not checked: files change meanwhile), then again once it is stopped: a file whose
inode, size, mtime and ctime (nanoseconds; a user cannot set ctime back) are those
it had before and after it was read in the first pass, and whose ctime was not in
the last second then (a write in the same clock tick leaves the times alone), is
"reused": the receiver moves its first-pass copy into place instead of receiving it.
The content digests of such files, on both sides, are those computed in the first
pass, so the stopped pass costs what changed, and its manifest check still covers
every file (a wrongly reused file fails the digest: the migration fails, nothing is
kept).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpudock.adapters import tree_copy
from gpudock.adapters.file_data import (
    CHUNK,
    BlockDigest,
    content_digest,
    segments,
    start_writeback,
)
from gpudock.adapters.migration_wire import Channel, WireError
from gpudock.adapters.user_trees import O_DIR, Cursor, Entry, Leave, identity, open_dir, walk

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Digests:
    """Content digests of files by path, valid while the file's state is the one
    noted (on the sender: inode, size, mtime, ctime; on the receiver, where only the
    agent writes and a move changes ctime: inode, size, mtime)."""

    by_path: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)

    def get(self, path: str, state: tuple[int, ...]) -> str | None:
        found = self.by_path.get(path)
        return found[1] if found is not None and found[0] == state else None


_state = tree_copy.file_state


def manifest_digest(root: Path, digests: Digests | None = None,
                    sender: bool = True) -> str:
    """SHA-256 of the tree's manifest: two trees with the same digest hold the same
    entries, bytes and metadata. Files whose state ``digests`` knows are not read."""
    digest = hashlib.sha256()
    info = os.lstat(root)
    digest.update(repr((stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                        info.st_gid, tree_copy.xattrs(str(root)))).encode())
    first: dict[tuple[int, int], str] = {}
    path: list[str] = []
    for step in walk(root):
        if isinstance(step, Leave):
            path.pop()
            continue
        info, name, kind = step.info, step.name, stat.S_IFMT(step.info.st_mode)
        here = "/".join([*path, name])
        if kind == stat.S_IFDIR:
            path.append(name)
        linked = here
        if kind != stat.S_IFDIR and info.st_nlink > 1:
            linked = first.setdefault(identity(info), here)
        body: object = None
        if kind == stat.S_IFREG:
            state = _state(info) if sender else _state(info)[:3]
            body = digests.get(here, state) if digests is not None else None
            if body is None:
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
        digest.update(repr((here, kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                            info.st_size if kind == stat.S_IFREG else 0, when, body, linked,
                            tree_copy.xattrs(f"/proc/self/fd/{step.dir_fd}/{name}"))).encode())
    return digest.hexdigest()


def _meta(info: os.stat_result, attrs: tuple[tuple[str, bytes], ...]) -> dict[str, Any]:
    return {"mode": info.st_mode, "uid": info.st_uid, "gid": info.st_gid,
            "atime": info.st_atime_ns, "mtime": info.st_mtime_ns, "rdev": info.st_rdev,
            "size": info.st_size,
            "xattrs": [[k, base64.b64encode(v).decode()] for k, v in attrs]}


def _stat_of(meta: dict[str, Any]) -> tuple[os.stat_result, tuple[tuple[str, bytes], ...]]:
    fields = [0] * 10
    fields[0], fields[4], fields[5] = int(meta["mode"]), int(meta["uid"]), int(meta["gid"])
    info = os.stat_result(fields, {"st_atime_ns": int(meta["atime"]),
                                   "st_mtime_ns": int(meta["mtime"]),
                                   "st_rdev": int(meta["rdev"])})
    attrs = tuple((str(k), base64.b64decode(v)) for k, v in meta["xattrs"])
    return info, attrs


# ------------------------------------------------------------------------------ send
class TreeSender:
    """Sends one tree, once (``final``: checked) or twice (a pre pass while it
    runs, then the final one, reusing what did not change)."""

    def __init__(self, root: Path, channel: Channel, what: str) -> None:
        self.root, self.channel, self.what = root, channel, what
        self.digests = Digests()  # from the pre pass: what the final one may reuse
        self.sent = 0

    def send(self, final: bool = True) -> None:
        reusing = bool(self.digests.by_path) and final
        info = os.lstat(self.root)
        self.channel.send({"op": "tree", "what": self.what, "pass": "final" if final
                           else "pre", "reuse": reusing,
                           "root": _meta(info, tree_copy.xattrs(str(self.root)))})
        seen = Digests()
        first: dict[tuple[int, int], list[str]] = {}
        path: list[str] = []
        for step in walk(self.root):
            if isinstance(step, Leave):
                path.pop()
                self.channel.send({"op": "u", "atime": step.info.st_atime_ns,
                                   "mtime": step.info.st_mtime_ns})
                continue
            self._entry(step, first, path, seen, reusing)
        if final:
            # The files this pass just sent were hashed as they went (``seen``): the
            # manifest does not read and hash them once more (a history tree's every
            # file; in the stopped pass, every changed one, during the downtime).
            known = Digests({**self.digests.by_path, **seen.by_path})
            self.channel.send({"op": "end", "digest": manifest_digest(self.root, known)})
        else:
            self.channel.send({"op": "end", "digest": None})
            self.digests = seen

    def _entry(self, entry: Entry, first: dict[tuple[int, int], list[str]], path: list[str],
               seen: Digests, reusing: bool) -> None:
        info, name, channel = entry.info, entry.name, self.channel
        kind = stat.S_IFMT(info.st_mode)
        meta = _meta(info, tree_copy.xattrs(f"/proc/self/fd/{entry.dir_fd}/{name}"))
        if kind == stat.S_IFDIR:
            channel.send({"op": "d", "name": name, "meta": meta})
            path.append(name)
            return
        if info.st_nlink > 1:
            earlier = first.get(identity(info))
            if earlier is not None:
                channel.send({"op": "h", "name": name, "to": earlier})
                return
            first[identity(info)] = [*path, name]
        if kind == stat.S_IFLNK:
            channel.send({"op": "s", "name": name, "meta": meta,
                          "target": os.readlink(name, dir_fd=entry.dir_fd)})
            return
        if kind != stat.S_IFREG:
            channel.send({"op": "n", "name": name, "meta": meta})
            return
        here = "/".join([*path, name])
        if reusing and self.digests.get(here, _state(info)) is not None:
            channel.send({"op": "f", "name": name, "meta": meta, "reuse": True})
            return
        fd = os.open(name, _O_READ, dir_fd=entry.dir_fd)
        try:
            if identity(os.fstat(fd)) != identity(info):
                raise WireError(f"{name!r} was replaced while it was sent")
            ranges = list(segments(fd, info.st_size))
            channel.send({"op": "f", "name": name, "meta": meta, "ranges": ranges})
            # The digest of the bytes as they are sent: no second read of the file
            # (kept only when the file did not change meanwhile, as before).
            digest = BlockDigest(info.st_size)
            for start, end in ranges:
                offset = start
                while offset < end:
                    # Frames end at CHUNK boundaries: the receiver's digest then
                    # hashes each frame as it is, never copied into a block.
                    data = channel.send_file_data(
                        fd, min(CHUNK - offset % CHUNK, end - offset), offset)
                    if not data:
                        raise WireError(f"{name!r} became shorter while it was sent")
                    digest.update(offset, data)
                    offset += len(data)
                    self.sent += len(data)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if tree_copy.unchanged_while_read(info, after):
            seen.by_path[here] = (_state(info), digest.hexdigest())


# --------------------------------------------------------------------------- receive
def receive_tree(channel: Channel, header: dict[str, Any], target: Path,
                 base: Path | None = None, digests: Digests | None = None) -> int:
    """Build the tree announced by ``header`` (a "tree" message) in the empty
    directory ``target``, reused files moved from ``base`` (the pre pass's tree).
    A final pass is checked against the source's manifest digest; a pre pass notes
    the digests of what it wrote in ``digests``. Raises WireError (the caller
    removes ``target``). The bytes of data received."""
    received = 0
    names: list[str] = []  # the directories entered
    final = header.get("pass") != "pre"
    written = Digests() if digests is None else digests
    if header.get("reuse") and base is None:
        raise WireError("files are reused, but no earlier pass is here")
    root_fd = os.open(target, O_DIR)
    base_fd = os.open(base, O_DIR) if header.get("reuse") and base is not None else None
    try:
        with Cursor(target) as into:
            while True:
                message = channel.receive()
                op = message.get("op")
                if op == "end":
                    digest = message.get("digest")
                    break
                if op == "u":
                    if not names:
                        raise WireError("the stream left the tree's root")
                    into.up()
                    os.utime(names.pop(), ns=(int(message["atime"]), int(message["mtime"])),
                             dir_fd=into.fd, follow_symlinks=False)
                    continue
                name = str(message.get("name"))
                if "/" in name or name in ("", ".", ".."):
                    raise WireError(f"a name {name!r} cannot be in a directory")
                if op == "d":
                    names.append(name)
                parents = names[:-1] if op == "d" else names
                here = "/".join([*parents, name])
                received += _receive_entry(channel, message, into, root_fd, base_fd, here,
                                           written, not final)
        info, attrs = _stat_of(header["root"])
        tree_copy.set_metadata(root_fd, -1, "", info, attrs)
        os.utime(root_fd, ns=(info.st_atime_ns, info.st_mtime_ns))
    except OSError as exc:
        raise WireError(f"building {target}: {exc}") from exc
    finally:
        os.close(root_fd)
        if base_fd is not None:
            os.close(base_fd)
    if final:
        have = manifest_digest(target, written, sender=False)
        if have != digest:
            raise WireError(f"the copy at {target} does not match the source's manifest "
                            f"(digest {have[:12]} != {str(digest)[:12]}); it is not kept")
    return received


def _parts(message: dict[str, Any], key: str) -> list[str]:
    parts = [str(p) for p in message[key]]
    if not parts or any("/" in p or p in ("", ".", "..") for p in parts):
        raise WireError(f"a path {parts!r} leaves the tree")
    return parts


def _receive_entry(channel: Channel, message: dict[str, Any], into: Cursor, root_fd: int,
                   base_fd: int | None, here: str, written: Digests,
                   pre: bool = False) -> int:
    op, name, at = message.get("op"), str(message.get("name")), into.fd
    if op == "h":
        parts = _parts(message, "to")
        fd = open_dir(root_fd, parts[:-1])
        try:
            os.link(parts[-1], name, src_dir_fd=fd, dst_dir_fd=at, follow_symlinks=False)
        finally:
            os.close(fd)
        return 0
    info, attrs = _stat_of(message["meta"])
    if op == "d":
        os.mkdir(name, 0o700, dir_fd=at)
        fd = os.open(name, O_DIR, dir_fd=at)
        try:
            tree_copy.set_metadata(fd, at, name, info, attrs)
        except BaseException:
            os.close(fd)
            raise
        into.enter(fd)
        return 0
    if op == "s":
        os.symlink(str(message["target"]), name, dir_fd=at)
        tree_copy.set_metadata(None, at, name, info, attrs)
        return 0
    if op == "n":
        if stat.S_IFMT(info.st_mode) not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                                             stat.S_IFSOCK):
            raise WireError(f"{name!r}: not a node")
        os.mknod(name, info.st_mode, info.st_rdev, dir_fd=at)
        tree_copy.set_metadata(None, at, name, info, attrs)
        return 0
    if op != "f":
        raise WireError(f"unknown entry {op!r}")
    if message.get("reuse"):  # unchanged since the pre pass: its copy moves here
        if base_fd is None:
            raise WireError("a file is reused, but no earlier pass is here")
        parts = here.split("/")
        fd = open_dir(base_fd, parts[:-1])
        try:
            os.rename(parts[-1], name, src_dir_fd=fd, dst_dir_fd=at)
        finally:
            os.close(fd)
        return 0
    return _receive_file(channel, message, at, name, info, attrs, here, written, pre)


def _receive_file(channel: Channel, message: dict[str, Any], at: int, name: str,
                  info: os.stat_result, attrs: tuple[tuple[str, bytes], ...], here: str,
                  written: Digests, pre: bool = False) -> int:
    received = 0
    size = int(message["meta"]["size"])
    digest = BlockDigest(size)  # of the bytes written, as they are: no read back
    fd = os.open(name, _O_NEW, 0o600, dir_fd=at)
    try:
        for start, end in message["ranges"]:
            offset = int(start)
            while offset < int(end):
                data = channel.receive_data()
                if offset + len(data) > int(end):
                    raise WireError(f"{name!r}: more data than its range")
                if os.pwrite(fd, data, offset) != len(data):
                    raise WireError(f"{name!r}: a short write at {offset}")
                try:
                    digest.update(offset, data)
                except ValueError as exc:  # ranges out of order: not a sender of ours
                    raise WireError(f"{name!r}: {exc}") from exc
                offset += len(data)
                received += len(data)
        os.ftruncate(fd, size)
        tree_copy.set_metadata(fd, at, name, info, attrs)
        mine = os.fstat(fd)
        written.by_path[here] = (_state(mine)[:3], digest.hexdigest())
        if pre:  # the syncfs after the pass (migration_receiver) then waits for less
            start_writeback(fd)
    finally:
        os.close(fd)
    return received


def walk_files(root: Path) -> Iterator[str]:
    """Every regular file's path under ``root`` (for tests and messages)."""
    path: list[str] = []
    for step in walk(root):
        if isinstance(step, Leave):
            path.pop()
        elif stat.S_ISDIR(step.info.st_mode):
            path.append(step.name)
        elif stat.S_ISREG(step.info.st_mode):
            yield "/".join([*path, step.name])
