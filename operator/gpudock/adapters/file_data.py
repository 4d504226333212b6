"""A file's bytes: where its data lies (holes left out), its content compared as
bytes (a hole and written zeros are the same), and a copy that keeps its holes and
shares its blocks where the filesystem can. Used by tree_copy on open files."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20
FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): the file's blocks shared, not copied
_ZEROS = bytes(CHUNK)
_NO_RANGE_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The ranges of an open file that hold data, holes left out (SEEK_DATA); one
    range where the filesystem cannot tell."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            if exc.errno != errno.EINVAL:
                raise
            start = offset
        try:
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError:
            end = size
        if end <= start:
            end = size
        yield start, end
        offset = end


def content_digest(fd: int, size: int) -> str:
    """SHA-256 of a file's bytes, in which a hole and written zeros are the same:
    each CHUNK-aligned block that holds anything but zeros is hashed with its number
    (the size is compared apart); holes are never read, so a sparse terabyte costs
    nothing."""
    digest = hashlib.sha256()
    block = 0
    for start, end in segments(fd, size):
        block = max(block, start // CHUNK)
        while block * CHUNK < end:
            data = os.pread(fd, min(CHUNK, size - block * CHUNK), block * CHUNK)
            if not data:
                break
            if data != (_ZEROS if len(data) == CHUNK else bytes(len(data))):
                digest.update(block.to_bytes(8, "big"))
                digest.update(data)
            block += 1
    return digest.hexdigest()


class BlockDigest:
    """content_digest of bytes seen as they pass (sent or received) instead of read
    back: fed a file's data pieces as (offset, bytes), offsets increasing, holes
    between them zeros. The same digest as content_digest of the same bytes; a
    piece may cross a CHUNK boundary (a sender that cuts its frames at CHUNK
    boundaries never makes one copy here)."""

    def __init__(self, size: int) -> None:
        self._digest = hashlib.sha256()
        self._size = size
        self._block = -1  # the block in ``_partial`` (or last hashed whole)
        self._partial: bytearray | None = None
        self._next = 0  # no piece may start before this

    def _add(self, block: int, data: bytes | bytearray | memoryview) -> None:
        # _ZEROS.startswith: a memcmp (memoryview == bytes compares item by item)
        if not _ZEROS.startswith(data):
            self._digest.update(block.to_bytes(8, "big"))
            self._digest.update(data)

    def _flush(self) -> None:
        if self._partial is not None:
            self._add(self._block, self._partial)
            self._partial = None

    def update(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset < self._next or offset + len(data) > self._size:
            raise ValueError(f"a piece at {offset} is out of order or past the end")
        self._next = offset + len(data)
        view = memoryview(data)
        while view:
            block = offset // CHUNK
            begin = block * CHUNK
            length = min(CHUNK, self._size - begin)
            count = min(len(view), begin + length - offset)
            piece = view[:count]
            if block != self._block:
                self._flush()
                self._block = block
                if offset == begin and count == length:  # a whole block: no copy
                    self._add(block, piece)
                    view, offset = view[count:], offset + count
                    continue
                self._partial = bytearray(length)
            if self._partial is None:  # that block was hashed whole already
                raise ValueError(f"a piece at {offset} overlaps what was hashed")
            self._partial[offset - begin:offset - begin + count] = piece
            view, offset = view[count:], offset + count

    def hexdigest(self) -> str:
        self._flush()
        return self._digest.hexdigest()


def start_writeback(fd: int) -> None:
    """Start writing an open file's dirty pages to disk, without waiting
    (sync_file_range SYNC_FILE_RANGE_WRITE): a later syncfs finds them written or
    in flight. Best effort: nothing where the call is not there."""
    with contextlib.suppress(AttributeError):  # its result is not needed either
        _LIBC.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0),
                              _SYNC_FILE_RANGE_WRITE)


def copy_data(source: int, target: int, size: int) -> None:
    """Give the empty file ``target`` the bytes of ``source``: its blocks shared
    where the filesystem can, else its data ranges copied and its holes left."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(target, FICLONE, source)
        return
    for start, end in segments(source, size):
        offset = start
        while offset < end:
            try:
                done = os.copy_file_range(source, target, end - offset, offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_RANGE_COPY:
                    raise
                data = os.pread(source, min(CHUNK, end - offset), offset)
                done = os.pwrite(target, data, offset) if data else 0
            if done <= 0:  # the file ended early
                break
            offset += done
    os.ftruncate(target, size)


_SHARING: dict[int, bool] = {}  # by st_dev: asked once per filesystem


def shares_blocks(directory: Path) -> bool:
    """True when a copy on the filesystem of ``directory`` can share the source's
    blocks (FICLONE works there: XFS with reflink, btrfs)."""
    device = directory.stat().st_dev
    if device not in _SHARING:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".gpudock-reflink-") as probe:
            first, second = Path(probe, "first"), Path(probe, "second")
            first.write_bytes(b"probe")
            with open(first, "rb") as source, open(second, "wb") as target:
                try:
                    fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
                    _SHARING[device] = True
                except OSError:
                    _SHARING[device] = False
    return _SHARING[device]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_SYNC_FILE_RANGE_WRITE = 2


def sync_filesystem(directory: Path) -> None:
    """Write the dirty data of the filesystem holding ``directory`` to its disk
    (syncfs(2): that filesystem only, not the machine's others). OSError if it
    cannot."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs {directory}: {os.strerror(code)}")
    finally:
        os.close(fd)

