"""#22 placement on a real fleet: two nodes, each an agent with its own dockerd, the
scheduler leader-elected among the agents (docs/fleet.md)."""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudock.cli import kubectl_plugin
from tests.integration.fleet import Fleet, running_fleet
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.processes import ManagedProcess
from tests.stack.resources import event_reasons, gpu_replica_set


@pytest.fixture
def fleet(stack: LocalStack, namespace: str) -> Iterator[Fleet]:
    with running_fleet(stack, namespace) as running:
        yield running


def _apply(fleet: Fleet, *bodies: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(bodies)}
    fleet.stack.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(items))


def _unpinned(name: str, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    body = gpu_replica_set(name, gpus=gpus)
    body["spec"].pop("nodeName", None)
    body["spec"].update(spec)
    return body


def _status(fleet: Fleet, name: str) -> dict[str, Any]:
    status = fleet.stack.kubectl_json("get", "grs", name, "-n", fleet.namespace).get(
        "status") or {}
    assert isinstance(status, dict)
    return status


def _scheduled(fleet: Fleet, name: str) -> dict[str, Any]:
    return next((c for c in _status(fleet, name).get("conditions") or ()
                 if c.get("type") == "Scheduled"), {})


def _running(fleet: Fleet, name: str) -> bool:
    return _status(fleet, name).get("phase") == "Running"


def test_22_1_binpack_fills_a_node_and_spread_takes_the_emptiest(fleet: Fleet) -> None:
    a, b = fleet.nodes
    _apply(fleet, _unpinned("first", 2))
    wait_for(lambda: _running(fleet, "first"), 60, what="first Running")
    assert fleet.node_of("first") == a  # both empty: the tie goes by name
    _apply(fleet, _unpinned("packed", 2))
    wait_for(lambda: _running(fleet, "packed"), 60, what="packed Running")
    assert fleet.node_of("packed") == a  # Binpack: the fuller node that fits
    _apply(fleet, _unpinned("apart", 2, schedulingPolicy="Spread"))
    wait_for(lambda: _running(fleet, "apart"), 60, what="apart Running")
    assert fleet.node_of("apart") == b  # Spread: the emptier node
    # Each container is on its node's own dockerd, and the NODE column says so.
    assert sorted(c.labels["gpudock.dev/name"] for c in fleet.containers(a)) == \
        ["first", "packed"]
    assert [c.labels["gpudock.dev/name"] for c in fleet.containers(b)] == ["apart"]
    table = fleet.stack.kubectl("get", "grs", "-n", fleet.namespace).stdout
    assert any(line.split()[:2] == ["apart", b] for line in table.splitlines()), table
    assert _scheduled(fleet, "apart")["status"] == "True"
    reasons = event_reasons(fleet.stack, fleet.namespace, "apart")
    assert "Scheduled" in reasons
    assert "Logging" not in reasons  # the scheduler's watching posts no event of kopf's


def test_22_4_unschedulable_says_why_in_kube_schedulers_words(fleet: Fleet) -> None:
    a, b = fleet.nodes
    fleet.stack.kubectl("label", "gpunode", b, "pool=training")
    _apply(fleet, _unpinned("huge", 9),
           _unpinned("picky", 1, nodeSelector={"pool": "inference"}),
           _unpinned("both", 9, nodeSelector={"pool": "training"}),
           _unpinned("model", 1, gpuSelector={"models": ["H100"]}))
    expected = {
        "huge": "0/2 nodes are available: 2 Insufficient GPUs.",
        "picky": "0/2 nodes are available: 2 node(s) didn't match node selector.",
        "both": "0/2 nodes are available: 1 Insufficient GPUs, 1 node(s) didn't match "
                "node selector.",
        "model": "0/2 nodes are available: 2 node(s) didn't match GPU selector.",
    }
    for name, message in expected.items():
        def refused(name: str = name) -> bool:
            return _scheduled(fleet, name).get("reason") == "Unschedulable"

        wait_for(refused, 30, what=f"{name} Unschedulable")
        condition = _scheduled(fleet, name)
        assert (condition["status"], condition["message"]) == ("False", message)
        status = _status(fleet, name)
        assert (status["phase"], status["reason"]) == ("Pending", "Unschedulable")
        assert "nodeName" not in status
    # One FailedScheduling event per distinct message, however often it was retried:
    # the heartbeats of both nodes (every 2 s) made the scheduler look again.
    for name in expected:
        assert event_reasons(fleet.stack, fleet.namespace, name).count("FailedScheduling") == 1
    # A node selector on the agent's own labels places it.
    labels: dict[str, str] = fleet.stack.kubectl_json(
        "get", "gpunode", a)["metadata"]["labels"]  # type: ignore[index]
    assert labels["gpudock.dev/gpu-count"] == "8"
    assert labels["gpudock.dev/gpu-product"] == "Simulated-GPU"
    assert labels["gpudock.dev/gpu-memory-mib"] == str(80 * 1024)
    _apply(fleet, _unpinned("labelled", 1, nodeSelector={"pool": "training",
                                                          "gpudock.dev/gpu-count": "8"}))
    wait_for(lambda: _running(fleet, "labelled"), 60, what="labelled Running")
    assert fleet.node_of("labelled") == b


def test_22_3_a_burst_never_overfills_and_freed_gpus_start_the_waiting(fleet: Fleet) -> None:
    names = [f"burst-{i:02d}" for i in range(20)]
    _apply(fleet, *(_unpinned(name, 1) for name in names))

    def counted() -> tuple[list[str], list[str]]:
        items = fleet.stack.kubectl_json("get", "grs", "-n", fleet.namespace)["items"]
        assert isinstance(items, list)
        running = [i["metadata"]["name"] for i in items
                   if (i.get("status") or {}).get("phase") == "Running"]
        waiting = [i["metadata"]["name"] for i in items
                   if (i.get("status") or {}).get("reason") == "Unschedulable"]
        return running, waiting

    wait_for(lambda: [len(x) for x in counted()] == [16, 4], 120,
             what="16 Running and 4 Unschedulable")
    held = [(node, gpu) for node in fleet.nodes for c in fleet.containers(node)
            for gpu in c.labels["gpudock.dev/gpus"].split(",") if gpu]
    assert len(held) == 16, held
    assert len(set(held)) == 16, held
    running, waiting = counted()
    assert all(_scheduled(fleet, n)["message"] ==
               "0/2 nodes are available: 2 Insufficient GPUs." for n in waiting)
    fleet.stack.kubectl("delete", "grs", *running[:2], "-n", fleet.namespace,
                        "--timeout=60s")
    started = time.monotonic()
    wait_for(lambda: [len(x) for x in counted()] == [16, 2], 30,
             what="two of the waiting ones Running")
    print(f"freed GPUs taken by waiting instances in {time.monotonic() - started:.1f}s")


def test_22_2_deleting_an_unbound_resource_needs_no_agent(fleet: Fleet) -> None:
    _apply(fleet, _unpinned("nowhere", 9))
    wait_for(lambda: _scheduled(fleet, "nowhere").get("reason") == "Unschedulable", 30,
             what="Unschedulable")
    body = fleet.stack.kubectl_json("get", "grs", "nowhere", "-n", fleet.namespace)
    assert not body["metadata"].get("finalizers")  # type: ignore[attr-defined]
    started = time.monotonic()
    fleet.stack.kubectl("delete", "grs", "nowhere", "-n", fleet.namespace, "--timeout=5s")
    assert time.monotonic() - started < 5


def _leader(fleet: Fleet) -> str:
    lease = fleet.stack.kubectl_json("get", "lease", "gpudock-scheduler", "-n",
                                     fleet.namespace)
    holder = str(lease["spec"]["holderIdentity"])  # type: ignore[index]
    return holder.rsplit("_", 1)[0]


def test_22_2_another_agent_takes_over_scheduling_when_the_leader_is_killed(
        fleet: Fleet) -> None:
    wait_for(lambda: fleet.stack.kubectl("get", "lease", "gpudock-scheduler", "-n",
                                         fleet.namespace, check=False).returncode == 0,
             30, what="a leader")
    leader = _leader(fleet)
    survivor = next(n for n in fleet.nodes if n != leader)
    fleet.agents[leader].kill()
    killed_at = time.monotonic()
    fleet.agents[leader].stop()  # (dead already: only its log is closed)
    _apply(fleet, _unpinned("after", 1))
    wait_for(lambda: fleet.node_of("after") == survivor, 30,
             what="bound by the surviving agent's scheduler")
    print(f"bound {time.monotonic() - killed_at:.1f}s after the leader was killed")
    assert _leader(fleet) == survivor
    wait_for(lambda: _running(fleet, "after"), 60, what="after Running")
    fleet.start_agent(leader)  # (so the fixture's delete finds every agent alive)


def test_22_6_a_volume_binds_with_its_first_consumer_and_pins_the_others(
        fleet: Fleet) -> None:
    volume = {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
              "metadata": {"name": "data"}, "spec": {"size": "64Mi"}}
    _apply(fleet, volume)

    def volume_status() -> dict[str, Any]:
        status = fleet.stack.kubectl_json("get", "svol", "data", "-n",
                                          fleet.namespace).get("status") or {}
        assert isinstance(status, dict)
        return status

    wait_for(lambda: volume_status().get("reason") == "WaitingForFirstConsumer", 30,
             what="the volume waiting for its consumer")
    mount = [{"volume": "data", "mountPath": "/data"}]
    _apply(fleet, _unpinned("writer", 2, mounts=mount))
    wait_for(lambda: _running(fleet, "writer"), 90, what="writer Running")
    node = fleet.node_of("writer")
    assert volume_status()["nodeName"] == node
    # Spread would take the other node; the volume pins the second consumer here.
    _apply(fleet, _unpinned("reader", 1, mounts=mount, schedulingPolicy="Spread"))
    wait_for(lambda: _running(fleet, "reader"), 90, what="reader Running")
    assert fleet.node_of("reader") == node


def test_22_7_a_cordoned_node_gets_nothing_new_and_keeps_what_runs(fleet: Fleet) -> None:
    a, b = fleet.nodes
    _apply(fleet, _unpinned("before", 1))
    wait_for(lambda: _running(fleet, "before"), 60, what="before Running")
    assert fleet.node_of("before") == a
    container = fleet.containers(a)[0].id
    assert _plugin(fleet, "cordon", a) == f"gpunode {a} cordoned\n"
    node: Any = fleet.stack.kubectl_json("get", "gpunode", a)
    assert node["spec"]["unschedulable"] is True
    _apply(fleet, _unpinned("after", 1))
    wait_for(lambda: _running(fleet, "after"), 60, what="after Running")
    assert fleet.node_of("after") == b
    assert [c.id for c in fleet.containers(a)] == [container]
    assert _running(fleet, "before")
    # Uncordoned, Binpack takes node a again (it holds one GPU: the fuller node).
    assert _plugin(fleet, "uncordon", a) == f"gpunode {a} uncordoned\n"
    _apply(fleet, _unpinned("again", 1))
    wait_for(lambda: _running(fleet, "again"), 60, what="again Running")
    assert fleet.node_of("again") == a
    with pytest.raises(AssertionError, match="not found"):
        _plugin(fleet, "cordon", "no-such-node")


def _plugin(fleet: Fleet, *words: str) -> str:
    """What `kubectl gpudock WORDS` prints; AssertionError with its error when it fails."""
    out, err = io.StringIO(), io.StringIO()
    code = kubectl_plugin.main(["--kubeconfig", str(fleet.stack.kubeconfig), *words],
                               out=out, err=err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_22_5_a_node_that_cannot_run_it_hands_the_binding_back(fleet: Fleet) -> None:
    """Node a has one instance address (a /30): the scheduler does not count addresses,
    binds a second instance there by Binpack, and node a's agent, holding nothing of
    it, hands it back; the scheduler then avoids node a and binds it to node b."""
    a, b = fleet.nodes
    fleet.agents[a].stop()
    fleet.start_agent(a, extra_args=["--instance-network", f"gd-{fleet.namespace}",
                                     "--instance-subnet", fleet.stack.free_subnet(30)])
    _apply(fleet, _unpinned("one", 1))
    wait_for(lambda: _running(fleet, "one"), 60, what="one Running")
    assert fleet.node_of("one") == a
    _apply(fleet, _unpinned("two", 1))
    wait_for(lambda: _running(fleet, "two"), 60, what="two Running")
    assert fleet.node_of("two") == b
    reasons = event_reasons(fleet.stack, fleet.namespace, "two")
    assert "NodeRejected" in reasons, reasons
    assert _status(fleet, "two")["rejection"]["nodeName"] == a
    assert [c.labels["gpudock.dev/name"] for c in fleet.containers(a)] == ["one"]
    body = fleet.stack.kubectl_json("get", "grs", "two", "-n", fleet.namespace)
    assert body["metadata"]["finalizers"] == [  # type: ignore[index]
        f"node.gpudock.dev/{b}"]


def test_22_the_unpinned_example_runs_with_its_volume_on_one_node(fleet: Fleet) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "08-unpinned-instance.yaml"
    fleet.stack.kubectl("apply", "-n", fleet.namespace, "-f", str(example))
    wait_for(lambda: _running(fleet, "anywhere"), 90, what="the example Running")
    volume = fleet.stack.kubectl_json("get", "svol", "scratch", "-n", fleet.namespace)
    assert volume["status"]["nodeName"] == fleet.node_of("anywhere")  # type: ignore[index]


def test_22_2_the_scheduler_runs_alone_for_agents_that_schedule_nothing(
        fleet: Fleet) -> None:
    """`gpudock scheduler` as its own process; the agents run with --scheduler off."""
    for node in fleet.nodes:
        fleet.agents[node].stop()
        fleet.start_agent(node, extra_args=["--scheduler", "off"])
    stack = fleet.stack
    scheduler = ManagedProcess("gpudock-scheduler", [
        sys.executable, "-m", "gpudock", "scheduler", "--kubeconfig",
        str(stack.agent_kubeconfig), "--namespace", fleet.namespace,
        "--release-namespace", fleet.namespace, "--heartbeat-seconds", "2"],
        stack.base_dir / "logs" / f"scheduler-{fleet.namespace}.log")
    try:
        _apply(fleet, _unpinned("placed", 1))
        wait_for(lambda: _running(fleet, "placed"), 60, what="placed Running")
        assert fleet.node_of("placed") == fleet.nodes[0]
        assert _leader(fleet) == socket.gethostname()  # the scheduler's, not an agent's
    finally:
        scheduler.stop()
