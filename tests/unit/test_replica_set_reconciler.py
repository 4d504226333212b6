"""The GpuReplicaSet reconciler (reconciler.py, disk_saves.py), the real one, run
through the fakes (tests/unit/fakes): what the integration suites show against a
real dockerd and kube-apiserver, in milliseconds. The node has 4 simulated GPUs and
saves disks with docker commit (the fake Docker is not overlay2)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from gpudock import metrics
from gpudock.adapters.docker.errors import DockerUnavailableError, StaleTaskError
from gpudock.agent import replica_set_reconciler
from gpudock.api.container_fields import Protocol
from gpudock.core import labels
from gpudock.core.observed import HostPort
from gpudock.errors import TransientError
from tests.unit.fakes.crash import AgentKilled
from tests.unit.fakes.docker import FakeContainer
from tests.unit.fakes.node import GRS, IMAGE, NAMESPACE, OTHER_IMAGE, Node

MARKER = "/root/installed-by-user"
DELETED = "/etc/os-release"  # a file of the image the user deleted


def _touch_the_disk(node: Node, name: str = "box", content: bytes = b"v1") -> None:
    """What a user does in a GPU container: install something, remove something."""
    container = node.only_container(name)
    node.docker.write_file(container.id, MARKER, content)
    node.docker.delete_file(container.id, DELETED)


def _assert_disk_kept(node: Node, name: str = "box", content: bytes = b"v1") -> None:
    container = node.only_container(name)
    assert node.docker.read_file(container.id, MARKER) == content
    assert node.docker.read_file(container.id, DELETED) is None


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def _running(node: Node, name: str = "box", **spec: Any) -> FakeContainer:
    """Apply, settle, check it runs; its container, with files of the user's."""
    node.apply(name, "first", **spec)
    status = node.settle(name)
    assert (status["phase"], status["revision"]) == ("Running", 1), status
    _touch_the_disk(node, name)
    return node.only_container(name)


def _env(container: FakeContainer) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.env if "=" in e)


# ----------------------------------------------------------------------- create
def test_a_new_resource_runs_with_the_gpus_it_asked_for(node: Node) -> None:
    node.apply("box", "first", gpus=2)
    status = node.settle("box")
    container = node.only_container("box")
    assert container.status == "running"
    assert container.name == f"{NAMESPACE}_box-1"
    assert (status["phase"], status["revision"], status.get("reason")) == ("Running", 1, None)
    assert _conditions(status) == {"Ready": ("True", "ContainerRunning"),
                                   "Progressing": ("False", "ReconcileComplete"),
                                   "Degraded": ("False", "AsExpected"),
                                   "Reconciling": ("False", "ReconcileComplete"),
                                   "Stalled": ("False", "AsExpected")}
    assert len(status["gpus"]) == len(set(status["gpus"])) == 2
    assert set(status["gpus"]) <= set(node.gpu_uuids())
    # The status says what Docker says.
    assert status["gpus"] == list(container.gpus)
    assert (status["containerID"], status["containerName"]) == (container.id, container.name)
    assert _env(container)["NVIDIA_VISIBLE_DEVICES"] == ",".join(status["gpus"])
    assert container.runtime == "nvidia"
    assert container.labels[labels.UID] == node.uid("box")
    assert container.restart_policy == "unless-stopped"
    assert status["history"][0]["changeCause"] == "first"
    assert node.reasons("box") == ["Created"]


def test_a_resource_without_gpus_sees_none(node: Node) -> None:
    node.apply("cpu", gpus=0)
    assert node.settle("cpu")["gpus"] == []
    container = node.only_container("cpu")
    assert _env(container)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert container.runtime is None


def test_host_ports_come_from_the_node_range_and_a_port_held_outside_docker_is_skipped(
        node: Node) -> None:
    node.docker.outside_ports.add(HostPort(40000, Protocol.TCP))  # another process has it
    node.apply("box", ports=[{"containerPort": 22}])
    status = node.settle("box")
    assert status["ports"] == [{"containerPort": 22, "hostPort": 40001, "protocol": "TCP"}]
    assert "HostPortSkipped" in node.reasons("box")
    node.apply("box", gpus=2, ports=[{"containerPort": 22}])
    assert node.settle("box")["ports"][0]["hostPort"] == 40001  # kept by the update


