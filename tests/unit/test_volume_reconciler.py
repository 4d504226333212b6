"""The SizedVolume reconciler (volume_reconciler.py), the real one, on the copy
backend (adapters/volumes/copy.py: plain Docker volumes, a resize is a move into a
new one) over the fake Docker, whose volumes are real directories; and the
GpuReplicaSets that mount a volume."""

from __future__ import annotations

import pytest

from gpudock.adapters.docker.errors import DockerUnavailableError
from gpudock.errors import TransientError
from tests.unit.fakes.crash import AgentKilled
from tests.unit.fakes.node import NAMESPACE, SVOL, Node

MiB = 2**20
DATA = "/data/model.bin"
MOUNTS = [{"mountPath": "/data", "volume": "data"}]


def _ready_volume(node: Node, size: str = "64Mi") -> str:
    """A Ready volume ``data``; its Docker volume."""
    node.apply_volume("data", size)
    status = node.reconcile_volume("data")
    assert status["phase"] == "Ready", status
    return str(status["volumeName"])


def _volume_dir(node: Node, volume: str) -> str:
    info = node.docker.volume_info(volume)
    assert info is not None, f"no Docker volume {volume}"
    return str(info["Mountpoint"])


def _put(node: Node, volume: str, name: str, data: bytes) -> None:
    with open(f"{_volume_dir(node, volume)}/{name}", "wb") as handle:
        handle.write(data)


def _get(node: Node, volume: str, name: str) -> bytes:
    with open(f"{_volume_dir(node, volume)}/{name}", "rb") as handle:
        return handle.read()


def test_a_new_volume_is_made_recorded_and_ready(node: Node) -> None:
    volume = _ready_volume(node, "64Mi")
    status = node.status("data", SVOL)
    assert volume == f"{NAMESPACE}_data-1"
    assert node.docker.volume_exists(volume)
    assert (status["backend"], status["capacityBytes"], status["sizeBytes"]) == (
        "copy", 64 * MiB, 64 * MiB)
    assert [h["revision"] for h in status["history"]] == [1]
    records = node.store.list_volume(NAMESPACE, "data")
    assert [(r.revision, r.made, r.volume_id) for r in records] == [(1, True, volume)]
    assert node.condition("data", "Ready", SVOL)["status"] == "True"
    assert "VolumeCreated" in node.reasons("data")


def test_an_invalid_size_fails_and_makes_nothing(node: Node) -> None:
    node.apply_volume("data", "100Ki")  # below the 1Mi minimum
    status = node.reconcile_volume("data")
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert node.docker.volumes == {}
    assert node.store.list_volume(NAMESPACE, "data") == []


def test_growing_moves_the_data_into_a_bigger_volume(node: Node) -> None:
    first = _ready_volume(node, "64Mi")
    _put(node, first, "weights", b"w" * 1000)
    node.apply_volume("data", "128Mi")
    status = node.reconcile_volume("data")
    assert (status["phase"], status["volumeName"], status["sizeBytes"]) == (
        "Ready", f"{NAMESPACE}_data-2", 128 * MiB)
    assert _get(node, status["volumeName"], "weights") == b"w" * 1000
    assert not node.docker.volume_exists(first)  # nobody mounts it: removed
    assert [h["revision"] for h in status["history"]] == [1, 2]
    steps = [r for r in node.reasons("data") if r in ("VolumeMoved", "EarlierVolumeRemoved")]
    assert steps == ["VolumeMoved", "EarlierVolumeRemoved"]


def test_a_shrink_that_fits_is_done(node: Node) -> None:
    first = _ready_volume(node, "64Mi")
    _put(node, first, "small", b"s" * 100)
    node.apply_volume("data", "32Mi")
    status = node.reconcile_volume("data")
    assert (status["phase"], status["sizeBytes"]) == ("Ready", 32 * MiB)
    assert _get(node, status["volumeName"], "small") == b"s" * 100


def test_a_shrink_below_what_the_volume_holds_is_refused_and_changes_nothing(
        node: Node) -> None:
    volume = _ready_volume(node, "64Mi")
    _put(node, volume, "big", b"b" * (3 * MiB))
    before = (node.docker.snapshot(), node.store.list_volume(NAMESPACE, "data"))
    node.apply_volume("data", "2Mi")
    status = node.reconcile_volume("data")
    assert (status["phase"], status["reason"], status["volumeName"]) == (
        "Ready", "ShrinkBelowUsage", volume)  # still serves, as it was
    degraded = node.condition("data", "Degraded", SVOL)
    assert (degraded["status"], degraded["reason"]) == ("True", "ShrinkBelowUsage")
    assert (node.docker.snapshot(), node.store.list_volume(NAMESPACE, "data")) == before
    assert _get(node, volume, "big") == b"b" * (3 * MiB)
    assert node.reasons("data").count("ShrinkBelowUsage") == 1
    node.reconcile_volume("data")  # told once, not at every resync
    assert node.reasons("data").count("ShrinkBelowUsage") == 1


