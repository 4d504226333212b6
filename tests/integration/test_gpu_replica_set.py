"""GpuReplicaSet against the real stack: kube-apiserver + `gpudock agent` as a process +
the test dockerd, with simulated GPUs."""

from __future__ import annotations

from pathlib import Path

import docker.models.containers

from gpudock.adapters.simulated_gpus import SimulatedGpuInventory
from tests.integration.conftest import AgentFactory
from tests.stack.agent_process import NODE_NAME
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack, wait_for
from tests.stack.resources import (
    all_statuses,
    apply,
    condition,
    containers,
    env_of,
    gpu_replica_set,
    status,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODE_GPUS = {g.uuid for g in SimulatedGpuInventory(NODE_NAME, 8).list_gpus()}


def _phase_is(stack: LocalStack, namespace: str, name: str, phase: str) -> bool:
    return status(stack, namespace, name).get("phase") == phase


def _run_example(stack: LocalStack, namespace: str, start_agent: AgentFactory, example: str,
                 name: str) -> docker.models.containers.Container:
    """Start an agent, apply an example, wait until it runs; its one container."""
    start_agent()
    stack.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / example))
    wait_for(lambda: _phase_is(stack, namespace, name, "Running"), 60, what="Running")
    (container,) = containers(stack, namespace)
    return container