def test_an_image_not_on_the_node_is_the_users_to_load(node: Node) -> None:
    node.apply("box", image="example.com/not-here:1", imagePullPolicy="Never")
    status = node.settle("box")
    assert (status["phase"], status["reason"]) == ("Failed", "ImageNotPresent")
    assert node.condition("box", "Degraded")["status"] == "True"
    assert node.containers("box") == []
    assert "ImageNotPresent" in node.reasons("box")


def test_a_host_path_is_mounted_only_under_an_allowed_root(node: Node) -> None:
    allowed = node.tmp / "host"
    (allowed / "data").mkdir(parents=True)
    node.start_agent("--allowed-host-path", str(allowed))
    node.apply("inside", mounts=[{"hostPath": str(allowed / "data"), "mountPath": "/data"}])
    node.apply("outside", mounts=[{"hostPath": "/etc", "mountPath": "/host-etc"}])
    assert node.settle("inside")["phase"] == "Running"
    node.docker.write_file(node.only_container("inside").id, "/data/out.txt", b"hi")
    assert (allowed / "data" / "out.txt").read_bytes() == b"hi"  # the host's directory
    refused = node.settle("outside")
    assert (refused["phase"], refused["reason"]) == ("Failed", "HostPathNotAllowed")
    assert "/etc is not under an allowed root" in node.condition("outside", "Degraded")[
        "message"]
    assert node.containers("outside") == []


# ---------------------------------------------------------------------- updates
def test_more_gpus_keep_the_disk_and_make_revision_2(node: Node) -> None:
    first = _running(node, gpus=1)
    held = node.status("box")["gpus"]
    node.apply("box", "three GPUs", gpus=3)
    status = node.settle("box")
    _assert_disk_kept(node)
    container = node.only_container("box")
    assert (container.name, container.status) == (f"{NAMESPACE}_box-2", "running")
    assert container.id != first.id
    assert (status["phase"], status["revision"]) == ("Running", 2)
    assert len(status["gpus"]) == 3
    assert set(held) <= set(status["gpus"])  # growing keeps the GPUs it had
    assert [(h["revision"], h["changeCause"]) for h in status["history"]] == [
        (1, "first"), (2, "three GPUs")]
    assert [r.revision for r in node.store.list(NAMESPACE, "box")] == [1, 2]
    assert f"gpudock-preserved/{NAMESPACE}_box:rev-1" in node.docker.tags
    assert node.reasons("box")[1:] == ["Stopped", "DiskSaved", "RevisionStarted",
                                       "PreviousRevisionRemoved"]


def _observations() -> float:
    return sum(sample.value for metric in metrics.OBSERVATIONS.collect()
               for sample in metric.samples if sample.name.endswith("_total")
               and sample.labels.get("kind") == "GpuReplicaSet")


def test_an_update_is_one_progress_write_and_two_observations(node: Node) -> None:
    """The rollout is shown before it is taken, in one write; then the final status.
    Two observations: the one it was planned from, the one that confirms it."""
    _running(node)
    written = len(node.kube.status_patches("box"))
    observed = _observations()
    generation = node.apply("box", "grow", gpus=2)
    outcome = node.reconcile("box")
    assert outcome is not None
    assert outcome.settled
    patches = node.kube.status_patches("box")[written:]
    steps = [c["message"] for s in patches
             for c in s["conditions"] if c["type"] == "Progressing" and c["status"] == "True"]
    assert steps == [f"rolling out revision 2: saving the disk of {NAMESPACE}_box-1, then "
                     "starting it and removing the previous revision's container"]
    assert len(patches) == 2
    assert _observations() - observed == 2
    last = node.status("box")
    assert (last["phase"], last["observedGeneration"]) == ("Running", generation)
    assert [e.reason for _, e in node.events[-4:]] == [
        "Stopped", "DiskSaved", "RevisionStarted", "PreviousRevisionRemoved"]


def test_an_env_change_sets_the_new_variables_and_drops_the_removed_ones(node: Node) -> None:
    _running(node, env=[{"name": "KEPT", "value": "1"}, {"name": "DROPPED", "value": "1"}])
    node.apply("box", "an env change", env=[{"name": "KEPT", "value": "2"}])
    assert node.settle("box")["revision"] == 2
    _assert_disk_kept(node)
    env = _env(node.only_container("box"))
    assert env["KEPT"] == "2"
    assert "DROPPED" not in env  # baked into the saved disk's image, and dropped


