"""#9 against the real stack: a status users can trust, and failures that never take
a working instance down. Test names carry the item of issue #9 they show."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    MARKER,
    apply_spec,
    assert_disk_kept,
    only_container,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import IDLE_COMMAND, LocalStack, wait_for
from tests.stack.processes import free_port_range
from tests.stack.resources import (
    all_statuses,
    apply,
    condition,
    containers,
    event_reasons,
    gpu_replica_set,
    grs,
    status,
)


def _degraded(stack: LocalStack, namespace: str, name: str, reason: str,
              timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: condition(stack, namespace, name, "Degraded").get("reason") == reason,
             timeout, what=f"{name}: Degraded {reason} "
                           f"(now {condition(stack, namespace, name, 'Degraded')})")
    return condition(stack, namespace, name, "Degraded")


def _ready_reason_is(stack: LocalStack, namespace: str, name: str, reason: str) -> bool:
    return condition(stack, namespace, name, "Ready").get("reason") == reason


def _started_at(stack: LocalStack, namespace: str) -> tuple[str, str]:
    container = only_container(stack, namespace)
    container.reload()
    return str(container.id), str(container.attrs["State"]["StartedAt"])


def _gpudock(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpudock", *args,
                           "--kubeconfig", str(stack.kubeconfig)],
                          capture_output=True, text=True, timeout=60, check=False)


# ------------------------------------------------------------- 1: command not found
def test_9_1_a_missing_command_is_the_users_error_and_a_fix_applies_in_seconds(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent()  # the default 30 s resync: a fix must not wait for it
    apply(stack, namespace, gpu_replica_set("lab", command=["jupyter", "lab"]))
    degraded = _degraded(stack, namespace, "lab", "CommandNotFound", timeout=15)
    assert "jupyter" in degraded["message"]
    assert "executable file not found" in degraded["message"]  # runc's words
    now = status(stack, namespace, "lab")
    assert (now["phase"], now["reason"]) == ("Failed", "CommandNotFound")
    assert now["history"][0]["failed"].startswith("CommandNotFound")  # never ran
    assert not containers(stack, namespace)  # nothing left behind, holding a GPU
    assert "CommandNotFound" in event_reasons(stack, namespace, "lab")
    time.sleep(3)
    assert "Traceback" not in agent.log()

    started = time.monotonic()
    apply(stack, namespace, gpu_replica_set("lab", command=IDLE_COMMAND))
    wait_settled(stack, namespace, "lab", timeout=15)
    print(f"fixed spec Ready after {time.monotonic() - started:.1f}s")
    assert condition(stack, namespace, "lab", "Ready")["status"] == "True"
    assert "Traceback" not in agent.log()


# ------------------------------------------------------------------- 2: crash loops
def test_9_2_a_crash_looping_container_is_not_ready_and_counts_its_restarts(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    apply(stack, namespace, gpu_replica_set("crash", command=["sh", "-c", "exit 3"]),
          gpu_replica_set("done", gpus=0, command=["sh", "-c", "exit 0"]))
    for name, code in (("crash", 3), ("done", 0)):
        wait_for(functools.partial(_ready_reason_is, stack, namespace, name, "CrashLoop"),
                 30, what=f"{name} CrashLoop")
        ready = condition(stack, namespace, name, "Ready")
        assert ready["status"] == "False"
        assert f"exited with code {code}" in ready["message"]
        now = status(stack, namespace, name)
        assert (now["phase"], now["reason"], now["lastExitCode"]) == (
            "CrashLoop", "CrashLoop", code)
        assert now["startedAt"]
        assert condition(stack, namespace, name, "Degraded")["status"] == "True"
    first = status(stack, namespace, "crash")["restartCount"]
    assert first >= 1
    wait_for(lambda: status(stack, namespace, "crash")["restartCount"] > first, 60,
             what="the restart count to grow")
    assert status(stack, namespace, "crash")["phase"] == "CrashLoop"  # never Running
    row = stack.kubectl("get", "grs", "crash", "-n", namespace).stdout.splitlines()[1]
    assert "CrashLoop" in row.split()


# ------------------------------------------------------- 3: a refused update
def _running_with_files(stack: LocalStack, namespace: str, name: str = "box",
                        **spec: Any) -> tuple[str, str]:
    apply_spec(stack, namespace, name, "first", **spec)
    wait_settled(stack, namespace, name, revision=1)
    touch_the_disk(stack, namespace)
    return _started_at(stack, namespace)


def test_9_3_an_update_with_a_missing_host_path_leaves_the_previous_revision_serving(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    start_agent(extra_args=["--allowed-host-path", str(allowed), "--resync-seconds", "2"])
    before = _running_with_files(stack, namespace)
    apply_spec(stack, namespace, "box", "a data dir that is not there",
               mounts=[{"hostPath": str(allowed / "nope"), "mountPath": "/data"}])
    degraded = _degraded(stack, namespace, "box", "HostPathMissing")
    assert str(allowed / "nope") in degraded["message"]
    assert _started_at(stack, namespace) == before  # never stopped
    assert status(stack, namespace, "box")["phase"] == "Running"
    assert condition(stack, namespace, "box", "Ready")["status"] == "True"
    assert_disk_kept(stack, namespace)


def test_9_3_an_update_whose_command_is_missing_is_refused_before_the_stop(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    before = _running_with_files(stack, namespace)
    apply_spec(stack, namespace, "box", "start jupyter", command=["jupyter", "lab"])
    degraded = _degraded(stack, namespace, "box", "CommandNotFound")
    assert "before stopping it" in degraded["message"]
    assert _started_at(stack, namespace) == before
    assert condition(stack, namespace, "box", "Ready")["status"] == "True"
    assert_disk_kept(stack, namespace)


def test_9_3_when_docker_refuses_the_new_container_the_previous_revision_runs_again(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    """A mount over /proc passes every check and is refused by the runtime only when
    the new container starts, after the old one was stopped and saved."""
    allowed = tmp_path / "allowed"
    (allowed / "proc").mkdir(parents=True)
    start_agent(extra_args=["--allowed-host-path", str(allowed), "--resync-seconds", "2"])
    old_id, _ = _running_with_files(stack, namespace)
    apply_spec(stack, namespace, "box", "mount over /proc",
               mounts=[{"hostPath": str(allowed / "proc"), "mountPath": "/proc"}])
    degraded = _degraded(stack, namespace, "box", "ContainerStartFailed", timeout=60)
    assert "revision 2 could not be started" in degraded["message"]
    assert "revision 1 keeps running" in degraded["message"]
    wait_for(lambda: condition(stack, namespace, "box", "Ready")["status"] == "True", 30,
             what="revision 1 serving again")
    now = status(stack, namespace, "box")
    assert (now["phase"], now["revision"], now["containerID"]) == ("Running", 1, old_id)
    assert [(h["revision"], bool(h.get("failed"))) for h in now["history"]] == [
        (1, False), (2, True)]
    assert_disk_kept(stack, namespace)
    assert "PreviousRevisionRestored" in event_reasons(stack, namespace, "box")
    history = _gpudock(stack, "history", "box", "-n", namespace).stdout
    assert "2 (failed)" in history
    # Not retried in a loop: it stays so over several resyncs, same container.
    time.sleep(6)
    assert status(stack, namespace, "box")["containerID"] == old_id
    # The spec changed again: a new attempt, numbered after the failed one.
    apply_spec(stack, namespace, "box", "two GPUs instead", gpus=2)
    wait_settled(stack, namespace, "box", revision=3)
    assert_disk_kept(stack, namespace)


@contextlib.contextmanager
def _port_held_outside_docker() -> Iterator[int]:
    """The first of 21 free ports (below the ephemeral range), held by a listener."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("0.0.0.0", free_port_range(21)))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_9_3_an_explicit_host_port_held_outside_docker_is_refused_before_the_stop(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    with _port_held_outside_docker() as port:
        start_agent(extra_args=["--resync-seconds", "2", "--allowed-host-ports",
                                "1024-65535"])
        before = _running_with_files(stack, namespace)
        apply_spec(stack, namespace, "box", "ssh on a fixed port",
                   ports=[{"containerPort": 22, "hostPort": port}])
        degraded = _degraded(stack, namespace, "box", "HostPortInUse")
        assert str(port) in degraded["message"]
        assert _started_at(stack, namespace) == before
        assert_disk_kept(stack, namespace)


