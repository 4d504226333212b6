"""#28 items 9-11 against the real stack: what a tenant writes in its container or in
a copy-backend SizedVolume cannot break the node's handling of those trees. A sparse
terabyte (no disk used) neither blocks a stop nor a delete, nor a volume's move (9);
runs of written zeros survive a volume's move and a layer save, which keeps xattrs
(10); a tree 5000 directories deep survives an update, a volume's move and the
deletes (11). Test names carry the item."""

from __future__ import annotations

import os
import time
from pathlib import Path

import docker.models.containers
import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.integration.test_sized_volumes import _ready_with, _resize, _svol, _volume
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, containers, gpu_replica_set, gpus_in_use, status

MiB = 2**20
TiB = 2**40
DEPTH = 5000
XATTR = ("user.gpudock-test", b"kept")
ZEROS = "dd if=/dev/zero of={0} bs=1M count=4 2>/dev/null && echo tail >> {0} && sync"
TERABYTE = "dd of={0} bs=1M count=0 seek=1048576 2>/dev/null && echo end >> {0}"
pytestmark = pytest.mark.timeout(240)


def _merged(container: docker.models.containers.Container, path: str) -> Path:
    """A path of the running container's filesystem, seen from the host."""
    container.reload()
    return Path(f"/proc/{container.attrs['State']['Pid']}/root{path}")


def _make_deep(directory: Path) -> None:
    """``directory/d/d/.../d/bottom``, DEPTH levels (far past PATH_MAX; busybox's cd
    cannot go there, a program's chdir("d") can), made one name at a time."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        bottom = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(bottom, b"deep down")
        os.close(bottom)
    finally:
        os.close(fd)


def _read_deep(directory: Path) -> bytes:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        bottom = os.open("bottom", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(bottom, 100)
        finally:
            os.close(bottom)
    finally:
        os.close(fd)


def _with_volume(stack: LocalStack, namespace: str, start_agent: AgentFactory) -> None:
    """An agent on the copy backend, a 64Mi SizedVolume, an instance mounting it."""
    start_agent(extra_args=["--resync-seconds", "2", "--volume-backend", "copy"])
    apply(stack, namespace, _volume("data", "64Mi"),
          gpu_replica_set("user", mounts=[{"volume": "data", "mountPath": "/data"}]))
    wait_settled(stack, namespace, "user", timeout=60)
    _ready_with(stack, namespace, "data", 64 * MiB)


def _moved(stack: LocalStack, namespace: str, size: str, size_bytes: int) -> None:
    """Resize the copy volume; wait for the move and the instance's new revision."""
    revision = status(stack, namespace, "user")["revision"]
    _resize(stack, namespace, size)
    assert _ready_with(stack, namespace, "data", size_bytes)["volumeName"].endswith("-2")
    wait_settled(stack, namespace, "user", revision=revision + 1, timeout=60)


def _deleted_quickly(stack: LocalStack, namespace: str, kind: str, name: str) -> None:
    started = time.monotonic()
    stack.kubectl("delete", kind, name, "-n", namespace, "--timeout=60s")
    assert time.monotonic() - started < 30