def test_example_runs_with_two_gpus_and_two_ports(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    container = _run_example(stack, namespace, start_agent, "01-gpu-container.yaml", "knock")
    assert container.name == f"{namespace}_knock-1"
    assert container.status == "running"
    attrs = container.attrs
    assert attrs["HostConfig"]["Runtime"] == "nvidia"
    visible = env_of(container)["NVIDIA_VISIBLE_DEVICES"].split(",")
    assert len(visible) == 2
    assert len(set(visible)) == 2
    assert set(visible) <= NODE_GPUS
    assert env_of(container)["USER"] == "foo"
    assert attrs["Config"]["Cmd"] == ["sleep", "infinity"]
    labels = attrs["Config"]["Labels"]
    obj = stack.kubectl_json("get", "grs", "knock", "-n", namespace)
    assert labels["gpudock.dev/namespace"] == namespace
    assert labels["gpudock.dev/name"] == "knock"
    assert labels["gpudock.dev/kind"] == "GpuReplicaSet"
    assert labels["gpudock.dev/revision"] == "1"
    assert labels["gpudock.dev/uid"] == obj["metadata"]["uid"]  # type: ignore[index]
    assert labels["gpudock.dev/gpus"].split(",") == visible
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    bindings = attrs["HostConfig"]["PortBindings"]
    host_ports = {int(bindings[f"{p}/tcp"][0]["HostPort"]) for p in (22, 8888)}
    assert len(host_ports) == 2
    assert all(40000 <= p <= 65535 for p in host_ports)
    # The status says exactly what docker inspect says.
    st = status(stack, namespace, "knock")
    assert st["containerID"] == container.id
    assert st["containerName"] == container.name
    assert st["revision"] == 1
    assert st["gpus"] == visible
    assert {(p["containerPort"], p["hostPort"]) for p in st["ports"]} == {
        (p, int(bindings[f"{p}/tcp"][0]["HostPort"])) for p in (22, 8888)}
    assert st["observedGeneration"] == obj["metadata"]["generation"]  # type: ignore[index]
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Progressing"]["status"] == "False"
    assert conditions["Degraded"]["status"] == "False"
    # kubectl get grs shows useful columns; kubectl wait works for GitOps tools.
    row = stack.kubectl("get", "grs", "knock", "-n", namespace).stdout.splitlines()[1].split()
    # GPUS held, STATE, PHASE, no REASON (all is well: empty), RESTARTS, REVISION
    assert row[:7] == ["knock", NODE_NAME, "2", "Running", "Running", "0", "1"]
    stack.kubectl("wait", "--for=condition=Ready", "grs/knock", "-n", namespace,
                  "--timeout=10s")
    events = stack.kubectl("get", "events", "-n", namespace).stdout
    assert "Created" in events
    assert "knock-1 started with GPU-" in events


def test_twelve_one_gpu_resources_on_eight_gpus(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=8)
    apply(stack, namespace, *(gpu_replica_set(f"r{i:02d}", gpus=1) for i in range(12)))

    def settled() -> bool:
        phases = [s.get("phase") for s in all_statuses(stack, namespace).values()]
        return phases.count("Running") == 8 and phases.count("Pending") == 4

    wait_for(settled, 120, what="8 Running and 4 Pending")
    statuses = all_statuses(stack, namespace)
    running = sorted(n for n, s in statuses.items() if s["phase"] == "Running")
    pending = sorted(n for n, s in statuses.items() if s["phase"] == "Pending")
    held = [statuses[n]["gpus"][0] for n in running]
    assert len(set(held)) == 8
    assert set(held) == NODE_GPUS
    for name in pending:
        assert condition(stack, namespace, name, "Ready")["reason"] == "InsufficientGPUs"
        assert "0 of 8" in condition(stack, namespace, name, "Ready")["message"]
    # Docker agrees: 8 containers, 8 distinct GPUs.
    docker_gpus = [env_of(c)["NVIDIA_VISIBLE_DEVICES"] for c in containers(stack, namespace)]
    assert len(docker_gpus) == 8
    assert len(set(docker_gpus)) == 8

    stack.kubectl("delete", "grs", running[0], running[1], "-n", namespace, "--timeout=60s")

    def two_more_started() -> bool:
        now = all_statuses(stack, namespace)
        return sum(1 for n in pending if now[n].get("phase") == "Running") == 2

    wait_for(two_more_started, 60, what="2 pending resources to start")
    now = all_statuses(stack, namespace)
    assert [s["phase"] for s in now.values()].count("Running") == 8
    assert [s["phase"] for s in now.values()].count("Pending") == 2
    gpus_now = [now[n]["gpus"][0] for n in now if now[n]["phase"] == "Running"]
    assert len(set(gpus_now)) == 8
    assert len(containers(stack, namespace)) == 8


def test_zero_gpu_container_sees_no_gpu(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    container = _run_example(stack, namespace, start_agent, "03-cpu-only-container.yaml",
                             "cpu-only")
    image_env = stack.docker_client().images.get(container.attrs["Config"]["Image"]).attrs[
        "Config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in image_env  # the image asks for every GPU
    assert env_of(container)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert container.attrs["HostConfig"]["Runtime"] != "nvidia"
    assert not container.attrs["HostConfig"].get("DeviceRequests")
    code, output = container.exec_run(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"])
    assert isinstance(output, bytes)
    assert (code, output.decode().strip()) == (0, "void")
    assert status(stack, namespace, "cpu-only")["gpus"] == []


def test_bad_input_gets_a_condition_and_no_container(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    start_agent(extra_args=["--allowed-host-path", str(allowed)])
    client = stack.docker_client()
    blocker = client.containers.run(BUSYBOX_IMAGE, detach=True, name=f"{namespace}-blocker",
                                    ports={"80/tcp": 45123})
    try:
        apply(stack, namespace,
               gpu_replica_set("outside", mounts=[{"hostPath": "/etc",
                                                   "mountPath": "/host-etc"}]),
               gpu_replica_set("no-image", image="example.com/not-here:1",
                               imagePullPolicy="Never"),
               gpu_replica_set("port-taken", ports=[{"containerPort": 22,
                                                      "hostPort": 45123}]),
               gpu_replica_set("fine", mounts=[{"hostPath": str(allowed),
                                                "mountPath": "/data"}]))
        expected = {"outside": "HostPathNotAllowed", "no-image": "ImageNotPresent",
                    "port-taken": "HostPortInUse"}

        def reported() -> bool:
            return all(condition(stack, namespace, n, "Degraded").get("reason") == r
                       for n, r in expected.items())

        wait_for(reported, 60, what="conditions on the bad resources")
        wait_for(lambda: _phase_is(stack, namespace, "fine", "Running"), 60, what="fine")
        for name in expected:
            degraded = condition(stack, namespace, name, "Degraded")
            assert degraded["status"] == "True"
            assert status(stack, namespace, name)["phase"] == "Failed"
        assert "/etc is not under an allowed root" in condition(
            stack, namespace, "outside", "Degraded")["message"]
        assert "45123" in condition(stack, namespace, "port-taken", "Degraded")["message"]
        names = [c.name for c in containers(stack, namespace)]
        assert names == [f"{namespace}_fine-1"]
        events = stack.kubectl("get", "events", "-n", namespace).stdout
        assert "ImageNotPresent" in events
    finally:
        blocker.remove(force=True)
        client.close()


def test_auto_port_held_outside_docker_is_skipped(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    import socket

    from tests.stack.processes import free_port_range

    first = free_port_range(21)
    start_agent(extra_args=["--port-range", f"{first}-{first + 20}"])
    holder = socket.socket()  # a process outside Docker listens on the first port
    holder.bind(("0.0.0.0", first))
    holder.listen()
    try:
        apply(stack, namespace, gpu_replica_set("ssh", ports=[{"containerPort": 22}]))
        wait_for(lambda: _phase_is(stack, namespace, "ssh", "Running"), 60, what="Running")
        (binding,) = status(stack, namespace, "ssh")["ports"]
        assert first < binding["hostPort"] <= first + 20
    finally:
        holder.close()