# ----------------------------------------------------------------- 4: bad rollbacks
def test_9_4_a_rollback_to_a_missing_revision_leaves_the_instance_ready(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    before = _running_with_files(stack, namespace)
    # The CLI refuses before changing anything.
    for revision, why in (("42", "does not exist"), ("1", "is the current revision")):
        refused = _gpudock(stack, "rollback", "box", "-n", namespace, "--to-revision",
                           revision)
        assert refused.returncode == 1
        assert why in refused.stderr
        assert "nothing was changed" in refused.stderr
        assert "rollbackTo" not in grs(stack, namespace, "box")["spec"]
    # Set by other means (kubectl, GitOps): the instance keeps serving and says why.
    stack.kubectl("patch", "grs", "box", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"rollbackTo": {"revision": 42}}}))
    degraded = _degraded(stack, namespace, "box", "RevisionNotFound")
    assert "42" in degraded["message"]
    now = status(stack, namespace, "box")
    assert (now["phase"], now["reason"]) == ("Running", "RevisionNotFound")
    assert condition(stack, namespace, "box", "Ready")["status"] == "True"
    assert _started_at(stack, namespace) == before
    row = stack.kubectl("get", "grs", "box", "-n", namespace).stdout.splitlines()[1]
    assert "RevisionNotFound" in row.split()


