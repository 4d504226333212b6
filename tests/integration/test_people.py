"""#26 against the real stack: the frictions a new user met (kubectl's flags after the
subcommand, ExecRequests that pile up, an ImageCommit's pause taken for drift, crash
loops and waits without a Warning, the state dir's DiskFull, a bad kubeconfig).
Test names carry the item."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import apply_spec, only_container, sh, wait_settled
from tests.stack.agent_process import NODE_NAME
from tests.stack.localstack import IDLE_COMMAND, LocalStack, wait_for
from tests.stack.resources import apply, condition, event_reasons, gpu_replica_set, status

pytestmark = pytest.mark.timeout(300)


def _events(stack: LocalStack, namespace: str, name: str) -> list[dict[str, Any]]:
    items = stack.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                               f"involvedObject.name={name}")["items"]
    assert isinstance(items, list)
    return items


def _warnings(stack: LocalStack, namespace: str, name: str, reason: str) -> list[str]:
    """The messages of the Warning events of ``reason`` (a repeat counts as one more)."""
    return [str(e["message"]) for e in _events(stack, namespace, name)
            if e["type"] == "Warning" and e["reason"] == reason
            for _ in range(int(e.get("count") or 1))]


def _status_of(stack: LocalStack, kind: str, namespace: str, name: str) -> dict[str, Any]:
    found = stack.kubectl_json("get", kind, name, "-n", namespace).get("status") or {}
    assert isinstance(found, dict)
    return found


def _ready(stack: LocalStack, namespace: str, name: str) -> None:
    apply(stack, namespace, gpu_replica_set(name, gpus=0, command=IDLE_COMMAND))
    wait_settled(stack, namespace, name)


# --------------------------------------------------- 2 and 8: kubectl gpudock exec
def test_26_2_kubectls_flags_work_after_the_subcommand(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    _ready(stack, namespace, "ex")
    done = stack.kubectl("gpudock", "exec", "ex", "-n", namespace, "--", "sh", "-c",
                         "echo out-$0; exit 3", "-n", check=False, timeout=120)
    assert (done.returncode, done.stdout) == (3, "out--n\n"), done.stderr
    done = stack.kubectl("gpudock", "history", "ex", "--namespace", namespace, check=False)
    assert done.returncode == 0, done.stderr
    assert "REVISION" in done.stdout


def test_26_8_the_plugins_exec_requests_are_deleted_once_read(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    _ready(stack, namespace, "ex")
    for word in ("one", "two"):
        done = stack.kubectl("gpudock", "-n", namespace, "exec", "ex", "--", "echo", word,
                             check=False, timeout=120)
        assert (done.returncode, done.stdout) == (0, f"{word}\n"), done.stderr
    left = stack.kubectl_json("get", "execrequests", "-n", namespace)["items"]
    assert left == []
    # One created by hand keeps the documented TTL.
    apply(stack, namespace, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "ExecRequest",
                             "metadata": {"name": "by-hand"},
                             "spec": {"replicaSetName": "ex", "command": ["true"]}})
    wait_for(lambda: _status_of(stack, "execrequest", namespace, "by-hand").get("phase")
             == "Completed", 60,
             what="by-hand Completed")


# ------------------------------------------------------ 3: a commit's own pause
def _docker_actions(stack: LocalStack, container_id: str, since: datetime.datetime,
                    until: datetime.datetime) -> list[str]:
    client = stack.docker_client()
    try:
        return [str(e["Action"]).split(":")[0] for e in client.events(
            since=since, until=until, decode=True,
            filters={"container": container_id, "type": "container"})]
    finally:
        client.close()


def test_26_3_an_image_commit_holds_its_own_pause_and_is_not_drift(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    # A file written all along, and enough data that the commit takes a while.
    writer = ("dd if=/dev/zero of=/root/big bs=1M count=160 2>/dev/null; : > /root/ready; "
              "i=0; while :; do i=$((i+1)); echo $i >> /root/counter; sleep 0.01; done")
    apply(stack, namespace, gpu_replica_set("src", gpus=0, command=["sh", "-c", writer]))
    wait_settled(stack, namespace, "src")
    container = only_container(stack, namespace, "src")
    wait_for(lambda: "yes" in sh(container, "test -e /root/ready && echo yes || echo no"),
             60, what="the writer started")
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    image = f"gpudock.invalid/{namespace}/src:held"
    apply(stack, namespace, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "ImageCommit",
                             "metadata": {"name": "held"},
                             "spec": {"replicaSetName": "src", "image": image}})
    wait_for(lambda: _status_of(stack, "imagecommit", namespace, "held").get("phase")
             in ("Succeeded", "Failed"), 180, what="the commit done")
    done = _status_of(stack, "imagecommit", namespace, "held")
    assert done["phase"] == "Succeeded", done
    wait_settled(stack, namespace, "src")
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    actions = [a for a in _docker_actions(stack, str(container.id), since, until)
               if a in ("pause", "unpause", "commit")]
    assert actions == ["pause", "commit", "unpause"]  # Docker's own unpause, after it
    assert "DriftDetected" not in event_reasons(stack, namespace, "src")
    assert "Unpaused" not in event_reasons(stack, namespace, "src")
    # The image is of one instant: the counter's lines are whole and consecutive.
    client = stack.docker_client()
    try:
        saved = client.containers.run(image, ["cat", "/root/counter"], remove=True,
                                      entrypoint=[]).decode().split("\n")
    finally:
        client.close()
    assert saved[-1] == ""
    assert saved[:-1] == [str(i) for i in range(1, len(saved))]


# ------------------------------------------------- 4: a Warning for each problem
def test_26_4_a_crash_loop_and_a_wait_for_gpus_post_one_warning_each(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=2, extra_args=["--resync-seconds", "2"])
    apply(stack, namespace, gpu_replica_set("hog", gpus=2, command=IDLE_COMMAND))
    wait_settled(stack, namespace, "hog")
    apply(stack, namespace, gpu_replica_set("crash", gpus=0, command=["sh", "-c", "exit 3"]),
          gpu_replica_set("big", gpus=1, command=IDLE_COMMAND))
    wait_for(lambda: _warnings(stack, namespace, "crash", "CrashLoop"), 60,
             what="a CrashLoop Warning")
    wait_for(lambda: _warnings(stack, namespace, "big", "InsufficientGPUs"), 60,
             what="an InsufficientGPUs Warning")
    first = status(stack, namespace, "crash")["restartCount"]
    wait_for(lambda: status(stack, namespace, "crash")["restartCount"] > first + 1, 90,
             what="Docker to restart it twice more")
    (message,) = _warnings(stack, namespace, "crash", "CrashLoop")  # once, not per restart
    assert "exited with code 3" in message
    (waiting,) = _warnings(stack, namespace, "big", "InsufficientGPUs")
    assert condition(stack, namespace, "big", "Progressing")["reason"] == "InsufficientGPUs"
    assert "GPU" in waiting


# ------------------------------------------------ 9: the state dir's DiskFull
@pytest.fixture
def small_state_dir(stack: LocalStack, namespace: str) -> Iterator[Path]:
    """The agent's state dir (AgentProcess's path) on a 24 MiB tmpfs; unmounted after
    the agent stopped (this fixture is set up before start_agent)."""
    path = stack.base_dir / f"agent-{namespace}-{NODE_NAME}-state"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=True)  # gone once unused


def test_26_9_a_full_state_dir_says_what_is_free_and_what_is_needed(
    stack: LocalStack, namespace: str, small_state_dir: Path, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "box", "v1", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    filler = small_state_dir / "filler"
    with open(filler, "wb") as handle:  # leave about 8 MiB: below the 16 MiB margin
        stat = os.statvfs(small_state_dir)
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 8 * 2**20))
    apply_spec(stack, namespace, "box", "v2", gpus=2)
    wait_for(lambda: condition(stack, namespace, "box", "Degraded").get("reason")
             == "DiskFull", 60, what="DiskFull")
    message = condition(stack, namespace, "box", "Degraded")["message"]
    assert "is full" not in message
    assert "MiB free" in message
    assert "needs 16 MiB" in message
    assert status(stack, namespace, "box")["phase"] == "Running"
    filler.unlink()
    wait_settled(stack, namespace, "box", revision=2)


# ----------------------------------------------------------- 10: a bad kubeconfig
@pytest.mark.parametrize("kubeconfig", ["/nonexistent", "invalid"])
def test_26_10_a_missing_or_invalid_kubeconfig_stops_the_agent_with_code_2(
    kubeconfig: str, tmp_path: Path,
) -> None:
    if kubeconfig == "invalid":
        (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
        kubeconfig = str(tmp_path / "kubeconfig")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpudock", "agent", "--kubeconfig", kubeconfig,
             "--gpu-backend", "simulated", "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the agent kept running: {exc.stdout!r}") from None
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot start: " in done.stdout
    assert kubeconfig in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# ------------------------------------------------------------ 5: SizedVolumes
def _svol(stack: LocalStack, namespace: str) -> dict[str, Any]:
    return _status_of(stack, "svol", namespace, "data")


def test_26_5_sized_volumes_are_labelled_show_their_reason_and_fresh_usage(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    # A long resync: what is seen below is not the periodic one.
    start_agent(extra_args=["--resync-seconds", "600"])
    apply(stack, namespace, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                             "metadata": {"name": "data"},
                             "spec": {"nodeName": NODE_NAME, "size": "128Mi"}},
          gpu_replica_set("user", gpus=0, command=IDLE_COMMAND,
                          mounts=[{"volume": "data", "mountPath": "/data"}]))
    wait_settled(stack, namespace, "user")
    wait_for(lambda: _svol(stack, namespace).get("consumers") == ["user"], 30,
             what="the volume listing its user")
    # The Docker volume says whose it is, as every Docker object of gpudock does.
    uid = stack.kubectl_json("get", "svol", "data", "-n", namespace)["metadata"]
    client = stack.docker_client()
    try:
        volume = client.volumes.get(_svol(stack, namespace)["volumeName"])
        found = client.volumes.list(filters={"label": [f"gpudock.dev/namespace={namespace}",
                                                       "gpudock.dev/name=data"]})
    finally:
        client.close()
    assert isinstance(uid, dict)
    assert volume.attrs["Labels"] == {
        "gpudock.dev/kind": "SizedVolume", "gpudock.dev/namespace": namespace,
        "gpudock.dev/name": "data", "gpudock.dev/uid": uid["uid"]}
    assert [v.name for v in found] == [volume.name]
    # USED follows a write within the refresh bound, long before the next resync.
    sh(only_container(stack, namespace, "user"),
       "dd if=/dev/zero of=/data/written bs=1M count=40 2>/dev/null; sync")
    wait_for(lambda: (_svol(stack, namespace).get("usedBytes") or 0) >= 40 * 2**20, 60,
             what="USED to show the 40 MiB written")
    # A refused shrink shows its reason in kubectl get.
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"size": "16Mi"}}')
    wait_for(lambda: _svol(stack, namespace).get("reason") == "ShrinkBelowUsage", 60,
             what="ShrinkBelowUsage")
    header, row = stack.kubectl("get", "svol", "data", "-n", namespace).stdout.splitlines()
    assert "REASON" in header.split()
    assert "ShrinkBelowUsage" in row.split()
    # A shrink that stops and starts the user says so on the user.
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"size": "96Mi"}}')
    wait_for(lambda: "RestartedForVolumeResize" in event_reasons(stack, namespace, "user"),
             120, what="an Event on the consumer")
    (message,) = [str(e["message"]) for e in _events(stack, namespace, "user")
                  if e["reason"] == "RestartedForVolumeResize"]
    assert "SizedVolume data" in message
    assert "96Mi" in message
    wait_settled(stack, namespace, "user")
    wait_for(lambda: _svol(stack, namespace).get("revision") == 2, 60, what="revision 2")
    done = stack.kubectl("gpudock", "history", "svol/data", "-n", namespace, check=False)
    assert done.returncode == 0, done.stderr
    assert "resized to 96Mi" in done.stdout


# ------------------------------------------------------------ 7: retained history
def test_26_7_a_retained_history_is_listed_from_the_cluster_with_its_uid(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "box", "first", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    old_uid = stack.kubectl_json("get", "grs", "box", "-n", namespace)["metadata"]
    assert isinstance(old_uid, dict)
    stack.kubectl("delete", "grs", "box", "-n", namespace, "--timeout=60s")
    apply_spec(stack, namespace, "box", "a new one", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    (apart,) = [str(e["message"]) for e in _events(stack, namespace, "box")
                if e["reason"] == "HistoryRetainedApart"]
    assert old_uid["uid"] in apart  # the UID the adopt-history annotation needs
    wait_for(lambda: _status_of(stack, "grs", namespace, "box").get("retainedHistories"),
             60, what="the retained history in the status")
    listed = stack.kubectl("gpudock", "history", "--retained", "box", "-n", namespace,
                           check=False)
    assert listed.returncode == 0, listed.stderr
    assert old_uid["uid"] in listed.stdout
    # On a host without the agent's state dir: say so, and make no empty store.
    elsewhere = tmp_path / "no-state"
    done = subprocess.run(["gpudock", "history", "--retained", "box", "-n", namespace,
                           "--kubeconfig", str(stack.kubeconfig), "--state-dir",
                           str(elsewhere), "--docker-host", stack.docker_host],
                          capture_output=True, text=True, env=stack.env(), timeout=60)
    assert done.returncode == 1, done.stdout
    assert "no revision store at" in done.stderr
    assert not elsewhere.exists()
