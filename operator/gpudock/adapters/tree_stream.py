"""A directory tree sent over a migration's channel and built again on the other
node with everything tree_copy keeps: owners, modes, times, xattrs (overlayfs's
``trusted.overlay.*`` too), hard links, symlinks, device nodes (whiteouts), FIFOs
and holes (only a file's data ranges travel; the rebuilt file has the same holes).

The stream follows the walk (user_trees): "d" enters a directory, "u" leaves it,
"f" a file (its data ranges follow as DATA frames), "h" a further name of an inode
already sent (its first name's path), "s" a symlink, "n" a device node or FIFO,
then "end" with the source's manifest digest: a SHA-256 over every entry's type,
mode, owner, size, time, content (SHA-256), link target, device numbers, xattrs and
hard-link grouping, as tree_copy.manifest lists them. The receiver builds the tree
in a staging directory, computes the same digest of what it wrote, and only a match
is kept: a copy that differs in anything is an error, never a disk.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from gpudock.adapters import tree_copy
from gpudock.adapters.file_data import CHUNK, segments
from gpudock.adapters.migration_wire import Channel, WireError
from gpudock.adapters.user_trees import O_DIR, Cursor, Entry, Leave, identity, open_dir, walk

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def manifest_digest(root: Path) -> str:
    """SHA-256 of the tree's manifest (tree_copy.manifest, content included): two
    trees with the same digest hold the same entries, bytes and metadata."""
    digest = hashlib.sha256()
    for path, signature in sorted(tree_copy.manifest(root, content=True).items()):
        digest.update(repr((path, signature)).encode())
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
def send_tree(root: Path, channel: Channel, what: str) -> int:
    """Send the tree at ``root`` (which nothing changes meanwhile); the bytes of data
    sent. The receiver's answer is read by the caller."""
    digest = manifest_digest(root)
    info = os.lstat(root)
    channel.send({"op": "tree", "what": what,
                  "root": _meta(info, tree_copy.xattrs(str(root)))})
    first: dict[tuple[int, int], list[str]] = {}
    sent = 0
    path: list[str] = []
    for step in walk(root):
        if isinstance(step, Leave):
            path.pop()
            channel.send({"op": "u", "atime": step.info.st_atime_ns,
                          "mtime": step.info.st_mtime_ns})
            continue
        sent += _send_entry(step, channel, first, path)
    channel.send({"op": "end", "digest": digest})
    return sent