# ---------------------------------------------------------- 5: columns tell the truth
def test_9_5_a_stopped_resource_shows_the_gpus_it_holds_none(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "box", "first", gpus=2)
    wait_settled(stack, namespace, "box", revision=1)
    apply_spec(stack, namespace, "box", "stop", gpus=2, state="Stopped")
    stopped = wait_settled(stack, namespace, "box", phase="Stopped")
    assert (stopped["gpus"], stopped["gpuCount"], stopped.get("reason")) == ([], 0, None)
    assert condition(stack, namespace, "box", "Ready")["reason"] == "Stopped"
    row = stack.kubectl("get", "grs", "box", "-n", namespace).stdout.splitlines()[1].split()
    assert row[2:5] == ["0", "Stopped", "Stopped"]  # GPUS held, STATE, PHASE


# ------------------------------------------------------------- 6: no false drift
def test_9_6_what_the_agent_removed_itself_is_not_reported_as_drift(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    with _port_held_outside_docker() as port:
        start_agent(gpus=1, extra_args=["--port-range", f"{port}-{port + 20}"])
        apply(stack, namespace, gpu_replica_set("ssh", ports=[{"containerPort": 22}]))
        wait_settled(stack, namespace, "ssh", revision=1)
        held = status(stack, namespace, "ssh")["ports"][0]["hostPort"]
        assert held != port  # the busy one was skipped before anything was made
        events = stack.kubectl("get", "events", "-n", namespace).stdout
        assert "HostPortSkipped" in events
        assert f"host port {port}" in events
    # Stopped, its GPU taken by another, Running again: it waits, then resumes.
    apply_spec(stack, namespace, "ssh", "stop", state="Stopped", ports=[
        {"containerPort": 22}])
    wait_settled(stack, namespace, "ssh", phase="Stopped")
    apply(stack, namespace, gpu_replica_set("other"))
    wait_settled(stack, namespace, "other")
    apply_spec(stack, namespace, "ssh", "run", ports=[{"containerPort": 22}])
    wait_for(lambda: status(stack, namespace, "ssh").get("phase") == "Pending", 30,
             what="ssh waiting for its GPU")
    stack.kubectl("delete", "grs", "other", "-n", namespace, "--timeout=30s")
    wait_settled(stack, namespace, "ssh", timeout=30)
    reasons = event_reasons(stack, namespace, "ssh")
    assert "DriftDetected" not in reasons
    assert condition(stack, namespace, "ssh", "Degraded")["reason"] == "AsExpected"


# ----------------------------------------------------------------- 7: silent nodes
def test_9_7_a_resource_of_an_unknown_or_silent_node_says_so(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--heartbeat-seconds", "1"])
    wait_for(lambda: stack.kubectl("get", "gpunode", "gpu-node-1", check=False)
             .returncode == 0, 30, what="this node's GpuNode")
    node = stack.kubectl_json("get", "gpunode", "gpu-node-1")
    assert node["status"]["gpusTotal"] == 8  # type: ignore[index]
    apply(stack, namespace, gpu_replica_set("lost", node="no-such-node"))
    wait_for(lambda: condition(stack, namespace, "lost", "Ready").get("reason")
             == "NodeNotFound", 30, what="NodeNotFound")
    assert status(stack, namespace, "lost")["phase"] == "Pending"
    # A node whose agent went silent: its resources' Ready becomes Unknown.
    silent = start_agent(node_name="gpu-node-2", extra_args=["--heartbeat-seconds", "1"])
    apply(stack, namespace, gpu_replica_set("far", node="gpu-node-2"))
    wait_settled(stack, namespace, "far")
    silent.kill()
    wait_for(lambda: condition(stack, namespace, "far", "Ready").get("reason")
             == "NodeNotReady", 30, what="NodeNotReady")
    assert condition(stack, namespace, "far", "Ready")["status"] == "Unknown"
    # Its agent back: its own status again.
    start_agent(node_name="gpu-node-2")
    stack.kubectl("annotate", "grs", "far", "-n", namespace, "poke=1", "--overwrite")
    wait_for(lambda: condition(stack, namespace, "far", "Ready").get("status") == "True",
             30, what="far Ready again")


# -------------------------------------------------------- 8: retained history
def test_9_8_a_new_resource_with_a_deleted_ones_name_starts_on_its_own(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent(extra_args=["--resync-seconds", "2"])
    node_args = ["--state-dir", str(agent.state_dir), "--docker-host", stack.docker_host,
                 "-n", namespace]
    _running_with_files(stack, namespace)
    apply_spec(stack, namespace, "box", "two GPUs", gpus=2)
    wait_settled(stack, namespace, "box", revision=2)
    old_uid = grs(stack, namespace, "box")["metadata"]["uid"]
    stack.kubectl("delete", "grs", "box", "-n", namespace, "--timeout=30s")

    apply_spec(stack, namespace, "box", "a new one")
    fresh = wait_settled(stack, namespace, "box", revision=1)
    assert [h["revision"] for h in fresh["history"]] == [1]
    container = only_container(stack, namespace)
    assert sh(container, f"test -e {MARKER} && echo yes || echo no").strip() == "no"
    stack.kubectl("patch", "grs", "box", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"rollbackTo": {"revision": 2}}}))
    _degraded(stack, namespace, "box", "RevisionNotFound")
    listed = _gpudock(stack, "history", "--retained", "box", *node_args)
    assert listed.returncode == 0, listed.stderr
    assert old_uid in listed.stdout
    assert "1,2" in listed.stdout

    # Asked for explicitly: the next resource adopts it and goes on from its last
    # revision (the same spec: that revision resumes, with its disk).
    stack.kubectl("delete", "grs", "box", "-n", namespace, "--timeout=30s")
    body = gpu_replica_set("box", gpus=2)
    body["metadata"]["annotations"] = {"gpudock.dev/adopt-history": old_uid}
    apply(stack, namespace, body)
    adopted = wait_settled(stack, namespace, "box", revision=2)
    assert [h["revision"] for h in adopted["history"]] == [1, 2]
    assert_disk_kept(stack, namespace)
    assert "HistoryAdopted" in event_reasons(stack, namespace, "box")
    apply_spec(stack, namespace, "box", "back to one GPU", gpus=1)
    wait_settled(stack, namespace, "box", revision=3)
    assert_disk_kept(stack, namespace)
    # The second resource's history is still retained; purge removes it.
    retained = _gpudock(stack, "history", "--retained", "box", *node_args).stdout
    assert old_uid not in retained
    purged = _gpudock(stack, "purge", "box", *node_args)
    assert purged.returncode == 0, purged.stderr
    assert "purged uid" in purged.stdout
    assert "no retained history" in _gpudock(stack, "history", "--retained", "box",
                                             *node_args).stdout


