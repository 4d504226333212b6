"""#12 against the real stack: every node's GPUs and ports (GpuNode), running a
command in an instance (ExecRequest, `kubectl gpudock exec`), and metrics."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    MARKER,
    apply_spec,
    only_container,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.processes import free_port
from tests.stack.resources import apply, containers, env_of, gpu_replica_set, status


def _gpu_node(stack: LocalStack, name: str) -> dict[str, Any]:
    found = stack.kubectl("get", "gpunode", name, "-o", "json", check=False)
    if found.returncode != 0:
        return {}
    body: dict[str, Any] = json.loads(found.stdout)
    return dict(body.get("status") or {})


def _plugin(stack: LocalStack, namespace: str, *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`kubectl gpudock ...`: kubectl finds the plugin on PATH, as a user's would."""
    return stack.kubectl("gpudock", "-n", namespace, *args, check=False, timeout=timeout)


def test_12_gpu_nodes_show_holders_and_ports_from_docker(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=8, extra_args=["--heartbeat-seconds", "60"])  # changes, not the beat
    apply(stack, namespace, gpu_replica_set("one", gpus=1, ports=[{"containerPort": 22}]),
          gpu_replica_set("two", gpus=2), gpu_replica_set("none", gpus=0))
    for name in ("one", "two", "none"):
        wait_settled(stack, namespace, name)
    wait_for(lambda: _gpu_node(stack, "gpu-node-1").get("gpusFree") == 5, 30,
             what="GpuNode gpu-node-1 with 5 free")
    node = _gpu_node(stack, "gpu-node-1")
    assert node["gpusTotal"] == 8
    assert node["gpusAllocated"] == 3
    held = {g["uuid"]: (g["holder"]["namespace"], g["holder"]["name"])
            for g in node["gpus"] if g.get("holder")}
    in_docker = {gpu: (c.labels["gpudock.dev/namespace"], c.labels["gpudock.dev/name"])
                 for c in containers(stack, namespace)
                 for gpu in c.labels["gpudock.dev/gpus"].split(",") if gpu}
    assert held == in_docker
    port = status(stack, namespace, "one")["ports"][0]["hostPort"]
    bindings = {(b["hostPort"], b["holder"]["name"]) for b in node["ports"]["bindings"]}
    assert (port, "one") in bindings
    row = stack.kubectl("get", "gpunodes", "gpu-node-1").stdout.splitlines()[1].split()
    assert row[:3] == ["gpu-node-1", "8", "5"]

    stack.kubectl("delete", "grs", "two", "-n", namespace, "--timeout=30s")
    wait_for(lambda: _gpu_node(stack, "gpu-node-1").get("gpusFree") == 7, 30,
             what="the deleted one's GPUs free again")
    lines = _plugin(stack, namespace, "nodes").stdout.splitlines()
    mine = [line for line in lines if line.startswith("gpu-node-1 ")]
    assert len(mine) == 8
    assert sum(f"{namespace}/one" in line for line in mine) == 1
    ports = _plugin(stack, namespace, "ports", "gpu-node-1").stdout
    assert f"{port}" in ports
    assert f"{namespace}/one" in ports

    # Another node's agent keeps its own GpuNode, and only that.
    start_agent(gpus=4, node_name="gpu-node-2", extra_args=["--heartbeat-seconds", "60"])
    wait_for(lambda: _gpu_node(stack, "gpu-node-2").get("gpusTotal") == 4, 30,
             what="GpuNode gpu-node-2")
    assert _gpu_node(stack, "gpu-node-1")["gpusTotal"] == 8


