"""#28 item 2 against the real stack: loopfile volumes are never overcommitted (every
volume's whole size is reserved on the filesystem under the volume root, a create or
a grow that does not fit is refused and nothing changes), a file deleted in a volume
gives its blocks back to that filesystem (discard), and a volume whose filesystem
went read-only is not Ready. The volume root is a small ext4 of the test's own, so
"full" is reached with a few MiB. Test names carry the item of issue #28 they show."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudock.adapters.volumes.loopfile import LoopfileBackend
from tests.integration.conftest import AgentFactory
from tests.stack import filesystems
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply

MiB = 2**20


@pytest.fixture
def small_root(stack: LocalStack) -> Iterator[Path]:
    """A 256 MiB ext4 (no blocks kept for root) as the volume root; set up before the
    agent, so it is unmounted after the test's volumes are deleted."""
    with filesystems.loop_mounted(stack.base_dir, ["mkfs.ext4", "-q", "-F", "-m", "0"],
                                  size="256M") as root:
        yield root


def _volume(name: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
            "metadata": {"name": name}, "spec": {"nodeName": "gpu-node-1", "size": size}}


def _svol(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    found = stack.kubectl("get", "svol", name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(found.stdout).get("status") or {}) if found.returncode == 0 else {}


def _condition(stack: LocalStack, namespace: str, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in _svol(stack, namespace, name).get("conditions") or ()
                 if c.get("type") == kind), {})


def _ready_at(stack: LocalStack, namespace: str, name: str, size_bytes: int) -> dict[str, Any]:
    def ready() -> bool:
        now = _svol(stack, namespace, name)
        return now.get("phase") == "Ready" and now.get("sizeBytes") == size_bytes and \
            _condition(stack, namespace, name, "Degraded").get("status") == "False"
    wait_for(ready, 60, what=f"{name} Ready at {size_bytes} bytes "
                             f"(now {_svol(stack, namespace, name)})")
    return _svol(stack, namespace, name)


def _refused(stack: LocalStack, namespace: str, name: str, reason: str) -> dict[str, Any]:
    wait_for(lambda: _condition(stack, namespace, name, "Degraded").get("reason") == reason,
             45, what=f"{name} refused with {reason} (now {_svol(stack, namespace, name)})")
    return _condition(stack, namespace, name, "Degraded")


def _free(root: Path) -> int:
    info = os.statvfs(root)
    return info.f_bavail * info.f_frsize


def _fill(path: Path, mib: int) -> str:
    """Write ``mib`` MiB of data that is not zeros (so no layer turns it into holes)
    and flush it to the image file; returns its SHA-256."""
    chunk = hashlib.sha256(path.name.encode()).digest() * (MiB // 32)
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(chunk * mib).hexdigest()


def test_28_2_a_grow_past_what_is_left_is_refused_and_the_volume_serves_on(
    stack: LocalStack, namespace: str, small_root: Path, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2", "--volume-root", str(small_root)])
    apply(stack, namespace, _volume("big", "128Mi"), _volume("data", "64Mi"))
    _ready_at(stack, namespace, "big", 128 * MiB)
    data = _ready_at(stack, namespace, "data", 64 * MiB)
    mount = small_root / "mounts" / data["volumeName"]
    want = _fill(mount / "keep", 8)
    image = next(small_root.glob(f"images/{data['volumeName']}.ext4"))
    # Room on the disk for 64 MiB more, but not once big's 128 MiB are kept for it.
    assert _free(small_root) > 64 * MiB
    assert _free(small_root) - (128 + 56) * MiB < 64 * MiB
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"size": "128Mi"}}))
    refusal = _refused(stack, namespace, "data", "InsufficientSpace")
    assert "128Mi asked" in refusal["message"]
    now = _svol(stack, namespace, "data")
    assert (now["phase"], now["sizeBytes"]) == ("Ready", 64 * MiB)  # serves on, as it was
    assert image.stat().st_size == 64 * MiB  # not a byte reserved
    assert hashlib.sha256((mount / "keep").read_bytes()).hexdigest() == want
    # What is left is still given: a grow by less than that goes through.
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"size": "80Mi"}}))
    _ready_at(stack, namespace, "data", 80 * MiB)
    assert hashlib.sha256((mount / "keep").read_bytes()).hexdigest() == want