def test_an_image_change_starts_from_the_new_image_and_keeps_the_old_disk(
        node: Node) -> None:
    _running(node)
    node.apply("box", "new image", image=OTHER_IMAGE)
    status = node.settle("box")
    container = node.only_container("box")
    assert (status["revision"], container.image) == (2, OTHER_IMAGE)
    assert node.docker.read_file(container.id, MARKER) is None  # another image's files
    assert _env(container)["IMAGE_VERSION"] == "2"
    assert f"gpudock-preserved/{NAMESPACE}_box:rev-1" in node.docker.tags  # for a rollback


def test_an_unchanged_spec_makes_no_revision(node: Node) -> None:
    container = _running(node)
    node.apply("box", "again", revisionHistoryLimit=5)  # not a field that shapes it
    assert node.settle("box")["revision"] == 1
    node.start_agent()  # nor does a restart of the agent
    assert node.settle("box")["history"][-1]["revision"] == 1
    assert node.only_container("box").id == container.id


def test_rollback_restores_revision_1s_spec_and_disk_as_revision_3(node: Node) -> None:
    _running(node, env=[{"name": "STAGE", "value": "one"}])
    node.apply("box", "stage two", gpus=2, env=[{"name": "STAGE", "value": "two"}])
    node.settle("box")
    node.docker.write_file(node.only_container("box").id, MARKER, b"v2")
    node.patch("box", {"rollbackTo": {"revision": 1}})
    status = node.settle("box")
    _assert_disk_kept(node, content=b"v1")
    spec = node.kube.get(GRS, NAMESPACE, "box")["spec"]
    assert "rollbackTo" not in spec
    assert (spec["gpuCount"], spec["env"]) == (1, [{"name": "STAGE", "value": "one"}])
    assert (status["phase"], status["revision"], len(status["gpus"])) == ("Running", 3, 1)
    assert status["history"][-1]["rollbackOf"] == 1
    assert status["history"][-1]["changeCause"] == "rolled back to revision 1"
    assert _env(node.only_container("box"))["STAGE"] == "one"
    (written,) = [p.body for p in node.kube.patches if p.verb == "patch_spec"]
    assert written["rollbackTo"] is None  # a merge patch that removes it
    assert "RolledBack" in node.reasons("box")


def test_rollback_to_a_revision_that_does_not_exist_changes_nothing(node: Node) -> None:
    container = _running(node)
    node.patch("box", {"rollbackTo": {"revision": 9}})
    status = node.settle("box")
    assert node.condition("box", "Degraded")["reason"] == "RevisionNotFound"
    assert (status["phase"], node.condition("box", "Ready")["status"]) == ("Running", "True")
    assert node.only_container("box").id == container.id
    _assert_disk_kept(node)


# ------------------------------------------------------------------- spec.state
def test_stopped_releases_the_gpus_and_running_again_keeps_the_disk(node: Node) -> None:
    _running(node, gpus=2, ports=[{"containerPort": 22}])
    first = node.status("box")
    node.apply("box", gpus=2, ports=[{"containerPort": 22}], state="Stopped")
    stopped = node.settle("box")
    assert (stopped["phase"], stopped["gpus"], stopped["ports"]) == ("Stopped", [], [])
    assert node.containers("box") == []
    assert node.condition("box", "Ready")["reason"] == "Stopped"
    node.apply("box", gpus=2, ports=[{"containerPort": 22}], state="Running")
    running = node.settle("box")
    assert (running["phase"], running["revision"]) == ("Running", 1)
    assert sorted(running["gpus"]) == sorted(first["gpus"])
    assert running["ports"] == first["ports"]
    _assert_disk_kept(node)
    assert node.reasons("box")[-1] == "Resumed"