def _send_entry(entry: Entry, channel: Channel, first: dict[tuple[int, int], list[str]],
                path: list[str]) -> int:
    info, name = entry.info, entry.name
    kind = stat.S_IFMT(info.st_mode)
    meta = _meta(info, tree_copy.xattrs(f"/proc/self/fd/{entry.dir_fd}/{name}"))
    if kind == stat.S_IFDIR:
        channel.send({"op": "d", "name": name, "meta": meta})
        path.append(name)
        return 0
    if info.st_nlink > 1:
        earlier = first.get(identity(info))
        if earlier is not None:
            channel.send({"op": "h", "name": name, "to": earlier})
            return 0
        first[identity(info)] = [*path, name]
    if kind == stat.S_IFLNK:
        channel.send({"op": "s", "name": name, "meta": meta,
                      "target": os.readlink(name, dir_fd=entry.dir_fd)})
        return 0
    if kind != stat.S_IFREG:
        channel.send({"op": "n", "name": name, "meta": meta})
        return 0
    fd = os.open(name, _O_READ, dir_fd=entry.dir_fd)
    try:
        if identity(os.fstat(fd)) != identity(info):
            raise WireError(f"{name!r} was replaced while it was sent")
        ranges = list(segments(fd, info.st_size))
        channel.send({"op": "f", "name": name, "meta": meta, "ranges": ranges})
        sent = 0
        for start, end in ranges:
            offset = start
            while offset < end:
                data = os.pread(fd, min(CHUNK, end - offset), offset)
                if not data:
                    raise WireError(f"{name!r} became shorter while it was sent")
                channel.send_data(data)
                offset += len(data)
                sent += len(data)
        return sent
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- receive
def receive_tree(channel: Channel, header: dict[str, Any], target: Path) -> int:
    """Build the tree announced by ``header`` (a "tree" message) in the empty
    directory ``target``; check it against the source's manifest digest. Raises
    WireError (the caller removes ``target``). The bytes of data received."""
    received = 0
    names: list[str] = []  # the directories entered
    root_fd = os.open(target, O_DIR)
    try:
        with Cursor(target) as into:
            while True:
                message = channel.receive()
                op = message.get("op")
                if op == "end":
                    digest = str(message.get("digest"))
                    break
                if op == "u":
                    if not names:
                        raise WireError("the stream left the tree's root")
                    into.up()
                    os.utime(names.pop(), ns=(int(message["atime"]), int(message["mtime"])),
                             dir_fd=into.fd, follow_symlinks=False)
                    continue
                if op == "d":
                    names.append(str(message.get("name")))
                received += _receive_entry(channel, message, into, root_fd)
        info, attrs = _stat_of(header["root"])
        tree_copy.set_metadata(root_fd, -1, "", info, attrs)
        os.utime(root_fd, ns=(info.st_atime_ns, info.st_mtime_ns))
    except OSError as exc:
        raise WireError(f"building {target}: {exc}") from exc
    finally:
        os.close(root_fd)
    have = manifest_digest(target)
    if have != digest:
        raise WireError(f"the copy at {target} does not match the source's manifest "
                        f"(digest {have[:12]} != {digest[:12]}); it is not kept")
    return received


def _receive_entry(channel: Channel, message: dict[str, Any], into: Cursor,
                   root_fd: int) -> int:
    op, name, here = message.get("op"), str(message.get("name")), into.fd
    if "/" in name or name in ("", ".", ".."):
        raise WireError(f"a name {name!r} cannot be in a directory")
    if op == "h":
        parts = [str(p) for p in message["to"]]
        if any("/" in p or p in ("", ".", "..") for p in parts):
            raise WireError(f"a link to {parts!r} leaves the tree")
        fd = open_dir(root_fd, parts[:-1])
        try:
            os.link(parts[-1], name, src_dir_fd=fd, dst_dir_fd=here, follow_symlinks=False)
        finally:
            os.close(fd)
        return 0
    info, attrs = _stat_of(message["meta"])
    if op == "d":
        os.mkdir(name, 0o700, dir_fd=here)
        fd = os.open(name, O_DIR, dir_fd=here)
        try:
            tree_copy.set_metadata(fd, here, name, info, attrs)
        except BaseException:
            os.close(fd)
            raise
        into.enter(fd)
        return 0
    if op == "s":
        os.symlink(str(message["target"]), name, dir_fd=here)
        tree_copy.set_metadata(None, here, name, info, attrs)
        return 0
    if op == "n":
        if stat.S_IFMT(info.st_mode) not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                                             stat.S_IFSOCK):
            raise WireError(f"{name!r}: not a node")
        os.mknod(name, info.st_mode, info.st_rdev, dir_fd=here)
        tree_copy.set_metadata(None, here, name, info, attrs)
        return 0
    if op != "f":
        raise WireError(f"unknown entry {op!r}")
    received = 0
    fd = os.open(name, _O_NEW, 0o600, dir_fd=here)
    try:
        for start, end in message["ranges"]:
            offset = int(start)
            while offset < int(end):
                data = channel.receive_data()
                if offset + len(data) > int(end):
                    raise WireError(f"{name!r}: more data than its range")
                os.pwrite(fd, data, offset)
                offset += len(data)
                received += len(data)
        os.ftruncate(fd, int(message["meta"]["size"]))
        tree_copy.set_metadata(fd, here, name, info, attrs)
    finally:
        os.close(fd)
    return received