def test_12_kubectl_gpudock_exec_keeps_streams_and_exit_codes(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "box", "first")
    wait_settled(stack, namespace, "box")
    ran = _plugin(stack, namespace, "exec", "box", "--",
                  "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (ran.returncode, ran.stdout, ran.stderr) == (3, "out\n", "err\n")

    big = _plugin(stack, namespace, "exec", "box", "--", "sh", "-c",
                  "head -c 1048576 /dev/zero | tr '\\0' a")
    assert big.returncode == 0
    assert len(big.stdout) == 64 * 1024
    assert "stdout was cut at 64 KiB" in big.stderr

    started = time.monotonic()
    slow = _plugin(stack, namespace, "exec", "box", "--timeout", "2", "--", "sleep", "300")
    assert slow.returncode == 124
    assert "DeadlineExceeded" in slow.stderr
    assert time.monotonic() - started < 60
    assert "sleep 300" not in sh(only_container(stack, namespace), "ps -o args")

    apply_spec(stack, namespace, "box", "stop", state="Stopped")
    wait_settled(stack, namespace, "box", phase="Stopped")
    stopped = _plugin(stack, namespace, "exec", "box", "--", "true")
    assert stopped.returncode == 1
    assert "ReplicaSetNotRunning" in stopped.stderr
    missing = _plugin(stack, namespace, "exec", "nobody", "--", "true")
    assert "ReplicaSetNotFound" in missing.stderr


def test_12_finished_exec_requests_go_after_their_ttl(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "box", "first")
    wait_settled(stack, namespace, "box")
    apply(stack, namespace, {
        "apiVersion": "gpudock.dev/v1alpha1", "kind": "ExecRequest",
        "metadata": {"name": "short"},
        "spec": {"replicaSetName": "box", "command": ["true"],
                 "ttlSecondsAfterFinished": 5}})
    wait_for(lambda: stack.kubectl("get", "execrequest", "short", "-n", namespace,
                                   "-o", "jsonpath={.status.phase}",
                                   check=False).stdout == "Completed", 30, what="Completed")
    wait_for(lambda: stack.kubectl("get", "execrequest", "short", "-n", namespace,
                                   check=False).returncode != 0, 30, what="deleted by TTL")


def test_12_metrics_are_prometheus_and_match_the_gpu_node(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    port = free_port()
    start_agent(gpus=8, extra_args=["--metrics-port", str(port)])
    apply(stack, namespace, gpu_replica_set("a", gpus=2), gpu_replica_set("b", gpus=1))
    wait_settled(stack, namespace, "a")
    wait_settled(stack, namespace, "b")
    wait_for(lambda: _gpu_node(stack, "gpu-node-1").get("gpusAllocated") == 3, 30,
             what="GpuNode with 3 allocated")

    def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[
                    tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    wait_for(lambda: scrape().get("gpudock_gpus_allocated", {}).get(
        (("node", "gpu-node-1"),)) == 3, 30, what="metrics with 3 GPUs allocated")
    samples = scrape()
    node = _gpu_node(stack, "gpu-node-1")
    assert samples["gpudock_gpus_total"][(("node", "gpu-node-1"),)] == node["gpusTotal"]
    assert samples["gpudock_resources"][(("kind", "GpuReplicaSet"), ("phase", "Running"))] == 2
    count = samples["gpudock_reconcile_duration_seconds_count"][(("kind", "GpuReplicaSet"),)]
    assert count >= 2
    assert samples["gpudock_rollout_step_duration_seconds_count"][
        (("step", "StartRevision"),)] >= 2
    assert any(k == (("operation", "put"),)
               for k in samples["gpudock_revision_store_duration_seconds_count"])


def test_12_image_commit_saves_a_running_container_without_its_instance(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=4)
    apply_spec(stack, namespace, "src", "first", gpus=1)
    wait_settled(stack, namespace, "src")
    touch_the_disk(stack, namespace, "committed")
    before = status(stack, namespace, "src")
    image = f"gpudock.invalid/{namespace}/saved:v1"
    done = _plugin(stack, namespace, "commit", "src", image)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("sha256:")
    after = status(stack, namespace, "src")
    assert (after["containerID"], after["revision"]) == (before["containerID"],
                                                          before["revision"])
    client = stack.docker_client()
    try:
        config = client.images.get(image).attrs["Config"]
        assert not [k for k in config.get("Labels") or {} if k.startswith("gpudock.dev/")]
        assert not [e for e in config.get("Env") or () if "GPU-" in e]
        files = client.containers.run(image, ["sh", "-c", f"cat {MARKER}; test -e "
                                              "/etc/os-release && echo present || echo gone"],
                                      remove=True).decode().split()
        assert files == ["committed", "gone"]
    finally:
        client.close()
    # Instances made from it get exactly their own GPUs.
    apply(stack, namespace, gpu_replica_set("zero", gpus=0, image=image),
          gpu_replica_set("one", gpus=1, image=image))
    wait_settled(stack, namespace, "zero")
    wait_settled(stack, namespace, "one")
    seen = {name: env_of(only_container(stack, namespace, name))["NVIDIA_VISIBLE_DEVICES"]
            for name in ("zero", "one")}
    assert seen["zero"] == "void"
    assert seen["one"] == status(stack, namespace, "one")["gpus"][0]
    assert seen["one"] != before["gpus"][0]

    again = _plugin(stack, namespace, "commit", "src", image)
    assert again.returncode == 1
    assert "ImageTagTaken" in again.stderr
    missing = _plugin(stack, namespace, "commit", "nobody",
                      f"gpudock.invalid/{namespace}/other:v1")
    assert missing.returncode == 1
    assert "ReplicaSetNotFound" in missing.stderr


def test_12_view_reads_nodes_and_commits_but_not_exec_output_edit_runs_both(
    stack: LocalStack, namespace: str,
) -> None:
    """Checked by the real API server's RBAC, for users bound to the roles of
    manifests/user-roles.yaml (kubectl impersonates them)."""
    for user, role in (("alice-viewer", "gpudock-view"), ("bob-editor", "gpudock-edit")):
        stack.kubectl("create", "clusterrolebinding", f"{user}-{namespace}",
                      f"--clusterrole={role}", f"--user={user}")
    try:
        def can(user: str, verb: str, resource: str) -> bool:
            answer = stack.kubectl("auth", "can-i", verb, resource, "-n", namespace,
                                   f"--as={user}", check=False).stdout.strip()
            return answer == "yes"

        assert can("alice-viewer", "list", "gpunodes.gpudock.dev")
        assert can("alice-viewer", "get", "imagecommits.gpudock.dev")
        assert not can("alice-viewer", "create", "execrequests.gpudock.dev")
        assert not can("alice-viewer", "get", "execrequests.gpudock.dev")
        assert not can("alice-viewer", "create", "imagecommits.gpudock.dev")
        assert can("bob-editor", "create", "execrequests.gpudock.dev")
        assert can("bob-editor", "create", "imagecommits.gpudock.dev")
        listed = stack.kubectl("get", "gpunodes", "--as=alice-viewer", check=False)
        assert listed.returncode == 0, listed.stderr
        refused = stack.kubectl("get", "execrequests", "-n", namespace,
                                "--as=alice-viewer", check=False)
        assert refused.returncode != 0
        assert "forbidden" in refused.stderr
    finally:
        for user in ("alice-viewer", "bob-editor"):
            stack.kubectl("delete", "clusterrolebinding", f"{user}-{namespace}",
                          check=False)


def test_12_the_day2_examples_run(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    examples = Path(__file__).resolve().parents[2] / "examples"
    stack.kubectl("apply", "-n", namespace, "-f", str(examples / "03-cpu-only-container.yaml"))
    wait_settled(stack, namespace, "cpu-only")
    stack.kubectl("apply", "-n", namespace, "-f", str(examples / "04-exec-request.yaml"))
    # The commit writes under its namespace's repository (the example names default's).
    commit = (examples / "05-image-commit.yaml").read_text()
    assert "gpudock.invalid/default/cpu-only:saved" in commit
    image = f"gpudock.invalid/{namespace}/cpu-only:saved"
    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input=commit.replace("gpudock.invalid/default/cpu-only:saved", image))

    def phase(kind: str, name: str) -> str:
        return stack.kubectl("get", kind, name, "-n", namespace, "-o",
                             "jsonpath={.status.phase}", check=False).stdout

    wait_for(lambda: phase("execrequest", "hello") == "Completed", 30, what="hello ran")
    hello = stack.kubectl_json("get", "execrequest", "hello", "-n", namespace)["status"]
    assert hello["stdout"].startswith("hello from cpu-only")  # type: ignore[index]
    assert hello["stderr"] == "and a warning\n"  # type: ignore[index]
    wait_for(lambda: phase("imagecommit", "cpu-only-saved") == "Succeeded", 60,
             what="the commit")
    client = stack.docker_client()
    try:
        assert client.images.get(image)
        stack.kubectl("delete", "imagecommit", "cpu-only-saved", "-n", namespace)
        wait_for(lambda: not client.images.list(name=image.rsplit(":", 1)[0]), 30,
                 what="the image removed with its ImageCommit (deletionPolicy Delete)")
    finally:
        client.close()


def test_12_a_request_for_an_instance_on_a_node_without_agent_fails_clearly(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--heartbeat-seconds", "1"])
    apply(stack, namespace, gpu_replica_set("far", node="no-such-node"))
    ran = _plugin(stack, namespace, "exec", "far", "--", "true")
    assert ran.returncode == 1
    assert "NodeNotFound" in ran.stderr
    volumes = _gpu_node(stack, "gpu-node-1")["volumes"]
    assert volumes["backend"] == "loopfile"  # the node's default, where new volumes go
    assert volumes["freeBytes"] > 0


def test_27_an_image_commit_deleted_while_its_agent_is_down_still_takes_its_image(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    """The 30-minute soak (seed 4242) left a deleted ImageCommit's image on its node:
    the image was removed only on the watch's DELETED event, which an agent that is
    down (or whose watch is away) never sees. The agent that runs a commit now holds
    it with its node's commit finalizer until the image is gone."""
    agent = start_agent()
    apply(stack, namespace, gpu_replica_set("src", gpus=0))
    wait_settled(stack, namespace, "src")
    image = f"gpudock.invalid/{namespace}/kept:v1"
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=(
        "apiVersion: gpudock.dev/v1alpha1\nkind: ImageCommit\nmetadata:\n  name: saved\n"
        f"spec:\n  replicaSetName: src\n  image: {image}\n  deletionPolicy: Delete\n"))

    def commit() -> dict[str, Any]:
        found = stack.kubectl("get", "imagecommit", "saved", "-n", namespace, "-o", "json",
                              check=False)
        if found.returncode != 0:
            return {}
        body: dict[str, Any] = json.loads(found.stdout)
        return body

    wait_for(lambda: (commit().get("status") or {}).get("phase") == "Succeeded", 60,
             what="the commit")
    agent.kill()
    stack.kubectl("delete", "imagecommit", "saved", "-n", namespace, "--wait=false")
    # The delete waits for the node's agent: the image is still there and so is the
    # object, marked for deletion.
    assert (commit().get("metadata") or {}).get("deletionTimestamp")
    client = stack.docker_client()
    try:
        assert client.images.list(name=image.rsplit(":", 1)[0])
        start_agent()
        wait_for(lambda: not commit(), 60, what="the ImageCommit gone")
        assert not client.images.list(name=image.rsplit(":", 1)[0])
    finally:
        client.close()
