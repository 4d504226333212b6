"""#22 item 8: CPU, memory, /dev/shm and process limits, on the real stack.

Docker enforces what ``spec.resources.limits``, ``spec.shmSize`` and ``spec.pidsLimit``
say (and the agent's per-GPU defaults where a spec says nothing); cpu, memory and pids
change on the running container (same container ID, same revision), shm through a new
revision with the disk kept; what no node could run, or this node cannot, is refused
with its reason and nothing changed; the GpuNode shows allocatable and allocated.
"""

from __future__ import annotations

import json
from typing import Any

import docker.models.containers

from gpudock.api.quantity import format_size
from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    touch_the_disk,
    wait_settled,
)
from tests.stack.agent_process import NODE_NAME
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import condition, event_reasons, grs, status

MI = 2**20
SLEEP = ["sleep", "infinity"]


def _host_config(container: docker.models.containers.Container) -> dict[str, Any]:
    container.reload()
    found: dict[str, Any] = container.attrs["HostConfig"]
    return found


def _limits(host: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (int(host.get("NanoCpus") or 0), int(host.get("Memory") or 0),
            int(host.get("MemorySwap") or 0), int(host.get("ShmSize") or 0),
            max(int(host.get("PidsLimit") or 0), 0))  # none: null, 0 or -1


def _node_cpus_and_memory(stack: LocalStack) -> tuple[int, int]:
    client = stack.docker_client()
    try:
        info = client.info()
    finally:
        client.close()
    return int(info["NCPU"]), int(info["MemTotal"])


def _resources(cpu: str, memory: str, requests: dict[str, str] | None = None,
               ) -> dict[str, Any]:
    return {"limits": {"cpu": cpu, "memory": memory},
            **({"requests": requests} if requests else {})}


def test_22_8_host_config_has_each_limit_and_the_per_gpu_defaults_and_the_node_counts_them(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--cpus-per-gpu", "500m", "--memory-per-gpu", "64Mi",
                            "--shm-per-gpu", "32Mi"])
    apply_spec(stack, namespace, "own", "own limits", gpus=1, command=SLEEP,
               resources=_resources("1", "128Mi", {"cpu": "250m", "memory": "96Mi"}),
               shmSize="256Mi", pidsLimit=100)
    apply_spec(stack, namespace, "defaults", "the node's", gpus=2, command=SLEEP)
    wait_settled(stack, namespace, "own", revision=1)
    wait_settled(stack, namespace, "defaults", revision=1)

    own = _host_config(only_container(stack, namespace, "own"))
    assert _limits(own) == (10**9, 128 * MI, 128 * MI, 256 * MI, 100)
    # Two GPUs at the per-GPU defaults; no pids limit.
    defaults = _host_config(only_container(stack, namespace, "defaults"))
    assert _limits(defaults) == (10**9, 128 * MI, 128 * MI, 64 * MI, 0)
    # /dev/shm inside is the size asked for.
    code, out = only_container(stack, namespace, "own").exec_run(["df", "-k", "/dev/shm"])
    assert code == 0
    assert isinstance(out, bytes)
    assert str(256 * 1024) in out.decode(), out

    # The node: its CPUs and memory, and the requests held (own's requests, the
    # other's limits: a request not set is its limit).
    cpus, memory = _node_cpus_and_memory(stack)
    wanted = {"allocatable": {"cpu": str(cpus), "memory": format_size(memory)},
              "allocated": {"cpu": "1250m", "memory": "224Mi"}}

    def node_counts() -> dict[str, Any] | None:
        node = (stack.kubectl_json("get", "gpunode", NODE_NAME).get("status") or {})
        assert isinstance(node, dict)
        seen = {k: node.get(k) for k in wanted}
        return seen if seen == wanted else None

    wait_for(node_counts, 60, what=f"GpuNode allocatable/allocated {wanted}")


