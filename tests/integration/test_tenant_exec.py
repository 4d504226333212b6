"""#28 against the real stack: what one tenant's ExecRequests may take from the node.

Item 1: ExecRequests run on a bounded pool of their own, never on the threads the
reconciles and the heartbeat use, and at most --max-running-execs-per-namespace of one
namespace run at once; the rest wait Pending with a reason and start when a slot frees.
Item 14: an ExecRequest's deadline kills everything the command started, double-forked
and setsid'd processes too, and an agent that restarts while one runs kills what it
started."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import only_container, sh, wait_settled
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, gpu_replica_set


def exec_request(name: str, target: str, command: list[str],
                 timeout: int = 120) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "ExecRequest",
            "metadata": {"name": name},
            "spec": {"replicaSetName": target, "command": command, "timeoutSeconds": timeout}}


def until_released(name: str) -> list[str]:
    """A command that runs until the test touches /tmp/release-<name> in the container."""
    return ["sh", "-c", f"until [ -e /tmp/release-{name} ]; do sleep 0.2; done"]


def request_status(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    found = stack.kubectl("get", "execrequest", name, "-n", namespace, "-o", "json",
                          check=False)
    if found.returncode != 0:
        return {}
    return dict(json.loads(found.stdout).get("status") or {})


def heartbeat(stack: LocalStack, node: str = "gpu-node-1") -> str:
    found = stack.kubectl("get", "gpunode", node, "-o", "jsonpath={.status.heartbeatTime}",
                          check=False)
    return found.stdout if found.returncode == 0 else ""


def processes(stack: LocalStack, namespace: str, name: str) -> str:
    """What `ps` in the container lists."""
    return sh(only_container(stack, namespace, name), "ps")


def test_item1_exec_requests_are_capped_per_namespace_on_their_own_pool(
    stack: LocalStack, namespace: str, other_namespace: str, start_agent: AgentFactory,
) -> None:
    # The settings through their variables: an agent without them still starts.
    start_agent(extra_args=["--namespace", other_namespace, "--heartbeat-seconds", "2"],
                env={"GPUDOCK_MAX_RUNNING_EXECS_PER_NAMESPACE": "2",
                     "GPUDOCK_MAX_RUNNING_REQUESTS": "3"})
    apply(stack, namespace, gpu_replica_set("a", gpus=0))
    apply(stack, other_namespace, gpu_replica_set("b", gpus=0),
          gpu_replica_set("b-exec", gpus=0))
    wait_settled(stack, namespace, "a")
    for name in ("b", "b-exec"):
        wait_settled(stack, other_namespace, name)

    names = ["a1", "a2", "a3"]
    apply(stack, namespace, *[exec_request(n, "a", until_released(n)) for n in names])
    wait_for(lambda: all(request_status(stack, namespace, n).get("phase") in
                         ("Running", "Pending") for n in names), 30, 0.2,
             what="every request of namespace A Running or Pending")
    time.sleep(1)  # a third one that was going to start would have by now
    statuses = {n: request_status(stack, namespace, n) for n in names}
    running = [n for n, s in statuses.items() if s.get("phase") == "Running"]
    pending = [n for n, s in statuses.items() if s.get("phase") == "Pending"]
    assert len(running) == 2, statuses
    assert len(pending) == 1, statuses
    waiting = statuses[pending[0]]
    assert waiting["reason"] == "ExecLimitReached", waiting
    assert waiting["conditions"][0]["reason"] == "ExecLimitReached"
    assert "--max-running-execs-per-namespace" in waiting["conditions"][0]["message"]

    # Namespace A's cap does not hold another namespace back.
    apply(stack, other_namespace, exec_request("bx", "b-exec", until_released("bx")))
    wait_for(lambda: request_status(stack, other_namespace, "bx").get("phase") == "Running",
             20, 0.2, what="bx Running beside A's two")

    # The request pool is full (3 of 3): a reconcile of namespace B and the node's
    # heartbeat go on regardless.
    beat = heartbeat(stack)
    began = time.monotonic()
    apply(stack, other_namespace, gpu_replica_set("b", gpus=0, env=[{"name": "V", "value": "2"}]))
    wait_settled(stack, other_namespace, "b", revision=2, timeout=40)
    updated_after = time.monotonic() - began
    wait_for(lambda: heartbeat(stack) not in ("", beat), 15, 0.5, what="a later heartbeat")
    beat_after = time.monotonic() - began
    print(f"B's update settled after {updated_after:.1f}s, heartbeat seen after "
          f"{beat_after:.1f}s, with the request pool full")
    assert updated_after < 40

    # A slot frees: the waiting request of A starts.
    sh(only_container(stack, namespace, "a"), f"touch /tmp/release-{running[0]}")
    wait_for(lambda: request_status(stack, namespace, running[0]).get("phase") == "Completed",
             20, 0.2, what=f"{running[0]} Completed")
    freed = time.monotonic()
    wait_for(lambda: request_status(stack, namespace, pending[0]).get("phase") == "Running",
             20, 0.2, what=f"{pending[0]} started once a slot freed")
    print(f"{pending[0]} started {time.monotonic() - freed:.1f}s after a slot freed")

    sh(only_container(stack, namespace, "a"), "touch " + " ".join(
        f"/tmp/release-{n}" for n in names))
    sh(only_container(stack, other_namespace, "b-exec"), "touch /tmp/release-bx")
    every = [(namespace, n) for n in names] + [(other_namespace, "bx")]

    def all_completed() -> bool:
        return all(request_status(stack, ns, n).get("phase") == "Completed"
                   for ns, n in every)

    wait_for(all_completed, 20, 0.2, what="every request Completed")
    assert [request_status(stack, ns, n)["exitCode"] for ns, n in every] == [0, 0, 0, 0]


# Processes that leave the command's tree: a subshell that starts one in the background
# and exits (the classic double fork; it is reparented to the container's init), and
# one in a session of its own (setsid).
ESCAPING = "(setsid sleep {0}1 &); (sleep {0}2 &); touch /tmp/forked-{0}; sleep {0}3"


def test_item14_the_deadline_kills_double_forked_and_setsid_processes(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply(stack, namespace, gpu_replica_set("box", gpus=0))
    wait_settled(stack, namespace, "box")
    apply(stack, namespace, exec_request("forks", "box", ["sh", "-c", ESCAPING.format(31)],
                                         timeout=3))
    wait_for(lambda: request_status(stack, namespace, "forks").get("phase") == "Failed",
             30, 0.2, what="the deadline")
    assert request_status(stack, namespace, "forks")["reason"] == "DeadlineExceeded"
    sh(only_container(stack, namespace, "box"), "test -e /tmp/forked-31")  # they forked
    left = processes(stack, namespace, "box")
    assert "sleep 31" not in left, left


def test_item14_a_restarted_agent_kills_what_a_running_exec_started(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent()
    apply(stack, namespace, gpu_replica_set("box", gpus=0))
    wait_settled(stack, namespace, "box")
    apply(stack, namespace, exec_request("long", "box", ["sh", "-c", ESCAPING.format(32)],
                                         timeout=600))
    wait_for(lambda: request_status(stack, namespace, "long").get("phase") == "Running" and
             "sleep 323" in processes(stack, namespace, "box"), 20, 0.2,
             what="the command running")
    agent.kill()  # as a crash would; the command's processes outlive it
    assert "sleep 32" in processes(stack, namespace, "box")
    start_agent()
    wait_for(lambda: request_status(stack, namespace, "long").get("phase") == "Failed",
             30, 0.2, what="the restarted agent's verdict")
    assert request_status(stack, namespace, "long")["reason"] == "AgentRestarted"
    left = processes(stack, namespace, "box")
    assert "sleep 32" not in left, left