def test_28_2_volumes_past_the_disk_are_refused_and_the_others_untouched(
    stack: LocalStack, namespace: str, small_root: Path, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2", "--volume-root", str(small_root)])
    apply(stack, namespace, _volume("a", "128Mi"), _volume("b", "64Mi"))
    a = _ready_at(stack, namespace, "a", 128 * MiB)
    _ready_at(stack, namespace, "b", 64 * MiB)
    assert _free(small_root) > 64 * MiB  # the disk alone would take one more
    apply(stack, namespace, _volume("c", "64Mi"))
    refusal = _refused(stack, namespace, "c", "InsufficientSpace")
    assert "64Mi asked" in refusal["message"]
    c = _svol(stack, namespace, "c")
    assert (c["phase"], c.get("volumeName")) == ("Failed", None)
    assert _condition(stack, namespace, "c", "Ready")["status"] == "False"
    assert len(list(small_root.glob("images/*"))) == 2  # c has no file
    for name, size in (("a", 128 * MiB), ("b", 64 * MiB)):
        _ready_at(stack, namespace, name, size)
    # Room made (a deleted) is taken by c by itself.
    stack.kubectl("delete", "svol", "a", "-n", namespace, "--timeout=60s")
    assert not (small_root / "images" / f"{a['volumeName']}.ext4").exists()
    _ready_at(stack, namespace, "c", 64 * MiB)


def test_28_2_a_file_deleted_in_a_volume_gives_its_blocks_back(
    stack: LocalStack, namespace: str, small_root: Path, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2", "--volume-root", str(small_root)])
    apply(stack, namespace, _volume("data", "128Mi"))
    data = _ready_at(stack, namespace, "data", 128 * MiB)
    mount = small_root / "mounts" / data["volumeName"]
    image = small_root / "images" / f"{data['volumeName']}.ext4"
    _fill(mount / "big", 64)
    subprocess.run(["sync", "-f", str(mount)], check=True)
    written = image.stat().st_blocks * 512
    assert written >= 64 * MiB
    (mount / "big").unlink()

    def given_back() -> bool:
        subprocess.run(["sync", "-f", str(mount)], check=True)  # commits the journal
        return image.stat().st_blocks * 512 < written - 56 * MiB
    wait_for(given_back, 30, what=f"the image's blocks given back (was {written}, now "
                                  f"{image.stat().st_blocks * 512})")


def test_28_2_a_volume_whose_filesystem_went_read_only_is_not_ready(
    stack: LocalStack, namespace: str, small_root: Path, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2", "--volume-root", str(small_root)])
    apply(stack, namespace, _volume("data", "64Mi"))
    data = _ready_at(stack, namespace, "data", 64 * MiB)
    mount = small_root / "mounts" / data["volumeName"]
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    try:
        refusal = _refused(stack, namespace, "data", "VolumeFilesystemFailed")
        assert "read-only" in refusal["message"]
        assert _condition(stack, namespace, "data", "Ready")["status"] == "False"
        assert _svol(stack, namespace, "data")["phase"] == "Failed"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    _ready_at(stack, namespace, "data", 64 * MiB)  # sound again: Ready by itself


def test_28_2_errors_ext4_recorded_make_the_volume_unsound(stack: LocalStack,
                                                          tmp_path: Path) -> None:
    """The other sign of a broken volume: errors ext4 counted (set here in the
    superblock as ext4 would after one), read from /sys/fs/ext4/<loop>/errors_count;
    gone once e2fsck has checked it."""
    backend = LoopfileBackend(stack.base_dir / f"errors-{tmp_path.name}")
    backend.create("v", 64 * MiB)
    image = str(backend.root / "images" / "v.ext4")
    try:
        subprocess.run(["debugfs", "-w", "-R", "ssv error_count 3", image], check=True,
                       capture_output=True)
        backend.attach("v")
        fault = backend.state("v").fault  # type: ignore[union-attr]
        assert fault is not None
        assert "recorded 3 error(s)" in fault
        backend.detach("v")
        subprocess.run(["e2fsck", "-f", "-y", image], capture_output=True, check=False)
        backend.attach("v")
        assert backend.state("v").fault is None  # type: ignore[union-attr]
    finally:
        backend.delete("v")