def test_paused_stops_the_container_and_keeps_its_gpus_reserved(node: Node) -> None:
    container = _running(node, gpus=2)
    held = node.status("box")["gpus"]
    node.apply("box", gpus=2, state="Paused")
    paused = node.settle("box")
    assert (paused["phase"], paused["gpus"]) == ("Paused", held)
    assert node.only_container("box").status == "exited"
    node.apply("other", gpus=3)  # only 2 of the 4 GPUs are free
    assert node.settle("other")["reason"] == "InsufficientGPUs"
    node.apply("box", gpus=2, state="Running")
    running = node.settle("box")
    assert (running["phase"], running["gpus"]) == ("Running", held)
    assert node.only_container("box").id == container.id  # the same container
    _assert_disk_kept(node)
    assert "DriftDetected" not in node.reasons("box")  # the agent stopped it itself


# ------------------------------------------------------------------------- GPUs
def test_a_resource_waits_for_gpus_and_starts_when_they_are_freed(node: Node) -> None:
    node.apply("a", gpus=3)
    node.settle("a")
    node.apply("b", gpus=2)
    waiting = node.settle("b")
    assert (waiting["phase"], waiting["reason"]) == ("Pending", "InsufficientGPUs")
    assert _conditions(waiting) == {"Ready": ("False", "InsufficientGPUs"),
                                    "Progressing": ("True", "InsufficientGPUs"),
                                    "Degraded": ("False", "AsExpected"),
                                    # kstatus' (#26), derived from the two above
                                    "Reconciling": ("True", "InsufficientGPUs"),
                                    "Stalled": ("False", "AsExpected")}
    assert "1 of 4" in node.condition("b", "Ready")["message"]
    assert node.containers("b") == []
    node.delete("a")
    status = node.settle("b")
    assert (status["phase"], len(status["gpus"])) == ("Running", 2)


def test_no_gpu_is_given_to_two_containers_by_concurrent_reconciles(node: Node) -> None:
    names = [f"r{i}" for i in range(8)]
    for name in names:
        node.apply(name, gpus=1)
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(node.reconcile, names))  # the agent's worker threads, at once
    phases = sorted(node.status(n)["phase"] for n in names)
    assert phases == ["Pending"] * 4 + ["Running"] * 4
    held = node.docker.gpus_in_use()
    assert len(held) == len(set(held)) == 4
    assert set(held) == set(node.gpu_uuids())


# ------------------------------------------------------------------------ drift
@pytest.mark.parametrize(("change", "found"), [
    ("stop_outside", "container had exited (exit code 143)"),
    ("kill_outside", "container had exited (exit code 137)"),
    ("pause_outside", "container was paused"),
], ids=["stopped", "killed", "paused"])
def test_a_container_changed_outside_is_repaired_with_drift_detected(
        node: Node, change: str, found: str) -> None:
    container = _running(node)
    node.woken.clear()
    getattr(node.docker, change)(container.id)
    assert set(node.woken) == {node.uid("box")}  # Docker's event wakes it
    status = node.settle("box")
    assert node.only_container("box").status == "running"
    assert node.only_container("box").id == container.id
    assert status["phase"] == "Running"
    assert "DriftDetected" in node.reasons("box")
    degraded = node.condition("box", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "DriftRepaired")
    assert found in degraded["message"]
    _assert_disk_kept(node)


def test_a_container_removed_outside_is_made_again_with_its_gpus(node: Node) -> None:
    container = _running(node, gpus=2)
    held = node.status("box")["gpus"]
    node.docker.remove_outside(container.id)
    status = node.settle("box")
    again = node.only_container("box")
    assert again.id != container.id
    assert (status["phase"], status["revision"], status["gpus"]) == ("Running", 1, held)
    assert "Recreated" in node.reasons("box")
    assert "container was removed" in node.condition("box", "Degraded")["message"]


def test_a_crash_looping_container_is_not_ready_until_it_stays_up(node: Node) -> None:
    container = _running(node)
    node.docker.crash(container.id, exit_code=3)
    outcome = node.reconcile("box")
    assert outcome is not None
    assert outcome.recheck_after is not None  # looked at again when it should be stable
    status = node.status("box")
    assert (status["phase"], status["restartCount"], status["lastExitCode"]) == (
        "CrashLoop", 1, 3)
    assert node.condition("box", "Ready")["reason"] == "CrashLoop"
    assert "exited with code 3" in node.condition("box", "Ready")["message"]
    node.clock.advance(60)
    assert node.settle("box")["phase"] == "Running"


