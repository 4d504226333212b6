"""Chart/ installed with Helm's engine (helm-python-sdk) on a real single-node cluster:
the agent runs as the DaemonSet's pod on the kubelet, drives the node's dockerd through
the mounted socket, and survives upgrade, pod deletion, uninstall and reinstall without
touching the instances it runs. The tests share one cluster and run in order."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.revisions import wait_settled
from tests.stack.helm_chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    helm,
    local_stack_values,
    objects,
    release_status,
    render,
)
from tests.stack.localstack import REPO_ROOT, LocalStack, wait_for
from tests.stack.resources import apply, grs, status

pytestmark = [pytest.mark.stack, pytest.mark.node]
READY_BOUND_S = 120  # a fresh agent pod: image present, so start + kopf login + first pass
EXAMPLE = REPO_ROOT / "examples" / "01-gpu-container.yaml"
TENANT = "tenant-a"


def agent_pods(cluster: LocalStack) -> list[dict[str, Any]]:
    found = cluster.kubectl_json("get", "pods", "-n", NAMESPACE, "-l",
                                 f"app.kubernetes.io/instance={RELEASE}")
    items: list[dict[str, Any]] = found["items"]  # type: ignore[assignment]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_agent_pod(cluster: LocalStack, other_than: str = "") -> dict[str, Any]:
    """Wait for the one agent pod (not ``other_than``) to be Running and Ready."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [p for p in agent_pods(cluster) if p["metadata"]["uid"] != other_than
                    and p["status"].get("phase") == "Running"
                    and any(c["type"] == "Ready" and c["status"] == "True"
                            for c in p["status"].get("conditions", []))]
        return len(found) == 1
    wait_for(ready, READY_BOUND_S, 1, "the agent pod Running and Ready")
    return found[0]


def container_state(cluster: LocalStack, container_id: str) -> dict[str, Any]:
    client = cluster.docker_client()
    try:
        attrs: dict[str, Any] = client.api.inspect_container(container_id)
        return attrs
    finally:
        client.close()


def agent_container(pod: dict[str, Any]) -> str:
    """The Docker ID of the pod's agent container (the kubelet runs it on the stack's
    dockerd through dockershim)."""
    (status_,) = pod["status"]["containerStatuses"]
    return str(status_["containerID"]).removeprefix("docker://")


def agent_exit(cluster: LocalStack, container_id: str) -> tuple[int, float, str]:
    """Block until the container exits: its exit code, when (monotonic) and its last
    log lines, read at once (the kubelet removes a deleted pod's containers soon)."""
    client = cluster.docker_client()
    try:
        code = int(client.api.wait(container_id, timeout=120)["StatusCode"])
        exited_at = time.monotonic()
        logs: bytes = client.api.logs(container_id, tail=40)
        return code, exited_at, logs.decode(errors="replace")
    finally:
        client.close()


def pod_logs(cluster: LocalStack, pod: dict[str, Any]) -> str:
    return cluster.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"]).stdout


def test_default_render_is_accepted_by_the_api_server(cluster: LocalStack) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE)
    text = "---\n".join(yaml.safe_dump(o) for o in objects(render()))
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
    kinds = sorted({o["kind"] for o in objects(render())})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service",
                     "ServiceAccount"]
    assert "(server dry run)" in result.stdout
    assert cluster.kubectl("get", "daemonsets", "-n", NAMESPACE).stdout == ""


