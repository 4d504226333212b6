"""Spec changes make revisions that keep the user's disk; rollback restores spec and
disk; Paused/Stopped; layer flattening; history policies. Real agent, dockerd and
kube-apiserver."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpudock.adapters.sqlite_revisions import SqliteRevisionStore
from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    saved_layers,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import (
    condition,
    containers,
    env_of,
    event_reasons,
    gpus_in_use,
    grs,
    status,
)

PORTS = [{"containerPort": 22}]


@pytest.mark.parametrize("stopped_by_hand", [False, True], ids=["running", "stopped-by-hand"])
def test_spec_changes_keep_the_disk(stack: LocalStack, namespace: str,
                                    start_agent: AgentFactory, tmp_path: Path,
                                    stopped_by_hand: bool) -> None:
    allowed = tmp_path / "host"
    (allowed / "data").mkdir(parents=True)
    start_agent(gpus=4, extra_args=["--allowed-host-path", str(allowed)])
    spec: dict[str, Any] = {"gpus": 1, "ports": PORTS,
                            "env": [{"name": "KEPT", "value": "1"},
                                    {"name": "DROPPED", "value": "1"}]}
    apply_spec(stack, namespace, "box", "first", **spec)
    first = wait_settled(stack, namespace, "box", revision=1)
    touch_the_disk(stack, namespace)
    host_port = first["ports"][0]["hostPort"]
    held = first["gpus"]
    changes: list[tuple[str, dict[str, Any]]] = [
        ("three GPUs", {"gpus": 3}), ("no GPU", {"gpus": 0}), ("two GPUs", {"gpus": 2}),
        ("a mount", {"mounts": [{"hostPath": str(allowed / "data"), "mountPath": "/data"}]}),
        ("an env change", {"env": [{"name": "KEPT", "value": "2"}]}),
    ]
    for revision, (cause, change) in enumerate(changes, start=2):
        if stopped_by_hand:
            only_container(stack, namespace).stop(timeout=5)
        spec.update(change)
        apply_spec(stack, namespace, "box", cause, **spec)
        now = wait_settled(stack, namespace, "box", revision=revision)
        assert_disk_kept(stack, namespace)
        container = only_container(stack, namespace)
        assert container.status == "running"
        assert container.name == f"{namespace}_box-{revision}"
        assert len(now["gpus"]) == spec["gpus"] == len(set(now["gpus"]))
        if spec["gpus"] >= len(held):
            assert set(held) <= set(now["gpus"])  # growing keeps the GPUs it had
        else:
            assert set(now["gpus"]) <= set(held)  # shrinking releases some
        held = now["gpus"]
        assert env_of(container)["NVIDIA_VISIBLE_DEVICES"] == (",".join(held) or "void")
        assert [p["hostPort"] for p in now["ports"]] == [host_port]
        assert sorted(gpus_in_use(stack)) == sorted(held)
    env = sh(only_container(stack, namespace), "env")
    assert "KEPT=2" in env
    assert "DROPPED" not in env  # a variable removed from the spec is gone
    sh(only_container(stack, namespace), "test -d /data")
    history = grs(stack, namespace, "box")["status"]["history"]
    assert [h["revision"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["changeCause"] for h in history] == ["first"] + [c for c, _ in changes]


def _statuses_written(watch: str) -> list[dict[str, Any]]:
    """The statuses in the output of `kubectl get -w -o json`, one per status write.

    The watch prints the object on every write, and kopf's own patch of its
    annotations after the update handler races the agent's first progress write: an
    object whose status equals the one before is a metadata write, not a status one
    (a patch that changes nothing makes no new version, so it is never printed)."""
    decoder, at = json.JSONDecoder(), 0
    found: list[dict[str, Any]] = []
    while at < len(watch):
        if watch[at].isspace():
            at += 1
            continue
        body, at = decoder.raw_decode(watch, at)
        status = body.get("status") or {}
        if not found or status != found[-1]:
            found.append(status)
    return found


def test_a_rollout_shows_progressing_then_ready_and_an_event_per_step(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=2)
    apply_spec(stack, namespace, "box", "first", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    watch = subprocess.Popen(
        [str(stack.kubectl_path), "get", "grs", "box", "-n", namespace, "-w", "-o", "json"],
        stdout=subprocess.PIPE, text=True, env=stack.env())
    try:
        generation = apply_spec(stack, namespace, "box", "grow", gpus=2)
        wait_settled(stack, namespace, "box", revision=2)
        time.sleep(1)  # the watch prints the last write
    finally:
        watch.terminate()
    written = [s for s in _statuses_written(watch.communicate(timeout=10)[0])
               if s.get("observedGeneration") == generation]

    def progressing(s: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in s["conditions"] if c["type"] == "Progressing")

    steps = [progressing(s)["message"] for s in written if progressing(s)["status"] == "True"]
    # One progress write for the whole rollout, then the final status (an event per
    # step says how far it got).
    assert steps == [f"rolling out revision 2: saving the disk of {namespace}_box-1, then "
                     "starting it and removing the previous revision's container"]
    assert len(written) == 2
    assert all(s["phase"] == "Updating" for s in written[:-1])
    last = written[-1]
    assert (last["phase"], last["revision"], len(last["gpus"])) == ("Running", 2, 2)
    assert {c["type"]: c["status"] for c in last["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Degraded": "False", "Scheduled": "True",
        "Reconciling": "False", "Stalled": "False"}
    wait_for(lambda: {"Stopped", "DiskSaved", "RevisionStarted",
                      "PreviousRevisionRemoved"} <= set(event_reasons(stack, namespace, "box")),
             30, what="an event per step")


def test_unchanged_spec_makes_no_revision(stack: LocalStack, namespace: str,
                                          start_agent: AgentFactory) -> None:
    agent = start_agent(gpus=2)
    apply_spec(stack, namespace, "box", "first", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    generation = apply_spec(stack, namespace, "box", "again", gpus=1,
                            revisionHistoryLimit=5)  # not a shaping field
    assert generation == 2
    wait_settled(stack, namespace, "box", revision=1)
    agent.stop()
    start_agent(gpus=2)  # a restart does not make one either
    assert wait_settled(stack, namespace, "box", revision=1)["history"][-1]["revision"] == 1


def test_rollback_restores_spec_and_disk_as_a_new_revision(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=4, extra_args=[
        "--store", f"etcd://127.0.0.1:{stack.etcd_port}/gpudock-{namespace}"])
    apply_spec(stack, namespace, "box", "install v1", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    touch_the_disk(stack, namespace, "v1")
    apply_spec(stack, namespace, "box", "more env", gpus=1,
               env=[{"name": "STAGE", "value": "two"}])
    wait_settled(stack, namespace, "box", revision=2)
    touch_the_disk(stack, namespace, "v2")
    apply_spec(stack, namespace, "box", "bigger", gpus=3)
    wait_settled(stack, namespace, "box", revision=3)
    touch_the_disk(stack, namespace, "v3")

    gpudock = [sys.executable, "-m", "gpudock"]
    kube = ["-n", namespace, "--kubeconfig", str(stack.kubeconfig)]
    done = subprocess.run([*gpudock, "rollback", "box", "--to-revision", "2", "--wait", "90",
                           *kube], capture_output=True, text=True, env=stack.env(), check=False)
    assert done.returncode == 0, done.stderr
    now = wait_settled(stack, namespace, "box", revision=4)
    assert_disk_kept(stack, namespace, "v2")
    spec = grs(stack, namespace, "box")["spec"]
    assert "rollbackTo" not in spec
    assert (spec["gpuCount"], spec["env"]) == (1, [{"name": "STAGE", "value": "two"}])
    assert len(now["gpus"]) == 1
    assert env_of(only_container(stack, namespace))["STAGE"] == "two"

    history = subprocess.run([*gpudock, "history", "box", *kube], capture_output=True,
                             text=True, env=stack.env(), check=True).stdout
    lines = history.strip().splitlines()
    assert lines[0].split()[:2] == ["REVISION", "CREATED"]
    for line, cause in zip(lines[1:], ["install v1", "more env", "bigger",
                                       "rolled back to revision 2"], strict=True):
        assert line.endswith(cause)
    assert "4 (current)" in lines[4]

    # Rolling back to a revision that does not exist: a clear condition, nothing changes.
    stack.kubectl("patch", "grs", "box", "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"rollbackTo": {"revision": 9}}}')
    wait_for(lambda: condition(stack, namespace, "box", "Degraded").get("reason")
             == "RevisionNotFound", 30, what="RevisionNotFound")
    assert only_container(stack, namespace).name == f"{namespace}_box-4"


def test_paused_keeps_gpus_stopped_frees_them_running_keeps_the_disk(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=2)
    apply_spec(stack, namespace, "a", "first", gpus=2, ports=PORTS)
    first = wait_settled(stack, namespace, "a", revision=1)
    touch_the_disk(stack, namespace)
    apply_spec(stack, namespace, "a", "pause", gpus=2, ports=PORTS, state="Paused")
    paused = wait_settled(stack, namespace, "a", phase="Paused", revision=1)
    assert paused["gpus"] == first["gpus"]
    assert only_container(stack, namespace).status == "exited"
    apply_spec(stack, namespace, "b", "waits", gpus=1)
    wait_for(lambda: status(stack, namespace, "b").get("phase") == "Pending", 30,
             what="b Pending while a is Paused")
    assert condition(stack, namespace, "b", "Ready")["reason"] == "InsufficientGPUs"

    apply_spec(stack, namespace, "a", "stop", gpus=2, ports=PORTS, state="Stopped")
    stopped = wait_settled(stack, namespace, "a", phase="Stopped", revision=1)
    assert stopped["gpus"] == []
    assert stopped["ports"] == []
    wait_settled(stack, namespace, "b", revision=1)  # a's GPUs were released
    assert [c.name for c in containers(stack, namespace)] == [f"{namespace}_b-1"]

    # A change while Stopped is recorded and applied without starting anything.
    apply_spec(stack, namespace, "a", "env while stopped", gpus=2, ports=PORTS,
               state="Stopped", env=[{"name": "LATER", "value": "yes"}])
    wait_settled(stack, namespace, "a", phase="Stopped", revision=2)
    assert [c.name for c in containers(stack, namespace)] == [f"{namespace}_b-1"]

    stack.kubectl("delete", "grs", "b", "-n", namespace, "--timeout=60s")
    apply_spec(stack, namespace, "a", "run", gpus=2, ports=PORTS, state="Running",
               env=[{"name": "LATER", "value": "yes"}])
    running = wait_settled(stack, namespace, "a", revision=2)
    assert sorted(running["gpus"]) == sorted(first["gpus"])  # the same GPUs, free again
    assert running["ports"] == first["ports"]
    assert_disk_kept(stack, namespace)
    assert env_of(only_container(stack, namespace))["LATER"] == "yes"


@pytest.mark.parametrize("saves", ["commit", "layer"])
def test_ten_updates_with_a_layer_threshold_of_three(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, saves: str,
) -> None:
    """Also: revisionHistoryLimit 3 prunes older records and their saved disks
    (committed images, or saved writable layers, which never stack up layers)."""
    start_agent(gpus=2, extra_args=["--max-image-layers", "3", "--disk-saves", saves])
    apply_spec(stack, namespace, "box", "first", gpus=1, revisionHistoryLimit=3)
    wait_settled(stack, namespace, "box", revision=1)
    touch_the_disk(stack, namespace)
    client = stack.docker_client()
    try:
        for update in range(1, 11):
            apply_spec(stack, namespace, "box", f"update {update}", gpus=1,
                       revisionHistoryLimit=3, env=[{"name": "UPDATE", "value": str(update)}])
            wait_settled(stack, namespace, "box", revision=update + 1)
            assert_disk_kept(stack, namespace)
            sh(only_container(stack, namespace), f"echo {update} >> /root/log")
            if saves == "commit":
                image = client.images.get(f"gpudock-preserved/{namespace}_box:rev-{update}")
                assert len(image.attrs["RootFS"]["Layers"]) <= 3
        history = wait_settled(stack, namespace, "box", revision=11)["history"]
        assert [h["revision"] for h in history] == [8, 9, 10, 11]
        tags = {t for i in client.images.list(name=f"gpudock-preserved/{namespace}_box")
                for t in i.tags}
        saved = sorted(int(p.name.split("-")[1]) for p in saved_layers(
            stack, grs(stack, namespace, "box")["metadata"]["uid"]))
        if saves == "commit":
            assert tags == {f"gpudock-preserved/{namespace}_box:rev-{r}" for r in (8, 9, 10)}
            assert saved == []
        else:
            assert (tags, saved) == (set(), [8, 9, 10])
    finally:
        client.close()
    container = only_container(stack, namespace)
    assert sh(container, "cat /root/log").split() == [str(i) for i in range(1, 11)]
    assert env_of(container)["UPDATE"] == "10"


@pytest.mark.parametrize("policy", ["Retain", "Purge"])
def test_history_policy_on_delete(stack: LocalStack, namespace: str,
                                  start_agent: AgentFactory, policy: str) -> None:
    agent = start_agent(gpus=2)
    apply_spec(stack, namespace, "box", "first", gpus=1, historyPolicy=policy)
    wait_settled(stack, namespace, "box", revision=1)
    touch_the_disk(stack, namespace, "kept")
    apply_spec(stack, namespace, "box", "second", gpus=2, historyPolicy=policy)
    wait_settled(stack, namespace, "box", revision=2)
    uid = grs(stack, namespace, "box")["metadata"]["uid"]
    stack.kubectl("delete", "grs", "box", "-n", namespace, "--timeout=60s")
    assert containers(stack, namespace) == []
    client = stack.docker_client()
    try:  # on overlay2 the saved disks are writable layers; committed images elsewhere
        saved = [*client.images.list(name=f"gpudock-preserved/{namespace}_box"),
                 *saved_layers(stack, uid)]
    finally:
        client.close()
    store = SqliteRevisionStore(agent.state_dir / "revisions.sqlite3")
    try:
        records = [r.revision for r in store.list(namespace, "box")]
    finally:
        store.close()
    if policy == "Purge":
        assert (saved, records) == ([], [])
        return
    assert records == [1, 2]
    assert len(saved) == 2  # the last disk was saved on delete
    # Retained, but not handed to a later resource of the same name: that one starts
    # on its own (adopting it is #9's test_9_8), and the retained disks stay.
    apply_spec(stack, namespace, "box", "again", gpus=1)
    fresh = wait_settled(stack, namespace, "box", revision=1)
    assert [h["revision"] for h in fresh["history"]] == [1]
    store = SqliteRevisionStore(agent.state_dir / "revisions.sqlite3")
    try:
        retained = [r.revision for r in store.list_retained(namespace, "box")]
    finally:
        store.close()
    assert retained == [1, 2]