# --------------------------------------------------------------- refusals, errors
def test_an_invalid_spec_is_reported_and_the_container_keeps_running(node: Node) -> None:
    container = _running(node)
    before = node.docker.snapshot()
    generation = node.apply("box", gpus=-1)
    status = node.settle("box")
    assert node.condition("box", "Degraded")["reason"] == "InvalidSpec"
    assert (status["phase"], status["observedGeneration"]) == ("Running", generation)
    assert node.condition("box", "Ready")["status"] == "True"  # it does run
    assert node.docker.snapshot() == before
    assert node.only_container("box").id == container.id
    node.apply("new", gpus=-1)
    assert (node.settle("new")["phase"], node.containers("new")) == ("Failed", [])


def test_an_invalid_spec_over_a_container_that_died_is_not_ready(node: Node) -> None:
    container = _running(node)
    node.docker.kill_outside(container.id)
    node.apply("box", gpus=-1)
    node.settle("box")
    assert node.only_container("box").status == "exited"
    assert node.condition("box", "Ready")["status"] != "True"
    assert node.status("box")["phase"] != "Running"


def test_a_command_missing_from_the_disk_is_refused_before_the_container_stops(
        node: Node) -> None:
    container = _running(node)
    node.apply("box", "jupyter", command=["jupyter", "lab"])
    status = node.settle("box")
    assert node.condition("box", "Degraded")["reason"] == "CommandNotFound"
    assert "nothing was changed" in node.condition("box", "Degraded")["message"]
    assert (status["phase"], status["revision"]) == ("Running", 1)
    assert node.only_container("box").id == container.id
    assert node.only_container("box").status == "running"


def test_a_container_docker_refuses_fails_its_revision_and_the_previous_runs_again(
        node: Node) -> None:
    _running(node)
    node.docker.refuse_next_create()
    node.apply("box", "refused", gpus=2)
    status = node.settle("box")
    assert node.condition("box", "Degraded")["reason"] == "ContainerCreateFailed"
    assert (status["phase"], status["revision"]) == ("Running", 1)
    assert status["history"][1]["failed"].startswith("ContainerCreateFailed")
    _assert_disk_kept(node)
    assert "PreviousRevisionRestored" in node.reasons("box")
    node.apply("box", "fixed", gpus=3)  # a new change is tried again
    assert node.settle("box")["revision"] == 3
    _assert_disk_kept(node)


def test_a_save_that_cannot_fit_is_refused_while_the_instance_keeps_running(
        node: Node) -> None:
    container = _running(node)
    node.docker.free = 2**20  # 1 MiB free in Docker's root: no room for a save
    node.apply("box", "grow", gpus=2)
    status = node.settle("box")
    assert node.condition("box", "Degraded")["reason"] == "DiskFull"
    assert (status["phase"], status["revision"]) == ("Running", 1)
    assert node.only_container("box").id == container.id
    assert node.only_container("box").status == "running"


def test_an_update_without_inodes_for_its_save_is_refused_before_anything_stops(
        node: Node) -> None:
    container = _running(node)
    node.docker.inodes = 10  # bytes to spare, but no inodes for a save or a container
    node.apply("box", "grow", gpus=2)
    status = node.settle("box")
    degraded = node.condition("box", "Degraded")
    assert degraded["reason"] == "DiskFull"
    assert "inodes" in degraded["message"]
    assert (status["phase"], status["revision"]) == ("Running", 1)
    assert node.only_container("box").id == container.id
    assert node.only_container("box").status == "running"
    node.docker.inodes = None  # a filesystem without a fixed number: no limit
    node.apply("box", "grow again", gpus=2)
    assert node.settle("box")["revision"] == 2


def test_docker_unavailable_is_transient_and_changes_nothing(node: Node) -> None:
    _running(node)
    before = (node.docker.snapshot(), node.store.list(NAMESPACE, "box"), node.status("box"))
    node.apply("box", "grow", gpus=2)
    node.docker.unavailable = True
    with pytest.raises(TransientError) as raised:
        node.reconcile("box")
    assert isinstance(raised.value, DockerUnavailableError)
    assert raised.value.reason == "DockerUnavailable"
    assert (node.docker.snapshot(), node.store.list(NAMESPACE, "box"),
            node.status("box")) == before
    node.docker.unavailable = False
    assert node.settle("box")["revision"] == 2
    _assert_disk_kept(node)