def test_install_runs_the_agent_pod_which_runs_an_example_on_the_nodes_dockerd(
        cluster: LocalStack) -> None:
    started = time.monotonic()
    release = helm(cluster.kubeconfig).install(
        str(CHART_DIR), RELEASE, local_stack_values(cluster), namespace=NAMESPACE,
        create_namespace=True, wait="watcher", timeout=READY_BOUND_S)
    assert release_status(release) == "deployed", release
    pod = ready_agent_pod(cluster)
    print(f"agent pod Ready {time.monotonic() - started:.1f}s after helm install")
    assert pod["spec"]["nodeName"] == "gpu-node-1"
    # The agent drives the node's dockerd through the mounted socket: the pod's own
    # container is on that dockerd, and so is the instance it creates.
    agent_container = pod["status"]["containerStatuses"][0]["containerID"]
    assert agent_container.startswith("docker://")
    labels = container_state(cluster, agent_container.removeprefix("docker://"))[
        "Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "gpudock-agent"

    cluster.kubectl("create", "namespace", TENANT)
    cluster.kubectl("apply", "-n", TENANT, "-f", str(EXAMPLE))
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    status = wait_settled(cluster, TENANT, name)
    state = container_state(cluster, status["containerID"])
    assert state["State"]["Running"]
    assert state["Config"]["Labels"]["gpudock.dev/name"] == name
    node = cluster.kubectl_json("get", "gpunode", "gpu-node-1")
    assert node["status"]["gpus"], node["status"]  # type: ignore[index]
    logs = pod_logs(cluster, pod)
    assert "Traceback" not in logs, logs
    assert "gpudock agent for node gpu-node-1 starting" in logs


def test_upgrade_rolls_the_agent_and_leaves_the_instance_running(cluster: LocalStack) -> None:
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    before = status(cluster, TENANT, name)
    old_pod = ready_agent_pod(cluster)
    helm(cluster.kubeconfig).upgrade(
        str(CHART_DIR), RELEASE, local_stack_values(cluster, portRange="41000-41999"),
        namespace=NAMESPACE, wait="watcher", timeout=READY_BOUND_S)
    new_pod = ready_agent_pod(cluster, other_than=old_pod["metadata"]["uid"])
    env = {e["name"]: e.get("value") for e in new_pod["spec"]["containers"][0]["env"]}
    assert env["GPUDOCK_PORT_RANGE"] == "41000-41999"
    after = wait_settled(cluster, TENANT, name)
    assert after["containerID"] == before["containerID"]
    assert container_state(cluster, after["containerID"])["State"]["StartedAt"] == \
        container_state(cluster, before["containerID"])["State"]["StartedAt"]
    # The new agent adopted it: it pauses and resumes that same container.
    for state, phase in (("Paused", "Paused"), ("Running", "Running")):
        cluster.kubectl("patch", "grs", name, "-n", TENANT, "--type=merge",
                        "-p", json.dumps({"spec": {"state": state}}))
        assert wait_settled(cluster, TENANT, name, phase=phase)["containerID"] == \
            before["containerID"]
    assert "Traceback" not in pod_logs(cluster, new_pod)


def test_deleted_agent_pod_comes_back_and_the_instances_stay(cluster: LocalStack) -> None:
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    before = status(cluster, TENANT, name)["containerID"]
    pod = ready_agent_pod(cluster)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        exit_ = pool.submit(agent_exit, cluster, agent_container(pod))
        time.sleep(1)  # the wait is in place before the signal goes
        started = time.monotonic()
        cluster.kubectl("delete", "pod", "-n", NAMESPACE, pod["metadata"]["name"],
                        "--timeout=90s", timeout=100)
        code, exited_at, tail = exit_.result(timeout=30)
    # SIGTERM to the agent as PID 1 ends it gracefully: it exits 0 by itself, before
    # the kubelet's SIGKILL at the end of the grace period would give 137.
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    print(f"agent exited {code} {exited_at - started:.1f}s after the delete ({grace}s grace)")
    assert code == 0, (f"the agent did not stop by itself on SIGTERM: exit {code} after "
                       f"{exited_at - started:.0f}s of {grace}s grace; its last lines:\n"
                       f"{tail}")
    ready_agent_pod(cluster, other_than=pod["metadata"]["uid"])
    assert wait_settled(cluster, TENANT, name)["containerID"] == before
    assert container_state(cluster, before)["State"]["Running"]


def test_uninstall_keeps_crds_resources_and_containers_and_reinstall_adopts(
        cluster: LocalStack) -> None:
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    container = status(cluster, TENANT, name)["containerID"]
    helm(cluster.kubeconfig).uninstall(RELEASE, wait="watcher", timeout=120)
    wait_for(lambda: not agent_pods(cluster), 90, 1, "the agent pod gone")
    for kind, object_name in (("daemonset", "gpudock-agent"),
                              ("serviceaccount", "gpudock-agent"),
                              ("clusterrole", "gpudock-agent"),
                              ("clusterrolebinding", "gpudock-agent"),
                              ("clusterrole", "gpudock-view")):
        found = cluster.kubectl("get", kind, object_name, "-n", NAMESPACE, check=False)
        assert found.returncode != 0, f"{kind}/{object_name} left after uninstall"
    for crd in (CHART_DIR / "crds").glob("*.yaml"):
        crd_name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        cluster.kubectl("get", "crd", crd_name)
    assert grs(cluster, TENANT, name)["metadata"]["name"] == name
    assert container_state(cluster, container)["State"]["Running"]

    helm(cluster.kubeconfig).install(
        str(CHART_DIR), RELEASE, local_stack_values(cluster), namespace=NAMESPACE,
        wait="watcher", timeout=READY_BOUND_S)
    pod = ready_agent_pod(cluster)
    assert wait_settled(cluster, TENANT, name)["containerID"] == container
    assert "Traceback" not in pod_logs(cluster, pod)


def test_deleting_a_namespace_with_instances_completes_and_removes_them(
        cluster: LocalStack) -> None:
    doomed = "tenant-doomed"
    cluster.kubectl("create", "namespace", doomed)
    for index in range(2):
        manifest = yaml.safe_load((REPO_ROOT / "examples" / "03-cpu-only-container.yaml")
                                  .read_text())
        manifest["metadata"]["name"] = f"doomed-{index}"
        apply(cluster, doomed, manifest)
    ids = [wait_settled(cluster, doomed, f"doomed-{i}")["containerID"]
           for i in range(2)]
    started = time.monotonic()
    cluster.kubectl("delete", "namespace", doomed, "--timeout=120s", timeout=130)
    print(f"namespace deleted in {time.monotonic() - started:.1f}s")
    client = cluster.docker_client()
    try:
        left = [c.id for c in client.containers.list(all=True) if c.id in ids]
    finally:
        client.close()
    assert left == []


def test_the_image_runs_the_agent_as_pid_1_and_is_small(cluster: LocalStack) -> None:
    version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    client = cluster.docker_client()
    try:
        image = client.images.get(f"gpudock/agent:{version}")
        size_mb = image.attrs["Size"] / 1e6
        print(f"agent image: {size_mb:.0f} MB")
        assert size_mb < 400
        listing = client.containers.run(image, remove=True, entrypoint=[
            "sh", "-c", "ls /var/lib/apt/lists; command -v gcc cc; "
                        "gpudock --help >/dev/null && echo cli-ok"]).decode()
        assert listing.strip() == "cli-ok", listing  # no apt lists, no compiler
    finally:
        client.close()
    pod = ready_agent_pod(cluster)
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("docker://")
    pid = container_state(cluster, container)["State"]["Pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[1:3] == [b"/opt/gpudock/bin/gpudock", b"agent"], argv
