"""The loopfile volume backend: one sparse image file per volume, formatted ext4 and
loop-mounted under the volume root; a Docker volume binds the mount.

Works on any Linux host. The file's size is the hard limit (a write past it fails
with "No space left on device", and df inside shows it). Growing is online (the file
grows, the loop device is told, the filesystem is resized while mounted); shrinking
needs the filesystem unmounted (its users stopped): check, shrink, truncate, mount.
After an agent or host restart, attach() mounts what is no longer mounted.

No overcommit: the files are sparse, so every volume's whole size is reserved (its
file's unwritten part is subtracted from what is free under the root) and a create
or a grow that does not fit in what is left is refused, under one lock so two cannot
both take the same room. Mounted with ``discard``, a file deleted in a volume gives
its blocks back to the filesystem under the root; a volume whose filesystem went
read-only or recorded errors is reported (BackendState.fault).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from gpudock.adapters.filesystem_info import Mount, free_bytes, mounts
from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.host_tools import run_tool as _run
from gpudock.adapters.volumes.base import ResizesInPlace, bind_options
from gpudock.api.quantity import format_size
from gpudock.api.reasons import Reason
from gpudock.core.volumes import BackendState
from gpudock.errors import UserError

logger = logging.getLogger(__name__)
BLOCK = 4096
RELEASE_WAIT_SECONDS = 5.0
MOUNT_OPTIONS = "loop,discard"  # deleted files give their blocks back to the root's disk
EXT4_SYSFS = Path("/sys/fs/ext4")
# Held from the check of the room left to the lengthening of a file, by every create
# and grow of every loopfile backend of the agent: two cannot both take the same room.
_RESERVING = threading.Lock()


class LoopfileBackend(ResizesInPlace):
    name = "loopfile"
    online_shrink = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        """A writable root (the ext4 tools come with the agent)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(Reason.VOLUME_ROOT_UNUSABLE, f"volume root {self.root}: {exc}") from exc

    def docker_options(self, volume: str) -> dict[str, str] | None:
        return bind_options(self.path(volume))

    def _image(self, volume: str) -> Path:
        return self.root / "images" / f"{volume}.ext4"

    def path(self, volume: str) -> Path:
        """Where the volume's filesystem is mounted (what the Docker volume binds)."""
        return self.root / "mounts" / volume

    def data_dir(self, volume: str) -> Path | None:
        return self.path(volume) if self._mount(volume) is not None else None

    def _mount(self, volume: str) -> Mount | None:
        """The volume's mount (the last one on its mount point), None when not mounted."""
        target = str(self.path(volume))
        return next((m for m in reversed(mounts()) if m.mount_point == target), None)

    def _device(self, volume: str) -> str | None:
        """The loop device the mount point sits on, or None when not mounted."""
        mount = self._mount(volume)
        return mount.source if mount is not None else None

    def state(self, volume: str) -> BackendState | None:
        image = self._image(volume)
        if not image.exists():
            return None
        mount = self._mount(volume)
        device = mount.source if mount is not None else None
        capacity = used = 0
        if device is not None:
            info = os.statvfs(self.path(volume))
            capacity = info.f_blocks * info.f_frsize
            used = (info.f_blocks - info.f_bfree) * info.f_frsize
        # The filesystem's own size is the limit (the file may be larger after a grow
        # cut short): that is what a resize changes.
        return BackendState(size_bytes=self._filesystem_bytes(device or str(image)),
                            attached=device is not None, capacity_bytes=capacity,
                            used_bytes=used, fault=_fault(mount) if mount else None)

    @staticmethod
    def _filesystem_bytes(device: str) -> int:
        fields = dict(line.split(":", 1) for line in _run("dumpe2fs", "-h", device)
                      .splitlines() if ":" in line)
        return int(fields["Block count"].strip()) * int(fields["Block size"].strip())

    def free_bytes(self) -> int:
        """What a new volume or a grow may still take: the free space under the root
        less what the volumes there may still write (the holes of their files: every
        volume's whole size is reserved, never overcommitted)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return max(free_bytes(self.root) - self.reserved_bytes(), 0)

    def reserved_bytes(self) -> int:
        """The unwritten parts of the volumes' files (a file made but not yet
        formatted included): room promised to them and not taken yet."""
        promised = 0
        for pattern in ("*.ext4", "*.new"):
            for image in (self.root / "images").glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    info = image.stat()
                    promised += max(info.st_size - info.st_blocks * 512, 0)
        return promised

    def _reserve(self, handle: BinaryIO, size_bytes: int) -> None:
        """Lengthen an image file to ``size_bytes`` if the room is there to reserve,
        else refuse (InsufficientSpace, nothing changed)."""
        with _RESERVING:
            more = _blocks(size_bytes) - os.fstat(handle.fileno()).st_size
            left = self.free_bytes()
            if more > left:
                raise UserError(Reason.INSUFFICIENT_SPACE, f"{format_size(size_bytes)} asked: "
                                f"{format_size(more)} more to reserve under the volume root "
                                f"{self.root}, and {format_size(left)} is left there (free "
                                f"space less {format_size(self.reserved_bytes())} the "
                                "volumes there may still write); nothing was changed")
            _lengthen(handle, size_bytes, self.root)

    def create(self, volume: str, size_bytes: int,
               owner: Mapping[str, str] | None = None) -> None:
        image = self._image(volume)
        image.parent.mkdir(parents=True, exist_ok=True)
        partial = image.with_suffix(".new")
        partial.unlink(missing_ok=True)  # a create cut short: not the volume, nor reserved
        with open(partial, "wb") as handle:
            try:
                self._reserve(handle, size_bytes)
            except UserError:
                partial.unlink(missing_ok=True)
                raise
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-b", str(BLOCK), "-E", "root_owner=0:0",
             str(partial))
        partial.rename(image)  # whole or not there: a crash leaves no half volume

    def attach(self, volume: str) -> tuple[Reason, str] | None:
        """Mount it (again); an offline resize a crash cut short is undone first (what
        to post as a warning when its undo file could not be used)."""
        if self._device(volume) is not None:
            return None
        dropped = self._undo_interrupted_resize(volume)
        self.path(volume).mkdir(parents=True, exist_ok=True)
        _run("mount", "-o", MOUNT_OPTIONS, str(self._image(volume)), str(self.path(volume)))
        return (Reason.UNDO_FILE_DROPPED, dropped) if dropped else None

    def _undo_file(self, volume: str) -> Path:
        return self._image(volume).with_suffix(".undo")

    @contextlib.contextmanager
    def _loop_device(self, volume: str) -> Iterator[str]:
        """The unmounted image on a loop device of its own: resize2fs given the file
        itself would truncate it on a shrink, and the undo file could not bring back
        a tail already cut off."""
        image = str(self._image(volume))
        for device in _loops_of(image):  # left by a crash
            _run("losetup", "-d", device)
        still = _wait_released(image)
        if still:
            raise VolumeToolError(
                f"{image} is still open through {', '.join(still)}: its filesystem is "
                "mounted somewhere else (a container that still holds the Docker "
                "volume?). It is not checked, resized or undone while in use; "
                "nothing was changed")
        device = _run("losetup", "--find", "--show", image).strip()
        try:
            yield device
        finally:
            _run("losetup", "-d", device)

    def _undo_interrupted_resize(self, volume: str) -> str | None:
        """resize2fs writes every block it changes to an undo file first, and the file
        is removed only once the resize is done: one still there means the resize
        was cut short, and e2undo puts the filesystem back as it was before it (the
        image file is never made smaller before that). Then the filesystem is checked
        read-only (e2fsck -fn): the undo file goes only when it is clean.

        A resize2fs killed as it began leaves an undo file e2undo refuses (empty, its
        header not written yet, or one that does not match the filesystem, which it
        had not changed yet): a clean filesystem is then the one from before the
        resize, and the undo file is dropped (returned: why, for a warning). One that
        is not clean is never mounted: refused (ResizeUndoFailed), the undo file
        kept, nothing changed, until a person checks it."""
        undo = self._undo_file(volume)
        if not undo.exists():
            return None
        refused: str | None = None
        with self._loop_device(volume) as device:
            try:
                _run("e2undo", str(undo), device)
            except VolumeToolError as exc:
                refused = str(exc)
            try:
                _run("e2fsck", "-f", "-n", device)
            except VolumeToolError as exc:
                raise UserError(Reason.RESIZE_UNDO_FAILED, f"an offline resize of {volume} "
                                "was cut short, " + (f"e2undo refused its undo file ({refused})"
                                                     if refused else "e2undo applied its undo file")
                                + f", and the filesystem is not clean ({exc}). It is not "
                                f"mounted; the undo file is kept at {undo}: check the "
                                "image with e2fsck -f, then remove the undo file") from exc
        undo.unlink()
        if refused is None:
            return None
        note = (f"an offline resize of {volume} was cut short as it began: e2undo refused "
                f"its undo file ({refused}); the filesystem is clean at its size before the "
                "resize (e2fsck -fn), so the undo file was dropped and the volume mounted")
        logger.warning("%s", note)
        return note

    def resize_online(self, volume: str, size_bytes: int) -> bool:
        """Grow: larger file, loop device refreshed, filesystem resized while mounted;
        False when the kernel refuses an online resize to the agent (it needs
        CAP_SYS_RESOURCE): then the volume is to be resized offline. A shrink is
        always offline (ext4 cannot shrink mounted)."""
        device = self._device(volume)
        state = self.state(volume)
        if state is not None and size_bytes < state.size_bytes:
            return False
        if device is None:
            raise VolumeToolError(f"volume {volume} is not attached")
        with open(self._image(volume), "r+b") as handle:
            self._reserve(handle, size_bytes)
        _run("losetup", "-c", device)
        try:
            _run("resize2fs", device)
        except VolumeToolError as exc:
            if "Permission denied to resize" in str(exc):
                return False
            raise
        return True

    def _minimum_file(self, volume: str) -> Path:
        return self._image(volume).with_suffix(".minimum")

    def minimum_bytes(self, volume: str) -> int:
        """The smallest the filesystem can be shrunk to: its data and its own
        metadata, with a margin; never less than what resize2fs said the last time
        it looked at the unmounted filesystem (kept beside the image), because its
        estimate on a mounted one can be far too low."""
        state = self.state(volume)
        if state is None:
            return 0
        os.sync()
        overhead = state.size_bytes - state.capacity_bytes
        estimate = int((state.used_bytes + overhead) * 1.05) + 4 * 2**20
        try:
            measured = int(self._minimum_file(volume).read_text())
        except (OSError, ValueError):
            measured = 0
        return max(estimate, measured)

    def resize_offline(self, volume: str, size_bytes: int) -> None:
        """Shrink, or grow where online is refused; its users are stopped: unmount,
        check, resize with an undo file, set the file's size, mount. Killed at any
        point, attach() undoes a half-done resize and the plan asks for it again."""
        if self._device(volume) is not None:
            _run("umount", str(self.path(volume)))
        image, undo = self._image(volume), self._undo_file(volume)
        try:
            self._undo_interrupted_resize(volume)
            with self._loop_device(volume) as device:
                _run("e2fsck", "-f", "-y", device, ok=(0, 1))  # 1: corrected, fine
                least = int(_run("resize2fs", "-P", device).strip().rsplit(":", 1)[1]) \
                    * BLOCK
                self._minimum_file(volume).write_text(str(least))
                if _blocks(size_bytes) < least:
                    raise UserError(Reason.SHRINK_BELOW_USAGE, f"the filesystem needs at least "
                                    f"{least // 2**20} MiB for its data and its own "
                                    "metadata; nothing was changed")
                with open(image, "r+b") as handle:  # grow: the room first
                    self._reserve(handle, size_bytes)
                _run("losetup", "-c", device)
                undo.unlink(missing_ok=True)
                _run("resize2fs", "-z", str(undo), device, f"{_blocks(size_bytes) // 1024}K")
            undo.unlink()  # done: nothing to undo any more
            with open(image, "r+b") as handle:  # shrink: the file after
                handle.truncate(_blocks(size_bytes))
        finally:
            self.attach(volume)

    def detach(self, volume: str) -> None:
        if self._device(volume) is not None:
            _run("umount", str(self.path(volume)))

    def delete(self, volume: str) -> None:
        self.detach(volume)
        for leftover in (self._image(volume), self._image(volume).with_suffix(".new"),
                         self._minimum_file(volume), self._undo_file(volume)):
            leftover.unlink(missing_ok=True)
        if self.path(volume).exists():
            self.path(volume).rmdir()


def _fault(mount: Mount) -> str | None:
    """Why a mounted volume's filesystem cannot be trusted with writes: read-only
    (it is always mounted read-write: ext4 remounts itself read-only after an error,
    such as a write its image file had no room for), or errors ext4 recorded."""
    if "ro" in mount.options:
        return (f"its filesystem ({mount.source}) is read-only: ext4 turned it read-only "
                "after an error, or it was remounted so outside gpudock")
    try:
        errors = int((EXT4_SYSFS / Path(mount.source).name / "errors_count").read_text())
    except (OSError, ValueError):
        return None
    return (f"its filesystem ({mount.source}) recorded {errors} error(s) since it was "
            "last checked (e2fsck)") if errors else None


def _loops_of(image: str) -> list[str]:
    """The loop devices that have this image file behind them."""
    return [line.split(":", 1)[0] for line in _run("losetup", "-j", image).splitlines()]


def _wait_released(image: str, seconds: float = RELEASE_WAIT_SECONDS) -> list[str]:
    """The loop devices still on the image once the kernel has had time to clear
    them. A device marked for clearing (losetup -d, or a mount's autoclear) goes
    at its last close; one that stays is in use: a second device on the same image
    would be a second, independent view of a live filesystem, and a check or a
    resize through it destroys what the live one writes."""
    deadline = time.monotonic() + seconds
    while (left := _loops_of(image)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _lengthen(handle: BinaryIO, size_bytes: int, root: Path) -> None:
    """Make the image file at least ``size_bytes`` long (a sparse tail; a file is
    never shortened here). What the filesystem under the volume root refuses is a
    refusal of the size asked (nothing else was changed), never an error that
    escapes: a file larger than that filesystem allows (ext4: 16 TiB), or no room."""
    if os.fstat(handle.fileno()).st_size >= _blocks(size_bytes):
        return
    try:
        handle.truncate(_blocks(size_bytes))
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise UserError(Reason.VOLUME_TOO_LARGE, f"{format_size(size_bytes)} is more "
                            f"than the filesystem under the volume root {root} allows one "
                            "file to be (the loopfile backend keeps a volume in one file); "
                            "nothing was changed") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(Reason.INSUFFICIENT_SPACE, f"no room for "
                            f"{format_size(size_bytes)} under the volume root {root}; "
                            "nothing was changed") from exc
        raise VolumeToolError(f"sizing the image of a volume under {root}: {exc}") from exc


def _blocks(size_bytes: int) -> int:
    """A size rounded down to whole filesystem blocks (at least one)."""
    return max(size_bytes // BLOCK, 1) * BLOCK