def test_docker_failing_in_the_middle_of_a_save_loses_nothing(node: Node) -> None:
    _running(node)
    node.docker.fail_next("commit", DockerUnavailableError("commit: Docker failed (HTTP "
                                                           "500): driver error"))
    node.apply("box", "grow", gpus=2)
    with pytest.raises(DockerUnavailableError):
        node.reconcile("box")
    assert node.only_container("box").status == "exited"  # stopped for the save
    status = node.settle("box")
    assert (status["phase"], status["revision"]) == ("Running", 2)
    _assert_disk_kept(node)


# ------------------------------------------------------------- crashes, resumes
UPDATE_POINTS = ["StopContainer.before", "StopContainer.after", "PreserveDisk.committed",
                 "PreserveDisk.flattened", "PreserveDisk.after", "StartRevision.recorded",
                 "StartRevision.after", "RemoveContainer.after"]


@pytest.mark.parametrize("point", UPDATE_POINTS)
def test_an_agent_killed_during_an_update_converges_with_the_disk(node: Node,
                                                                  point: str) -> None:
    node.apply("other", gpus=1)  # competes for the GPUs
    node.settle("other")
    _running(node)
    # --max-image-layers 1: every save is flattened, so that point is reached too.
    node.start_agent("--crash-at", point, "--max-image-layers", "1")
    node.apply("box", "update", gpus=2, env=[{"name": "TRIAL", "value": "1"}])
    with pytest.raises(AgentKilled):
        node.settle("box")
    node.start_agent()
    status = node.settle("box")
    assert (status["phase"], status["revision"], len(status["gpus"])) == ("Running", 2, 2)
    assert node.only_container("box").name == f"{NAMESPACE}_box-2"  # and no other
    assert node.only_container("box").status == "running"
    _assert_disk_kept(node)
    held = node.docker.gpus_in_use()
    assert len(held) == len(set(held)) == 3
    assert [r.revision for r in node.store.list(NAMESPACE, "box")] == [1, 2]


@pytest.mark.parametrize("point", ["StartRevision.after", "WriteSpec.before",
                                   "WriteSpec.after"])
def test_an_agent_killed_during_a_rollback_converges(node: Node, point: str) -> None:
    _running(node)
    node.apply("box", "two", gpus=2)
    node.settle("box")
    node.docker.write_file(node.only_container("box").id, MARKER, b"v2")
    node.start_agent("--crash-at", point)
    node.patch("box", {"rollbackTo": {"revision": 1}})
    with pytest.raises(AgentKilled):
        node.settle("box")
    node.start_agent()
    status = node.settle("box")
    assert (status["phase"], status["revision"], len(status["gpus"])) == ("Running", 3, 1)
    assert "rollbackTo" not in node.kube.get(GRS, NAMESPACE, "box")["spec"]
    _assert_disk_kept(node, content=b"v1")


def test_an_agent_killed_while_stopping_converges_to_stopped_with_the_disk(
        node: Node) -> None:
    _running(node)
    node.start_agent("--crash-at", "PreserveDisk.after")
    node.apply("box", state="Stopped")
    with pytest.raises(AgentKilled):
        node.settle("box")
    node.start_agent()
    assert node.settle("box")["phase"] == "Stopped"
    assert node.containers("box") == []
    node.apply("box", state="Running")
    assert node.settle("box")["phase"] == "Running"
    _assert_disk_kept(node)


def test_28_13_a_never_started_container_with_a_stale_task_is_made_again(
        node: Node) -> None:
    node.apply("box", gpus=1, state="Paused")  # created, never started
    node.settle("box")
    created = node.only_container("box")
    assert created.status == "created"
    # Docker was restarted in the middle of a start: containerd kept the task.
    node.docker.fail_next("start", StaleTaskError(
        "start box: containerd kept a task of it from a start cut short by a restart "
        "of Docker: task 0123abcd: already exists"))
    node.apply("box", gpus=1)
    status = node.settle("box")
    assert status["phase"] == "Running"
    again = node.only_container("box")
    assert again.id != created.id
    assert again.status == "running"
    assert "Recreated" in node.reasons("box")
    assert "DriftDetected" not in node.reasons("box")


