"""Drift, agent crashes and deletion, against the real stack."""

from __future__ import annotations

from tests.integration.conftest import AgentFactory
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import (
    all_statuses,
    apply,
    condition,
    containers,
    gpu_replica_set,
    status,
)


def _all_running(stack: LocalStack, namespace: str, count: int) -> bool:
    statuses = all_statuses(stack, namespace)
    return len(statuses) == count and all(s.get("phase") == "Running"
                                          for s in statuses.values())


def test_container_removed_or_stopped_behind_the_agents_back_is_repaired(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    apply(stack, namespace, gpu_replica_set("drift", gpus=2,
                                             ports=[{"containerPort": 22}]))
    wait_for(lambda: _all_running(stack, namespace, 1), 60, what="Running")
    before = status(stack, namespace, "drift")
    (container,) = containers(stack, namespace)
    container.remove(force=True)

    def recreated() -> bool:
        now = containers(stack, namespace)
        return len(now) == 1 and now[0].id != container.id and now[0].status == "running"

    wait_for(recreated, 60, what="the container to be recreated")
    wait_for(lambda: condition(stack, namespace, "drift", "Degraded").get("reason")
             == "DriftRepaired", 30, what="status to say what happened")
    after = status(stack, namespace, "drift")
    assert "container was removed" in condition(stack, namespace, "drift",
                                                "Degraded")["message"]
    assert after["containerID"] == containers(stack, namespace)[0].id
    assert after["gpus"] == before["gpus"]  # the same GPUs, still free
    assert after["ports"] == before["ports"]  # and the same host ports
    assert condition(stack, namespace, "drift", "Ready")["status"] == "True"

    (container,) = containers(stack, namespace)
    container.stop(timeout=1)
    wait_for(lambda: containers(stack, namespace)[0].status == "running", 60,
             what="the stopped container to be started again")
    assert containers(stack, namespace)[0].id == container.id  # started, not replaced
    events = stack.kubectl("get", "events", "-n", namespace).stdout
    assert "DriftDetected" in events


def test_agent_killed_and_restarted_adopts_what_runs(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent(gpus=8)
    # The three first: resources applied together are served in no set order (the
    # 4-GPU one could otherwise win and a 2-GPU one wait).
    apply(stack, namespace, *(gpu_replica_set(f"a{i}", gpus=2) for i in range(3)))
    wait_for(lambda: [s.get("phase") for s in all_statuses(stack, namespace).values()]
             .count("Running") == 3, 60, what="3 Running")
    apply(stack, namespace, gpu_replica_set("waiting", gpus=4))
    wait_for(lambda: condition(stack, namespace, "waiting", "Ready").get("reason")
             == "InsufficientGPUs", 30, what="the 4-GPU resource to wait")
    before = {c.name: c.id for c in containers(stack, namespace)}
    statuses_before = all_statuses(stack, namespace)
    agent.kill()  # SIGKILL: no cleanup at all
    start_agent(gpus=8)  # returns once the new agent is live
    # The new agent adopts the running containers: none is replaced, none is added.
    stack.kubectl("annotate", "grs", "--all", "-n", namespace, "poke=1", "--overwrite")
    wait_for(lambda: condition(stack, namespace, "waiting", "Ready").get("reason")
             == "InsufficientGPUs", 30, what="still waiting")
    after = {c.name: c.id for c in containers(stack, namespace)}
    assert after == before
    statuses_after = all_statuses(stack, namespace)
    for name in ("a0", "a1", "a2"):
        assert statuses_after[name]["containerID"] == statuses_before[name]["containerID"]
        assert statuses_after[name]["gpus"] == statuses_before[name]["gpus"]
    held = [g for n in ("a0", "a1", "a2") for g in statuses_after[n]["gpus"]]
    assert len(held) == len(set(held)) == 6
    assert statuses_after["waiting"]["phase"] == "Pending"
    # It allocates from what Docker runs: freeing a0's 2 GPUs lets the 4-GPU one start
    # on exactly the 4 GPUs nobody holds.
    stack.kubectl("delete", "grs", "a0", "-n", namespace, "--timeout=60s")
    wait_for(lambda: status(stack, namespace, "waiting").get("phase") == "Running", 60,
             what="the waiting resource to start")
    final = all_statuses(stack, namespace)
    held = [g for n in ("a1", "a2", "waiting") for g in final[n]["gpus"]]
    assert len(held) == len(set(held)) == 8


def test_delete_removes_containers_and_frees_gpus_and_ports(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=4)
    apply(stack, namespace, gpu_replica_set("one", gpus=2, ports=[{"containerPort": 22,
                                                                   "hostPort": 46001}]),
           gpu_replica_set("two", gpus=2))
    wait_for(lambda: _all_running(stack, namespace, 2), 60, what="Running")
    # One container is already gone when the resource is deleted: still no leak.
    containers(stack, namespace)[0].remove(force=True)
    stack.kubectl("delete", "grs", "one", "two", "-n", namespace, "--timeout=60s")
    assert containers(stack, namespace) == []
    assert stack.kubectl("get", "grs", "-n", namespace, "-o", "name").stdout.strip() == ""
    # Every GPU and the explicit host port are free again.
    apply(stack, namespace, gpu_replica_set("all", gpus=4, ports=[{"containerPort": 22,
                                                                    "hostPort": 46001}]))
    wait_for(lambda: _all_running(stack, namespace, 1), 60, what="the 4-GPU resource")
    assert len(status(stack, namespace, "all")["gpus"]) == 4
