"""#23 (review finding): a migration's target holds the GPUs it found free for the
arriving instance from Reserving until the instance runs there, so a second migration
or a new instance cannot take them meanwhile (agent/migration_arrivals.py)."""
from __future__ import annotations

from typing import Any

from gpudock.agent.migration_arrivals import Arrival, Arrivals
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.core.fleet_view import node_views
from gpudock.core.gpu_node import gpu_node_status
from gpudock.core.gpus import GpuDevice
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.plan import plan_replica_set

KEY = ResourceKey("team-a", "arriving")
OTHER = ResourceKey("team-b", "new")
GPUS = tuple(f"GPU-{i}" for i in range(4))


def _obs(key: ResourceKey, gpus: int, reserved: dict[str, ResourceKey]) -> Observation:
    spec = GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img", "gpuCount": gpus,
                                    "imagePullPolicy": "IfNotPresent"})
    return Observation(key=key, uid=f"uid-{key.name}", generation=1, spec=spec,
                       previous_status={}, containers=(), inventory=GPUS,
                       port_range=(40000, 40010), allowed_host_paths=(),
                       images_present=frozenset({"img"}), reserved_gpus=reserved)


def _created_gpus(obs: Observation) -> tuple[str, ...]:
    plan = plan_replica_set(obs)
    created = [a for a in plan.actions if isinstance(a, act.ALLOCATING)]
    assert created, plan.status
    gpus: tuple[str, ...] = created[0].config.gpus
    return gpus


def test_23_held_gpus_go_to_the_arriving_instance_and_to_no_other() -> None:
    held = {"GPU-2": KEY, "GPU-3": KEY}
    # Another instance gets only what is not held, and waits when that is too little.
    assert set(_created_gpus(_obs(OTHER, 2, held))) == {"GPU-0", "GPU-1"}
    plan = plan_replica_set(_obs(OTHER, 3, held))
    assert plan.actions == ()
    assert plan.status.conditions[0].reason == "InsufficientGPUs"
    assert "2 of 4" in plan.status.conditions[0].message
    # The arriving instance gets the GPUs held for it, not the lowest free ones.
    assert _created_gpus(_obs(KEY, 2, held)) == ("GPU-2", "GPU-3")


def test_23_a_hold_ends_when_the_instance_runs_here_or_its_migration_ended() -> None:
    arrivals = Arrivals()
    arrivals.hold(Arrival(KEY, "uid-a", ("team-a", "move-a"), ("GPU-2",)))
    arrivals.hold(Arrival(OTHER, "uid-b", ("team-b", "move-b"), ("GPU-3",)))
    assert arrivals.gpus_for_others(KEY) == {"GPU-3"}
    assert arrivals.gpus_for_others(ResourceKey("x", "y"), "uid-b") == {"GPU-2"}
    ended: dict[tuple[str, str], bool] = {("team-a", "move-a"): False,
                                          ("team-b", "move-b"): False}
    assert arrivals.settle([], ended.__getitem__) == []
    running = ObservedContainer("c", "team-a_arriving-1", "running", owner=KEY, uid="uid-a")
    assert [a.uid for a in arrivals.settle([running], ended.__getitem__)] == ["uid-a"]
    ended[("team-b", "move-b")] = True  # failed or cancelled: it will not come
    assert [a.uid for a in arrivals.settle([], ended.__getitem__)] == ["uid-b"]
    assert arrivals.gpus() == {}


def test_23_the_gpu_node_shows_held_gpus_taken_and_the_scheduler_counts_them() -> None:
    devices = [GpuDevice(i, f"GPU-{i}", "A100", 80 * 2**30) for i in range(4)]
    status = gpu_node_status(devices, [], (40000, 40009), "0.1.0", "now",
                             arriving={"GPU-1": KEY})
    assert (status["gpusAllocated"], status["gpusFree"]) == (1, 3)
    assert status["gpus"][1]["holder"] == {"namespace": "team-a", "name": "arriving",
                                           "arriving": True}
    hidden = gpu_node_status(devices, [], (40000, 40009), "0.1.0", "now",
                             hide_holders=True, arriving={"GPU-1": KEY})
    assert hidden["gpus"][1]["holder"] == {"held": True, "arriving": True}
    now = "2026-12-05T00:00:00Z"
    for shown in (status, hidden):
        node: dict[str, Any] = {"metadata": {"name": "n1"},
                                "status": {**shown, "heartbeatTime": now}}
        (view,) = node_views([node], [], [], now, 10)
        assert view.gpus_free == 3


def test_23_a_late_end_of_an_earlier_migration_keeps_a_newer_ones_hold() -> None:
    arrivals = Arrivals()
    arrivals.hold(Arrival(KEY, "uid-a", ("team-a", "second"), ("GPU-2",)))
    arrivals.drop("uid-a", ("team-a", "first"))  # the first one's session failed late
    assert arrivals.gpus() == {"GPU-2": KEY}
    arrivals.drop("uid-a", ("team-a", "second"))
    assert arrivals.gpus() == {}
