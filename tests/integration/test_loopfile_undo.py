"""#10: the loopfile backend on real loop devices: an offline resize that was cut
short (its undo file still there) is undone before the volume is mounted again, so a
half-shrunk ext4 never reaches a container; and a filesystem still mounted somewhere
else is never checked or resized through a second loop device."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.volumes.loopfile import LoopfileBackend
from tests.stack.localstack import LocalStack

MiB = 2**20


def test_10_an_interrupted_offline_resize_is_undone_at_attach(stack: LocalStack,
                                                              tmp_path: Path) -> None:
    backend = LoopfileBackend(stack.base_dir / f"undo-{tmp_path.name}")
    backend.create("v", 256 * MiB)
    backend.attach("v")
    try:
        data = (backend.path("v") / "keep")
        data.write_bytes(bytes(range(256)) * (16 * MiB // 256))
        want = hashlib.sha256(data.read_bytes()).hexdigest()
        backend.resize_offline("v", 96 * MiB)
        assert backend.state("v").size_bytes == 96 * MiB  # type: ignore[union-attr]
        # Shrink once more, and "crash" after resize2fs but before the undo file is
        # removed: what attach finds then is a resize to take back.
        backend.detach("v")
        undo = backend.root / "images" / "v.undo"
        with backend._loop_device("v") as device:
            # resize2fs refuses a filesystem mounted since its last full check (it
            # compares whole seconds, so without this the test passed or failed by
            # the clock), exactly as resize_offline does before its own resize.
            _tool("e2fsck", "-f", "-y", device, ok=(0, 1))
            _tool("resize2fs", "-z", str(undo), device, "64M")
        assert undo.exists()
        backend.attach("v")
        assert not undo.exists()
        assert backend.state("v").size_bytes == 96 * MiB  # type: ignore[union-attr]
        got = hashlib.sha256((backend.path("v") / "keep").read_bytes()).hexdigest()
        assert got == want
    finally:
        backend.delete("v")
    assert not list(backend.root.glob("images/*"))
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(backend.root) not in loops


def test_10_a_filesystem_still_mounted_elsewhere_is_not_resized(stack: LocalStack,
                                                               tmp_path: Path) -> None:
    """A second mount of the volume (as a container's hold on its Docker volume
    would be) keeps the filesystem live after the agent's own unmount: the shrink is
    refused, the data stays whole, and it goes through once the holder lets go."""
    backend = LoopfileBackend(stack.base_dir / f"held-{tmp_path.name}")
    holder = stack.base_dir / f"holder-{tmp_path.name}"
    holder.mkdir()
    backend.create("v", 128 * MiB)
    backend.attach("v")
    try:
        data = backend.path("v") / "keep"
        data.write_bytes(bytes(range(256)) * (8 * MiB // 256))
        want = hashlib.sha256(data.read_bytes()).hexdigest()
        _tool("mount", "--bind", str(backend.path("v")), str(holder))
        try:
            with pytest.raises(VolumeToolError, match="still open through /dev/loop"):
                backend.resize_offline("v", 64 * MiB)
            assert backend.state("v").size_bytes == 128 * MiB  # type: ignore[union-attr]
            assert hashlib.sha256((holder / "keep").read_bytes()).hexdigest() == want
        finally:
            _tool("umount", str(holder))
        backend.resize_offline("v", 64 * MiB)
        assert backend.state("v").size_bytes == 64 * MiB  # type: ignore[union-attr]
        got = hashlib.sha256((backend.path("v") / "keep").read_bytes()).hexdigest()
        assert got == want
    finally:
        backend.delete("v")
        holder.rmdir()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(backend.root) not in loops


def _tool(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    """Run a filesystem tool; a failure shows what the tool said."""
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode in ok, f"{argv}: exit {done.returncode}: {done.stderr}{done.stdout}"