# ------------------------------------------------------ 9: agent upgrades
UPGRADE = '''
import gpudock.api.gpu_replica_set as grs

grs.SHAPE_DEFAULTS["shmSize"] = "64Mi"  # a field a later version adds, with a default
_shape = grs.GpuReplicaSetSpec.shape
grs.GpuReplicaSetSpec.shape = lambda self: {**_shape(self), "shmSize": "64Mi"}
'''


def test_9_9_an_agent_whose_shape_has_a_new_defaulted_field_restarts_nothing(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    agent = start_agent(extra_args=["--resync-seconds", "2"])
    before = _running_with_files(stack, namespace)
    agent.stop()
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "sitecustomize.py").write_text(UPGRADE)
    upgraded = start_agent(extra_args=["--resync-seconds", "2"],
                           env={"PYTHONPATH": str(newer)})
    stack.kubectl("annotate", "grs", "box", "-n", namespace, "poke=1", "--overwrite")
    time.sleep(8)  # several resyncs
    assert _started_at(stack, namespace) == before
    now = status(stack, namespace, "box")
    assert (now["revision"], len(now["history"]), now["phase"]) == (1, 1, "Running")
    assert "Traceback" not in upgraded.log()


# ------------------------------------------------- 10 and 12: runtime refusals
def test_9_10_12_refusals_of_the_runtime_are_conditions_not_retries(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "p").mkdir(parents=True)
    agent = start_agent(gpus=8, extra_args=["--allowed-host-path", str(allowed),
                                            "--resync-seconds", "2"])
    apply(stack, namespace,
          gpu_replica_set("proc", mounts=[{"hostPath": str(allowed / "p"),
                                           "mountPath": "/proc"}]),
          gpu_replica_set("nul", env=[{"name": "A", "value": "b\u0000c"}]),
          gpu_replica_set("huge", gpus=9))
    for name, reason in (("proc", "ContainerStartFailed"), ("nul", "ContainerStartFailed"),
                         ("huge", "ExceedsNodeCapacity")):
        degraded = _degraded(stack, namespace, name, reason)
        assert status(stack, namespace, name)["phase"] == "Failed"
        if name == "huge":
            assert "node gpu-node-1 has 8 GPUs in all" in degraded["message"]
    time.sleep(5)  # several resyncs: no retry loop, nothing left behind
    assert not containers(stack, namespace)
    assert "Traceback" not in agent.log()
    assert "will retry" not in agent.log()