def test_a_volume_removed_outside_is_lost_and_never_made_again_empty(node: Node) -> None:
    volume = _ready_volume(node)
    node.docker.remove_volume(volume)  # `docker volume rm` by someone else
    status = node.reconcile_volume("data")
    assert (status["phase"], status["reason"]) == ("Failed", "VolumeLost")
    assert not node.docker.volume_exists(volume)


def test_docker_unavailable_leaves_the_volume_as_it_was(node: Node) -> None:
    volume = _ready_volume(node, "64Mi")
    _put(node, volume, "weights", b"w")
    node.apply_volume("data", "128Mi")
    node.docker.unavailable = True
    with pytest.raises(TransientError):
        node.reconcile_volume("data")
    node.docker.unavailable = False
    assert node.docker.volume_exists(volume)
    assert [r.revision for r in node.store.list_volume(NAMESPACE, "data")] == [1]
    assert _get(node, volume, "weights") == b"w"


@pytest.mark.parametrize("point", ["MoveVolume.usersStopped", "MoveVolume.copied",
                                   "MoveVolume.after"])
def test_an_agent_killed_during_a_move_converges_with_the_data(node: Node,
                                                               point: str) -> None:
    volume = _ready_volume(node, "64Mi")
    _put(node, volume, "weights", b"w" * 4096)
    node.start_agent("--crash-at", point)
    node.apply_volume("data", "128Mi")
    with pytest.raises(AgentKilled):
        node.reconcile_volume("data")
    node.start_agent()
    status = node.reconcile_volume("data")
    assert (status["phase"], status["sizeBytes"]) == ("Ready", 128 * MiB)
    assert _get(node, status["volumeName"], "weights") == b"w" * 4096
    assert [r.revision for r in node.store.list_volume(NAMESPACE, "data")] == [1, 2]


# ---------------------------------------------------- volumes and their users
def test_a_replica_set_waits_for_its_volume_then_mounts_it(node: Node) -> None:
    node.apply("box", mounts=MOUNTS)
    waiting = node.settle("box")
    assert (waiting["phase"], waiting["reason"]) == ("Pending", "VolumeNotReady")
    volume = _ready_volume(node)
    assert node.settle("box")["phase"] == "Running"
    container = node.only_container("box")
    node.docker.write_file(container.id, DATA, b"weights")
    assert _get(node, volume, "model.bin") == b"weights"  # it is the volume's file
    assert node.status("data", SVOL)["consumers"] == []  # as of its last reconcile
    assert node.reconcile_volume("data")["consumers"] == ["box"]


def test_a_volume_is_not_deleted_while_a_container_uses_it(node: Node) -> None:
    volume = _ready_volume(node)
    node.apply("box", mounts=MOUNTS)
    node.settle("box")
    assert node.delete_volume("data") == [f"{NAMESPACE}_box-1"]
    assert node.docker.volume_exists(volume)
    assert node.store.list_volume(NAMESPACE, "data") != []
    node.delete("box")
    assert node.delete_volume("data") == []
    assert not node.docker.volume_exists(volume)
    assert node.store.list_volume(NAMESPACE, "data") == []


def test_growing_a_mounted_volume_moves_its_user_onto_the_new_one(node: Node) -> None:
    first = _ready_volume(node, "64Mi")
    node.apply("box", mounts=MOUNTS)
    node.settle("box")
    container = node.only_container("box")
    node.docker.write_file(container.id, DATA, b"weights")
    node.docker.write_file(container.id, "/root/notes", b"mine")
    node.apply_volume("data", "128Mi")
    moved = node.reconcile_volume("data")
    second = moved["volumeName"]
    assert second == f"{NAMESPACE}_data-2"
    assert node.only_container("box").status == "exited"  # stopped for the copy
    assert node.docker.volume_exists(first)  # its user still mounts it
    status = node.settle("box")
    assert (status["phase"], status["revision"]) == ("Running", 2)
    assert status["history"][-1]["changeCause"] == (
        f"SizedVolume data moved to Docker volume {second}")
    container = node.only_container("box")
    assert node.docker.read_file(container.id, DATA) == b"weights"  # the copy
    assert node.docker.read_file(container.id, "/root/notes") == b"mine"  # the disk
    assert node.reconcile_volume("data")["phase"] == "Ready"
    assert not node.docker.volume_exists(first)  # nobody mounts it any more