# ------------------------------------------------------- 9: a sparse terabyte
def test_item9_a_sparse_terabyte_does_not_block_stop_or_delete(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    apply_spec(stack, namespace, "box", "first", gpus=2)
    wait_settled(stack, namespace, "box", revision=1, timeout=60)
    touch_the_disk(stack, namespace)
    sh(only_container(stack, namespace, "box"), TERABYTE.format("/root/huge"))
    # Docker's root is 20 GiB: by apparent sizes no save could fit.
    apply_spec(stack, namespace, "box", "stop", gpus=2, state="Stopped")
    wait_settled(stack, namespace, "box", phase="Stopped", timeout=60)
    assert containers(stack, namespace) == []
    assert gpus_in_use(stack, namespace) == []
    apply_spec(stack, namespace, "box", "start", gpus=2)
    wait_settled(stack, namespace, "box", timeout=60)
    assert_disk_kept(stack, namespace)
    kept = sh(only_container(stack, namespace, "box"),
              "stat -c '%s %b' /root/huge && tail -c 4 /root/huge").split()
    assert int(kept[0]) == TiB + 4
    assert int(kept[1]) * 512 < MiB  # still a hole
    assert kept[2] == "end"
    _deleted_quickly(stack, namespace, "grs", "box")
    assert containers(stack, namespace) == []


def test_item9_a_sparse_terabyte_in_a_copy_volume_moves_in_seconds(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _with_volume(stack, namespace, start_agent)
    sh(only_container(stack, namespace, "user"), TERABYTE.format("/data/huge"))
    wait_for(lambda: 0 < _svol(stack, namespace, "data").get("usedBytes", 0) < MiB, 30,
             what=f"the volume's use by blocks (now {_svol(stack, namespace, 'data')})")
    _moved(stack, namespace, "32Mi", 32 * MiB)  # a shrink: it holds next to nothing
    kept = sh(only_container(stack, namespace, "user"),
              "stat -c '%s %b' /data/huge && tail -c 4 /data/huge").split()
    assert (int(kept[0]), kept[2]) == (TiB + 4, "end")
    assert int(kept[1]) * 512 < MiB
    _deleted_quickly(stack, namespace, "grs", "user")
    _deleted_quickly(stack, namespace, "svol", "data")


# ---------------------------------------------------------- 10: runs of zeros
def test_item10_zero_runs_survive_a_copy_volume_resize_and_a_layer_save_keeps_xattrs(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _with_volume(stack, namespace, start_agent)
    first = only_container(stack, namespace, "user")
    sh(first, ZEROS.format("/root/zeros") + " && " + ZEROS.format("/data/zeros"))
    os.setxattr(_merged(first, "/root/zeros"), *XATTR)
    sums = sh(first, "md5sum /root/zeros /data/zeros")

    # A layer save: the zeros are copied as they are, the xattr with them (a commit
    # would have dropped it).
    body = gpu_replica_set("user", gpus=2, mounts=[{"volume": "data", "mountPath": "/data"}])
    apply(stack, namespace, body)
    wait_settled(stack, namespace, "user", revision=2, timeout=60)
    second = only_container(stack, namespace, "user")
    assert sh(second, "md5sum /root/zeros /data/zeros") == sums
    assert os.getxattr(_merged(second, "/root/zeros"), XATTR[0]) == XATTR[1]

    # A volume's move: the copy's check takes the zeros for what they are.
    _moved(stack, namespace, "128Mi", 128 * MiB)
    third = only_container(stack, namespace, "user")
    assert sh(third, "md5sum /root/zeros /data/zeros") == sums
    assert os.getxattr(_merged(third, "/root/zeros"), XATTR[0]) == XATTR[1]


# ---------------------------------------------------------- 11: 5000 levels deep
def test_item11_a_5000_deep_tree_survives_update_and_delete(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _with_volume(stack, namespace, start_agent)
    first = only_container(stack, namespace, "user")
    sh(first, "mkdir /root/deep /data/deep")
    _make_deep(_merged(first, "/root/deep"))
    _make_deep(_merged(first, "/data/deep"))
    touch_the_disk(stack, namespace, name="user")

    # An update: the container's disk, deep tree and all, is saved and handed on.
    body = gpu_replica_set("user", gpus=2, mounts=[{"volume": "data", "mountPath": "/data"}])
    apply(stack, namespace, body)
    wait_settled(stack, namespace, "user", revision=2, timeout=60)
    second = only_container(stack, namespace, "user")
    assert _read_deep(_merged(second, "/root/deep")) == b"deep down"
    assert_disk_kept(stack, namespace, name="user")

    # The volume is measured and moved, deep tree and all.
    wait_for(lambda: _svol(stack, namespace, "data").get("usedBytes", 0) > DEPTH * 4096,
             30, what=f"the volume's use measured (now {_svol(stack, namespace, 'data')})")
    _moved(stack, namespace, "128Mi", 128 * MiB)
    third = only_container(stack, namespace, "user")
    assert _read_deep(_merged(third, "/data/deep")) == b"deep down"
    assert _read_deep(_merged(third, "/root/deep")) == b"deep down"

    _deleted_quickly(stack, namespace, "grs", "user")
    _deleted_quickly(stack, namespace, "svol", "data")
    assert containers(stack, namespace) == []