# ------------------------------------------------ 11: fast delete and wake-ups
def test_9_11_deletes_finish_in_seconds_and_waiting_resources_take_freed_gpus(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=8)  # the default 30 s resync: nothing below may wait for it
    apply(stack, namespace, *(gpu_replica_set(f"r{i:02d}", gpus=1) for i in range(12)))
    wait_for(lambda: [s.get("phase") for s in all_statuses(stack, namespace).values()]
             .count("Running") == 8, 90, what="8 Running")
    wait_for(lambda: [s.get("phase") for s in all_statuses(stack, namespace).values()]
             .count("Pending") == 4, 30, what="4 Pending")
    statuses = all_statuses(stack, namespace)
    running = sorted(n for n, s in statuses.items() if s["phase"] == "Running")
    pending = sorted(n for n, s in statuses.items() if s["phase"] == "Pending")
    started = time.monotonic()
    stack.kubectl("delete", "grs", running[0], running[1], "-n", namespace,
                  "--timeout=15s")
    print(f"delete of two took {time.monotonic() - started:.1f}s")
    wait_for(lambda: sum(1 for n in pending if status(stack, namespace, n).get("phase")
                         == "Running") == 2, 15, what="2 waiting resources to start")
    print(f"freed GPUs taken after {time.monotonic() - started:.1f}s")


# -------------------------------------------------- 12: the API server away
def test_9_12_drift_is_repaired_while_the_api_server_is_down(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    _running_with_files(stack, namespace)
    stack.stop_apiserver()
    try:
        only_container(stack, namespace).stop(timeout=1)
        wait_for(lambda: only_container(stack, namespace).status == "running", 30,
                 what="the container started again while the API server is away")
    finally:
        stack.start_apiserver_again()
    assert_disk_kept(stack, namespace)
    wait_for(lambda: condition(stack, namespace, "box", "Degraded").get("reason")
             == "DriftRepaired", 60, what="the status to catch up")


# ------------------------------------------------------------ 13: smaller things
def test_9_13_events_name_the_agent_and_node_and_help_reads_well(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent()
    apply(stack, namespace, gpu_replica_set("box"))
    wait_settled(stack, namespace, "box")
    events = stack.kubectl_json("get", "events", "-n", namespace)["items"]
    mine = [e for e in events if e["involvedObject"]["name"] == "box"]  # type: ignore
    assert mine
    assert {(e.get("reportingComponent"), e.get("reportingInstance")) for e in mine} == {
        ("gpudock-agent", "gpu-node-1")}
    for _ in range(3):
        assert agent.healthy()
    assert "/healthz" not in agent.log()
    for args in (["--help"], ["rollback", "--help"]):
        shown = subprocess.run([sys.executable, "-m", "gpudock", *args], check=True,
                               capture_output=True, text=True).stdout
        assert "``" not in shown
    assert "the revision to restore" in shown
    assert "needs 1 GPUs" not in Path(agent.log_path).read_text()
