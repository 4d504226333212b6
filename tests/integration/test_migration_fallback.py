"""#23 item 4, after the switch: a target that cannot run the instance gives it back,
and the source runs the same container again with the same disk and its SizedVolume
(docs/migration.md, "Falling back"); also with either agent SIGKILLed at its
fallback crash point. Against the two-node fleet, each node its own dockerd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.fleet import Fleet, running_fleet
from tests.integration.revisions import sh
from tests.integration.test_migration import (
    _apply,
    _container,
    _get,
    _image_only_on_a,
    _instance,
    _migration,
    _ready_on,
    _status,
    _volumes,
    _wait_phase,
)
from tests.stack.localstack import LocalStack, wait_for

DISK = "head -c 4194304 /dev/urandom > /root/mine && sync && sha256sum /root/mine"
VOLUME = "head -c 2097152 /dev/urandom > /data/kept && sync && sha256sum /data/kept"


@pytest.fixture
def fleet(stack: LocalStack, namespace: str) -> Iterator[Fleet]:
    _image_only_on_a(stack)
    with running_fleet(stack, namespace) as running:
        yield running


def _runs_on_a_only(fleet: Fleet, a: str) -> list[str]:
    """A command that serves on node a's GPUs and exits 3 on any other's: a target
    that cannot run it (as a broken driver or a missing device would)."""
    status: Any = fleet.stack.kubectl_json("get", "gpunode", a)["status"]
    uuids = [g["uuid"] for g in status["gpus"]]
    assert uuids
    pattern = "|".join(f"*{u}*" for u in uuids)
    return ["sh", "-c", f'case "$NVIDIA_VISIBLE_DEVICES" in {pattern}) exec sleep 100000;; '
            'esac; echo "not my GPU: $NVIDIA_VISIBLE_DEVICES" >&2; exit 3']


@pytest.mark.parametrize(("side", "point"), [
    ("", ""), ("source", "Migrate.fallingBack"), ("target", "Migrate.givenBack")])
def test_23_4_a_target_that_cannot_run_it_gives_it_back_to_the_same_container(
        fleet: Fleet, side: str, point: str) -> None:
    a, b = fleet.nodes
    crashing = {"source": a, "target": b}.get(side, "")
    if crashing:
        fleet.agents[crashing].stop()
        fleet.start_agent(crashing, extra_args=["--crash-at", point])
    _apply(fleet, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                   "metadata": {"name": "homesick-data"}, "spec": {"size": "64Mi"}})
    _apply(fleet, _instance("homesick", command=_runs_on_a_only(fleet, a),
                            mounts=[{"volume": "homesick-data", "mountPath": "/data"}]))
    wait_for(lambda: _ready_on(fleet, "homesick", a), 90, what="homesick on a")
    disk = sh(_container(fleet, a, "homesick"), DISK)
    volume = sh(_container(fleet, a, "homesick"), VOLUME)
    before = _container(fleet, a, "homesick").id

    _migration(fleet, "no-way-back", "homesick", b)
    if crashing:
        assert fleet.agents[crashing].wait_exit(180) is not None, f"no crash at {point}"
        fleet.agents[crashing].stop()  # (dead already: only its log is closed)
        fleet.start_agent(crashing)  # the same state dir
    _wait_phase(fleet, "no-way-back", "Succeeded", "Failed", "Cancelled", timeout=240)
    status = _status(fleet, "gmig", "no-way-back")
    assert (status["phase"], status["reason"]) == ("Failed", "TargetFailed"), status
    assert status["fallback"]["reason"] in ("CrashLoop", "ContainerNotRunning"), status
    assert f"it runs on node {a} again" in status["message"], status
    print(f"fallback ({point or 'no crash'}): {json.dumps(status['fallback'])}")

    # The same container, the same disk and volume, on a alone.
    wait_for(lambda: _ready_on(fleet, "homesick", a), 90, what="homesick on a again")
    assert _container(fleet, a, "homesick").id == before
    assert sh(_container(fleet, a, "homesick"), "sha256sum /root/mine") == disk
    assert sh(_container(fleet, a, "homesick"), "sha256sum /data/kept") == volume
    assert fleet.containers(b) == []
    grs = _get(fleet, "grs", "homesick")
    assert grs["metadata"]["finalizers"] == [f"node.gpudock.dev/{a}"]
    assert "gpudock.dev/migration-fallback" not in (grs["metadata"].get("annotations") or {})
    assert _status(fleet, "svol", "homesick-data")["nodeName"] == a
    wait_for(lambda: _get(fleet, "svol", "homesick-data")["metadata"]["finalizers"] == [
        f"node.gpudock.dev/{a}"], 30, what="the volume held by a alone")
    # What the transfer brought to b goes; its GPU is free again.
    wait_for(lambda: _volumes(fleet, b, "homesick-data") == [], 60,
             what="no Docker volume of it left on b")
    wait_for(lambda: _node_status(fleet, b).get("gpusAllocated") == 0, 30,
             what="no GPU held on b")


def _node_status(fleet: Fleet, node: str) -> dict[str, Any]:
    status: Any = fleet.stack.kubectl_json("get", "gpunode", node)["status"]
    return dict(status)