def test_28_13_a_container_that_ran_is_never_removed_unsaved_for_a_stale_task(
        node: Node) -> None:
    container = _running(node)
    node.docker.stop(container.id, container.name)  # behind the agent's back
    node.docker.fail_next("start", StaleTaskError("task 0123abcd: already exists"))
    status = node.settle("box")
    assert (status["phase"], status["revision"]) == ("Running", 1)
    assert node.only_container("box").id != container.id   # made again ...
    _assert_disk_kept(node)                                  # ... from its saved disk


# ---------------------------------------------------------------------- history
def test_history_past_revision_history_limit_is_pruned_with_its_saved_disks(
        node: Node) -> None:
    _running(node, revisionHistoryLimit=1)
    for update in range(1, 4):
        node.apply("box", f"update {update}", revisionHistoryLimit=1,
                   env=[{"name": "UPDATE", "value": str(update)}])
        node.settle("box")
        _assert_disk_kept(node)
    status = node.status("box")
    assert [h["revision"] for h in status["history"]] == [3, 4]
    assert [r.revision for r in node.store.list(NAMESPACE, "box")] == [3, 4]
    assert node.docker.preserved_tags(f"gpudock-preserved/{NAMESPACE}_box") == {
        f"gpudock-preserved/{NAMESPACE}_box:rev-3"}
    assert node.reasons("box").count("RevisionPruned") == 2


def test_delete_with_retain_saves_the_disk_and_keeps_the_history_apart(node: Node) -> None:
    _running(node)
    node.apply("box", "second", gpus=2)
    node.settle("box")
    events = node.delete("box")
    assert node.containers("box") == []
    assert [e.reason for e in events] == ["Stopped", "DiskSaved", "Removed"]
    assert node.docker.preserved_tags(f"gpudock-preserved/{NAMESPACE}_box") == {
        f"gpudock-preserved/{NAMESPACE}_box:rev-1", f"gpudock-preserved/{NAMESPACE}_box:rev-2"}
    assert [r.revision for r in node.store.list(NAMESPACE, "box")] == [1, 2]
    node.apply("box", "again")  # a later resource of the name starts on its own
    fresh = node.settle("box")
    assert [h["revision"] for h in fresh["history"]] == [1]
    assert node.docker.read_file(node.only_container("box").id, MARKER) is None
    assert [r.revision for r in node.store.list_retained(NAMESPACE, "box")] == [1, 2]


def test_delete_with_purge_removes_containers_disks_and_records(node: Node) -> None:
    _running(node, historyPolicy="Purge")
    node.apply("box", "second", gpus=2, historyPolicy="Purge")
    node.settle("box")
    events = node.delete("box")
    assert "HistoryPurged" in [e.reason for e in events]
    assert node.containers("box") == []
    assert node.docker.preserved_tags(f"gpudock-preserved/{NAMESPACE}_box") == frozenset()
    assert node.store.list(NAMESPACE, "box") == []
    assert set(node.docker.tags) == {IMAGE, OTHER_IMAGE}


def test_a_container_whose_resource_is_gone_is_saved_and_removed(node: Node) -> None:
    _running(node, gpus=2)
    node.kube.remove(GRS, NAMESPACE, "box")  # deleted while no agent handled it
    swept = node.replica_sets.sweep_orphans(lambda _ns, _name: None)
    assert len(swept) == 1
    assert node.containers("box") == []
    assert node.docker.gpus_in_use() == []
    assert f"gpudock-preserved/{NAMESPACE}_box:rev-1" in node.docker.tags


def test_the_deleted_uids_kept_against_a_late_reconcile_are_bounded(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found reading the code for the soak's slow RSS growth: every deleted UID was
    # kept for the agent's life.
    monkeypatch.setattr(replica_set_reconciler, "DELETED_KEPT", 2)
    for n in range(4):
        node.apply(f"box-{n}", gpus=0)
        node.settle(f"box-{n}")
        late = node.kube.get(GRS, NAMESPACE, f"box-{n}")
        node.delete(f"box-{n}")
    assert len(node.replica_sets._deleted) == 2
    assert node.replica_sets.reconcile(late) is None   # the latest still refused
