"""#10: the loopfile backend on real loop devices: an offline resize that was cut
short (its undo file still there) is undone before the volume is mounted again, so a
half-shrunk ext4 never reaches a container; and a filesystem still mounted somewhere
else is never checked or resized through a second loop device. #28 item 12: an undo
file e2undo refuses (resize2fs killed as it began) is dropped when the filesystem is
clean, and a filesystem that is not clean is never mounted."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.volumes.loopfile import LoopfileBackend
from gpudock.api.reasons import Reason
from gpudock.errors import UserError
from tests.integration.conftest import AgentFactory
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, event_reasons

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


# What a resize2fs SIGKILLed as it began leaves (seen with e2fsprogs 1.47): an undo
# file still empty, or with its header not written yet. e2undo refuses both.
CUT_AT_START = {"empty": b"", "no header yet": bytes(2048)}


@pytest.mark.parametrize("left", sorted(CUT_AT_START))
def test_28_12_an_undo_file_e2undo_refuses_is_dropped_on_a_clean_filesystem(
    stack: LocalStack, tmp_path: Path, left: str,
) -> None:
    backend = LoopfileBackend(stack.base_dir / f"refused-{tmp_path.name}")
    backend.create("v", 128 * MiB)
    backend.attach("v")
    try:
        data = backend.path("v") / "keep"
        data.write_bytes(bytes(range(256)) * (8 * MiB // 256))
        want = hashlib.sha256(data.read_bytes()).hexdigest()
        backend.detach("v")
        undo = backend.root / "images" / "v.undo"
        undo.write_bytes(CUT_AT_START[left])
        image = str(backend.root / "images" / "v.ext4")
        refused = subprocess.run(["e2undo", "-n", str(undo), image], capture_output=True)
        assert refused.returncode != 0  # what the agent met: e2undo will not use it
        warning = backend.attach("v")
        assert warning is not None
        assert warning[0] == Reason.UNDO_FILE_DROPPED
        assert "e2fsck" in warning[1]
        assert not undo.exists()
        assert backend.state("v").attached  # type: ignore[union-attr]
        assert backend.state("v").size_bytes == 128 * MiB  # type: ignore[union-attr]
        assert hashlib.sha256(data.read_bytes()).hexdigest() == want
    finally:
        backend.delete("v")
    assert not list(backend.root.glob("images/*"))


def test_28_12_a_filesystem_not_clean_after_a_cut_resize_is_not_mounted(
    stack: LocalStack, tmp_path: Path,
) -> None:
    backend = LoopfileBackend(stack.base_dir / f"unclean-{tmp_path.name}")
    backend.create("v", 64 * MiB)
    backend.attach("v")
    try:
        (backend.path("v") / "keep").write_bytes(b"x" * MiB)
        backend.detach("v")
        image = str(backend.root / "images" / "v.ext4")
        _tool("debugfs", "-w", "-R", "clri /keep", image)  # its inode wiped: not clean
        undo = backend.root / "images" / "v.undo"
        undo.write_bytes(b"")
        with pytest.raises(UserError) as refused:
            backend.attach("v")
        assert refused.value.reason == Reason.RESIZE_UNDO_FAILED
        assert "not clean" in refused.value.message
        assert undo.exists()  # kept, for whoever checks the image
        assert not backend.state("v").attached  # type: ignore[union-attr]
        loops = subprocess.run(["losetup", "-j", image], capture_output=True, text=True)
        assert loops.stdout == ""  # the check's loop device is gone too
    finally:
        backend.delete("v")


def test_28_12_the_agent_killed_as_a_shrink_begins_recovers_with_the_data(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    """SIGKILL the agent the moment resize2fs has made its undo file (resize2fs dies
    with it): e2undo refuses that file; the restarted agent checks the filesystem,
    drops the file, mounts the volume and shrinks it, the data whole."""
    agent = start_agent(extra_args=["--resync-seconds", "2"])
    apply(stack, namespace, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                             "metadata": {"name": "data"},
                             "spec": {"nodeName": "gpu-node-1", "size": "256Mi"}})
    _svol_at(stack, namespace, 256 * MiB)
    mounts = list(agent.state_dir.glob("volumes/mounts/*"))
    assert len(mounts) == 1
    keep = mounts[0] / "keep"
    with open(keep, "wb") as handle:
        for block in range(40):
            handle.write(hashlib.sha256(str(block).encode()).digest() * (MiB // 32))
    want = hashlib.sha256(keep.read_bytes()).hexdigest()
    undo = next(agent.state_dir.glob("volumes/images/*.ext4")).with_suffix(".undo")
    refused = False
    for size in (224, 192, 160, 128, 96):  # shrinks, until one is cut where it counts
        stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                      "-p", json.dumps({"spec": {"size": f"{size}Mi"}}))
        deadline = time.monotonic() + 30
        while not undo.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)  # react within a millisecond of resize2fs's first write
        agent.kill()
        agent.wait_exit(30)
        refused = undo.exists() and subprocess.run(
            ["e2undo", "-n", str(undo), str(undo.with_suffix(".ext4"))],
            capture_output=True).returncode != 0
        agent = start_agent(extra_args=["--resync-seconds", "2"])
        _svol_at(stack, namespace, size * MiB)
        assert not undo.exists()
        assert hashlib.sha256(keep.read_bytes()).hexdigest() == want
        if refused:  # the case of the item: shown once is enough
            break
    assert refused, "no attempt killed resize2fs before its undo file could be used"
    wait_for(lambda: "UndoFileDropped" in event_reasons(stack, namespace, "data"), 30,
             what="the UndoFileDropped warning posted")


def _svol_at(stack: LocalStack, namespace: str, size_bytes: int) -> None:
    def status() -> dict[str, object]:
        found = stack.kubectl("get", "svol", "data", "-n", namespace, "-o", "json",
                              check=False)
        return dict(json.loads(found.stdout).get("status") or {}) \
            if found.returncode == 0 else {}
    wait_for(lambda: status().get("phase") == "Ready" and
             status().get("sizeBytes") == size_bytes, 90,
             what=f"data Ready at {size_bytes} bytes (now {status()})")