def test_22_8_cpu_memory_pids_change_in_place_shm_by_a_new_revision_and_a_rollback_keeps_them(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "job", "first", gpus=1, command=SLEEP,
               resources=_resources("1", "128Mi"), shmSize="64Mi")
    wait_settled(stack, namespace, "job", revision=1)
    first = only_container(stack, namespace, "job")
    touch_the_disk(stack, namespace, name="job")

    # cpu, memory and pids: the same container, the same revision, Docker updated.
    apply_spec(stack, namespace, "job", "more memory", gpus=1, command=SLEEP,
               resources=_resources("500m", "256Mi"), shmSize="64Mi", pidsLimit=64)
    wait_settled(stack, namespace, "job", revision=1)
    wait_for(lambda: _limits(_host_config(first))[:3] == (5 * 10**8, 256 * MI, 256 * MI),
             60, what="the container's limits updated")
    assert _limits(_host_config(first))[4] == 64
    assert only_container(stack, namespace, "job").id == first.id
    assert status(stack, namespace, "job")["containerID"] == first.id
    assert condition(stack, namespace, "job", "Ready")["status"] == "True"
    assert "LimitsUpdated" in event_reasons(stack, namespace, "job")
    assert len(status(stack, namespace, "job")["history"]) == 1

    # shm: a new revision, the disk kept, the in-place values carried on.
    apply_spec(stack, namespace, "job", "more shm", gpus=1, command=SLEEP,
               resources=_resources("500m", "256Mi"), shmSize="128Mi", pidsLimit=64)
    wait_settled(stack, namespace, "job", revision=2)
    second = only_container(stack, namespace, "job")
    assert second.id != first.id
    assert _limits(_host_config(second)) == (5 * 10**8, 256 * MI, 256 * MI, 128 * MI, 64)
    assert_disk_kept(stack, namespace, name="job")

    # Revision 1's record notes the values it last ran with, not those it began with.
    stack.kubectl("patch", "grs", "job", "-n", namespace, "--type=merge", "-p",
                  json.dumps({"spec": {"rollbackTo": {"revision": 1}}}))
    wait_settled(stack, namespace, "job", revision=3)
    spec = grs(stack, namespace, "job")["spec"]
    assert spec["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert spec["pidsLimit"] == 64
    assert spec["shmSize"] == "64Mi"
    third = only_container(stack, namespace, "job")
    assert _limits(_host_config(third)) == (5 * 10**8, 256 * MI, 256 * MI, 64 * MI, 64)

    # No pids limit any more: lifted in place. No cpu and memory limits: Docker cannot
    # lift those in place, so a new revision without them (the disk kept).
    apply_spec(stack, namespace, "job", "no pids limit", gpus=1, command=SLEEP,
               resources=_resources("500m", "256Mi"), shmSize="64Mi")
    wait_for(lambda: _limits(_host_config(third))[4] == 0, 60, what="pids lifted")
    wait_settled(stack, namespace, "job", revision=3)
    assert only_container(stack, namespace, "job").id == third.id
    apply_spec(stack, namespace, "job", "no limits", gpus=1, command=SLEEP,
               shmSize="64Mi")
    wait_settled(stack, namespace, "job", revision=4)
    assert _limits(_host_config(only_container(stack, namespace, "job"))) == (
        0, 0, 0, 64 * MI, 0)
    assert_disk_kept(stack, namespace, name="job")


def test_22_8_refusals_say_why_and_change_nothing(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply_spec(stack, namespace, "job", "first", gpus=1, command=SLEEP,
               resources=_resources("1", "128Mi"))
    wait_settled(stack, namespace, "job", revision=1)
    running = only_container(stack, namespace, "job")
    before = _limits(_host_config(running))
    cpus, _ = _node_cpus_and_memory(stack)

    for reason, resources, says in (
            ("LimitBelowRequest", _resources("1", "128Mi", {"memory": "256Mi"}),
             "limits.memory 128Mi is below spec.resources.requests.memory 256Mi"),
            ("BelowDockerMinimum", _resources("1", "4Mi"), "Docker's minimum of 6Mi"),
            ("ExceedsNodeCapacity", _resources(str(cpus + 1), "128Mi"),
             f"asks for {cpus + 1} CPUs; node {NODE_NAME} has {cpus} in all")):
        generation = apply_spec(stack, namespace, "job", reason, gpus=1, command=SLEEP,
                                resources=resources)

        def refused(reason: str = reason, generation: int = generation) -> bool:
            found = status(stack, namespace, "job")
            degraded = condition(stack, namespace, "job", "Degraded")
            return found.get("observedGeneration") == generation and \
                degraded.get("reason") == reason and degraded.get("status") == "True"

        wait_for(refused, 60, what=f"refused with {reason}")
        assert says in condition(stack, namespace, "job", "Degraded")["message"]
        assert only_container(stack, namespace, "job").id == running.id
        assert _limits(_host_config(running)) == before
        assert condition(stack, namespace, "job", "Ready")["status"] == "True"
        assert status(stack, namespace, "job")["revision"] == 1

