"""#23: a SizedVolume that only the migrating instance mounts moves with it, every
byte, to a volume of the same size made on the target's own backend; one that
another instance mounts too blocks the move before anything stops
(docs/migration.md, "SizedVolumes")."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.fleet import Fleet, running_fleet
from tests.integration.revisions import sh
from tests.integration.test_migration import (
    XATTR,
    _apply,
    _container,
    _finished,
    _get,
    _image_only_on_a,
    _instance,
    _merged,
    _migration,
    _ready_on,
    _status,
    _volumes,
    _wait_phase,
)
from tests.stack.localstack import LocalStack, wait_for

FILES = """
for f in /data/random /data/twin /data/sparse /data/dir /data/dir/owned; do
  stat -c '%n %F %a %u:%g %s %h' "$f"
done
sha256sum /data/random /data/dir/owned
[ /data/random -ef /data/twin ] && echo "random and twin are one file"
tail -c 5 /data/sparse
"""
WRITE = """
mkdir -p /data/dir
head -c 33554432 /dev/urandom > /data/random
ln /data/random /data/twin
dd if=/dev/zero of=/data/sparse bs=1 count=0 seek=134217728 2>/dev/null
printf tail! >> /data/sparse
echo owned > /data/dir/owned && chown 1234:5678 /data/dir/owned && chmod 640 /data/dir/owned
"""


@pytest.fixture
def fleet(stack: LocalStack, namespace: str) -> Iterator[Fleet]:
    _image_only_on_a(stack)
    with running_fleet(stack, namespace) as running:
        yield running


def _volume(name: str, size: str = "256Mi") -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
            "metadata": {"name": name}, "spec": {"size": size}}


def _mounting(name: str, volume: str) -> dict[str, Any]:
    return _instance(name, mounts=[{"volume": volume, "mountPath": "/data"}])


def test_23_2_an_exclusive_sized_volume_moves_with_its_data(fleet: Fleet) -> None:
    a, b = fleet.nodes
    _apply(fleet, _volume("data"))
    _apply(fleet, _mounting("user", "data"))
    wait_for(lambda: _ready_on(fleet, "user", a), 90, what="user on a")
    assert _status(fleet, "svol", "data")["nodeName"] == a  # bound with its consumer
    sh(_container(fleet, a, "user"), WRITE)
    os.setxattr(_merged(_container(fleet, a, "user"), "/data/random"), *XATTR)
    files = sh(_container(fleet, a, "user"), FILES)
    assert "random and twin are one file" in files
    assert _volumes(fleet, a, "data")

    _migration(fleet, "move-data", "user", b)
    _wait_phase(fleet, "move-data", "Succeeded", "Failed", "Cancelled")
    status = _status(fleet, "gmig", "move-data")
    assert status["phase"] == "Succeeded", status
    assert status["sizedVolumes"][0]["name"] == "data"
    assert status["bytesDone"] >= 32 << 20
    wait_for(lambda: _ready_on(fleet, "user", b), 60, what="user on b")
    moved = _container(fleet, b, "user")
    assert sh(moved, FILES) == files
    assert os.getxattr(_merged(moved, "/data/random"), XATTR[0]) == XATTR[1]
    assert int(sh(moved, "stat -c %b /data/sparse")) * 512 < 1 << 20  # holes kept

    def volume_on_b() -> bool:
        volume = _status(fleet, "svol", "data")
        return volume.get("nodeName") == b and volume.get("phase") == "Ready"

    wait_for(volume_on_b, 60, what="the volume Ready on b")
    body = _get(fleet, "svol", "data")
    assert body["metadata"]["finalizers"] == [f"node.gpudock.dev/{b}"]
    assert body["status"]["capacityBytes"] >= 200 << 20  # the same size there
    assert _volumes(fleet, a, "data") == []  # nothing of it left on the source
    assert _volumes(fleet, b, "data")
    sh(moved, "echo after > /data/after")  # writable there
    assert sh(moved, "cat /data/after").strip() == "after"


def test_23_2_a_volume_another_instance_mounts_blocks_the_move(fleet: Fleet) -> None:
    a, b = fleet.nodes
    _apply(fleet, _volume("shared", "64Mi"))
    _apply(fleet, _mounting("one", "shared"))
    wait_for(lambda: _ready_on(fleet, "one", a), 90, what="one on a")
    _apply(fleet, _mounting("two", "shared"))
    wait_for(lambda: _ready_on(fleet, "two", a), 90, what="two on a (pinned by the volume)")
    before = _container(fleet, a, "one").id

    _migration(fleet, "move-one", "one", b)
    _wait_phase(fleet, "move-one", "Failed", "Succeeded", "Cancelled")
    status = _status(fleet, "gmig", "move-one")
    assert (status["phase"], status["reason"]) == ("Failed", "NotMigratable"), status
    assert "SizedVolume shared is mounted by GpuReplicaSet two too" in status["message"]
    assert _finished(fleet, "move-one") == "Failed"
    assert _ready_on(fleet, "one", a)
    assert _container(fleet, a, "one").id == before  # never stopped
    assert _status(fleet, "svol", "shared")["nodeName"] == a
    assert json.dumps(_get(fleet, "svol", "shared")["metadata"]["finalizers"]) == \
        json.dumps([f"node.gpudock.dev/{a}"])