def test_a_volume_whose_written_status_is_ready_but_is_gone_is_not_mounted(
        node: Node) -> None:
    volume = _ready_volume(node)
    assert node.status("data", SVOL)["phase"] == "Ready"
    node.docker.remove_volume(volume)  # gone from Docker; its status still says Ready
    node.apply("box", mounts=MOUNTS)
    status = node.settle("box")
    assert (status["phase"], status["reason"]) == ("Pending", "VolumeNotReady")
    assert node.containers("box") == []


def test_a_replica_set_follows_the_node_not_the_volumes_written_status(
        node: Node) -> None:
    node.apply_volume("data", "64Mi")
    made = node.reconcile_volume("data", write=False)  # its last write is lost
    assert made["phase"] == "Ready"
    assert node.status("data", SVOL)["phase"] == "Pending"  # the last progress write
    volume = made["volumeName"]
    assert node.docker.volume_exists(volume)
    node.apply("box", mounts=MOUNTS)
    status = node.settle("box")
    assert status["phase"] == "Running"
    assert node.only_container("box").mounts[0].source == volume


def test_docker_failing_on_a_volume_step_is_transient(node: Node) -> None:
    node.apply_volume("data", "64Mi")
    node.docker.fail_next("create_volume", DockerUnavailableError(
        "create volume: Docker failed (HTTP 500): mkdir: input/output error"))
    with pytest.raises(DockerUnavailableError):
        node.reconcile_volume("data")
    assert node.reconcile_volume("data")["phase"] == "Ready"


# ------------------------------------------- a backend that resizes in place
def test_an_in_place_backend_grows_a_mounted_volume_with_its_user_running(
        node: Node) -> None:
    backend = node.use_in_place_volumes()
    volume = _ready_volume(node, "64Mi")
    node.apply("box", mounts=MOUNTS)
    node.settle("box")
    container = node.only_container("box")
    node.docker.write_file(container.id, DATA, b"weights")
    node.apply_volume("data", "128Mi")
    status = node.reconcile_volume("data")
    assert (status["phase"], status["volumeName"], status["capacityBytes"]) == (
        "Ready", volume, 128 * MiB)  # the same volume, bigger
    assert [(r.size_bytes, r.online, r.running_users) for r in backend.resizes] == [
        (128 * MiB, True, (container.name,))]
    assert node.settle("box")["revision"] == 1  # nothing to roll: it never moved
    assert node.only_container("box").id == container.id
    assert node.docker.read_file(container.id, DATA) == b"weights"


def test_an_in_place_backend_shrinks_with_the_users_stopped_then_started_again(
        node: Node) -> None:
    backend = node.use_in_place_volumes()
    _ready_volume(node, "64Mi")
    node.apply("box", mounts=MOUNTS)
    node.settle("box")
    container = node.only_container("box")
    node.apply_volume("data", "32Mi")
    assert node.reconcile_volume("data")["sizeBytes"] == 32 * MiB
    (resize,) = backend.resizes
    assert (resize.online, resize.running_users) == (False, ())  # stopped meanwhile
    assert node.only_container("box").status == "running"  # and started again
    assert node.only_container("box").id == container.id


def test_a_volume_a_host_restart_detached_is_attached_again(node: Node) -> None:
    backend = node.use_in_place_volumes()
    volume = _ready_volume(node)
    backend.detach_all()
    node.start_agent("--volume-backend", backend.name)
    status = node.reconcile_volume("data")
    assert (status["phase"], status["volumeName"]) == ("Ready", volume)
    assert volume in backend.attached
    assert "VolumeAttached" in node.reasons("data")


def test_a_volume_about_to_shrink_is_not_mounted_meanwhile(node: Node) -> None:
    """A shrink is planned only once the filesystem's minimum is known: until the
    shrink is done (offline: unmounted) the volume is not one to mount; a shrink
    refused (below what it holds) leaves it usable as it was."""
    node.use_in_place_volumes()
    volume = _ready_volume(node, "64Mi")
    node.apply_volume("data", "32Mi")  # the spec changed; the volume's agent has not run
    body = node.kube.get(SVOL, NAMESPACE, "data")
    assert node.volumes.serving(body) is None
    node.reconcile_volume("data")
    assert node.volumes.serving(node.kube.get(SVOL, NAMESPACE, "data")) == volume
    _put(node, volume, "big", b"x" * (4 * MiB))
    node.apply_volume("data", "2Mi")  # below what it holds: refused, nothing changed
    assert node.reconcile_volume("data")["conditions"][-1]["reason"] == "ShrinkBelowUsage"
    assert node.volumes.serving(node.kube.get(SVOL, NAMESPACE, "data")) == volume
