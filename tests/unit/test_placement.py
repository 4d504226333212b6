"""The scheduler's pure parts: filters and messages, scores, the fleet view's counting,
leader election and one pass's compare-and-set bindings, on in-memory fakes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from gpudock.adapters.kube_api import ConflictError
from gpudock.adapters.kube_leases import LeaseRecord
from gpudock.api.placement import Placement, SchedulingPolicy, Taint, Toleration, label_value
from gpudock.core.fleet_view import node_views
from gpudock.core.placement import Demand, GpuView, NodeView, Placed, Unplaceable, place
from gpudock.scheduler.binder import PassSettings, SchedulingPass
from gpudock.scheduler.fleet_cache import FleetCache, FleetSnapshot
from gpudock.scheduler.leader import LEASE_SECONDS, LeaderElector

NOW = "2026-12-05T12:00:00Z"


def _node(name: str, free: int = 8, **kw: Any) -> NodeView:
    return NodeView(name, gpus=tuple(GpuView("NVIDIA H100 80GB HBM3", 81559)
                                     for _ in range(8)), gpus_taken=8 - free, **kw)


def test_binpack_takes_the_fullest_node_that_fits_and_spread_the_emptiest() -> None:
    nodes = [_node("a", free=6), _node("b", free=2), _node("c", free=8)]
    assert place(Demand(gpu_count=2), nodes) == Placed("b")
    assert place(Demand(gpu_count=3), nodes) == Placed("a")
    spread = Demand(gpu_count=2, placement=Placement(policy=SchedulingPolicy.SPREAD))
    assert place(spread, nodes) == Placed("c")
    assert place(Demand(gpu_count=1), [_node("y"), _node("x")]) == Placed("x")  # by name


def test_the_message_counts_each_nodes_first_reason_most_first() -> None:
    nodes = [_node("a", free=1), _node("b", free=0, labels={"pool": "x"}),
             _node("c", labels={"pool": "y"})]
    demand = Demand(gpu_count=2, placement=Placement(node_selector={"pool": "x"}))
    assert place(demand, nodes) == Unplaceable(
        "0/3 nodes are available: 2 node(s) didn't match node selector, "
        "1 Insufficient GPUs.")
    assert place(Demand(), []) == Unplaceable(
        "0/0 nodes are available: no GpuNode exists (no gpudock agent runs).")


@pytest.mark.parametrize(("node", "demand", "reason"), [
    (_node("n", ready=False), Demand(), "node(s) were not ready"),
    (_node("n", unschedulable=True), Demand(), "node(s) were unschedulable"),
    (_node("n", taints=(Taint("gpu", "bad"),)), Demand(),
     "node(s) had untolerated taint {gpu: bad}"),
    (_node("n"), Demand(avoid=frozenset({"n"})), "node(s) handed it back recently"),
    (_node("n"), Demand(volume_node="m"), "node(s) had volume node affinity conflict"),
    (_node("n"), Demand(gpu_count=1, placement=Placement(gpu_models=("A100",))),
     "node(s) didn't match GPU selector"),
    (_node("n"), Demand(gpu_count=1, placement=Placement(gpu_min_memory_mib=90000)),
     "node(s) didn't match GPU selector"),
    (_node("n", cpu_millis=4000, cpu_taken=3000), Demand(placement=Placement(
        cpu_millis=2000)), "Insufficient cpu"),
    (_node("n", memory_bytes=2**30), Demand(placement=Placement(memory_bytes=2**31)),
     "Insufficient memory"),
    (_node("n", ports_taken={(8888, "TCP")}), Demand(host_ports=frozenset({(8888, "TCP")})),
     "node(s) didn't have free ports for the requested host ports"),
    (_node("n", volume_free_bytes=2**20), Demand(volume_bytes=2**21),
     "node(s) did not have enough free storage"),
])
def test_each_filter_says_why(node: NodeView, demand: Demand, reason: str) -> None:
    assert place(demand, [node]) == Unplaceable(f"0/1 nodes are available: 1 {reason}.")


def test_tolerations_match_as_kubernetes_does() -> None:
    taint = Taint("maintenance", "yes")
    assert Toleration("maintenance", "Exists").tolerates(taint)
    assert Toleration("", "Exists").tolerates(taint)
    assert Toleration("maintenance", "Equal", "yes").tolerates(taint)
    assert not Toleration("maintenance", "Equal", "no").tolerates(taint)
    assert not Toleration("maintenance", "Exists", effect="NoExecute").tolerates(taint)
    demand = Demand(placement=Placement(tolerations=(Toleration("maintenance", "Exists"),)))
    assert place(demand, [_node("n", taints=(taint,))]) == Placed("n")


def test_label_values_of_gpu_products() -> None:
    assert label_value("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert label_value("Simulated GPU") == "Simulated-GPU"


def _gpu_node(name: str, held: list[dict[str, Any] | None], beat: str = NOW) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {}}, "spec": {}, "status": {
        "heartbeatTime": beat,
        "gpus": [{"model": "Simulated GPU", "memoryMiB": 81920, "health": "Healthy",
                  "holder": h} for h in held]}}


def _grs(name: str, gpus: int, node: str = "", pinned: str = "", state: str = "Running",
         version: str = "1", created: str = NOW) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuReplicaSet",
            "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}",
                         "resourceVersion": version, "creationTimestamp": created},
            "spec": {"image": "x", "gpuCount": gpus, "state": state,
                     **({"nodeName": pinned} if pinned else {})},
            "status": {"nodeName": node} if node else {}}


def test_the_fleet_view_counts_what_is_bound_before_the_heartbeat_shows_it() -> None:
    holder = {"namespace": "ns", "name": "old", "revision": 1}
    nodes = [_gpu_node("a", [holder, holder, None, None]),
             _gpu_node("b", [{"namespace": "other", "name": "x"}, None, None, None]),
             _gpu_node("c", [None] * 4, beat="2026-12-05T11:00:00Z")]
    bound = [_grs("old", 2, node="a"), _grs("new", 1, node="a"),  # not running yet
             _grs("pinned", 1, pinned="b"), _grs("stopped", 3, node="b", state="Stopped")]
    views = {v.name: v for v in node_views(nodes, bound, [], NOW, 30)}
    assert (views["a"].gpus_free, views["b"].gpus_free) == (1, 2)  # b: foreign holder
    assert not views["c"].ready


def test_a_held_unhealthy_gpu_is_taken_once_and_an_idle_one_is_not_free() -> None:
    """Review of 2026-12-05: a held Unhealthy GPU (policy Keep) was subtracted twice
    (out of the healthy GPUs and in what its holder takes), so a node with one idle
    healthy GPU said Insufficient GPUs."""
    holder = {"namespace": "ns", "name": "old", "revision": 1}
    node = _gpu_node("a", [holder, None, None])
    node["status"]["gpus"][0]["health"] = "Unhealthy"  # held by old, kept
    node["status"]["gpus"][2]["health"] = "Unhealthy"  # idle: never handed out
    view = node_views([node], [_grs("old", 1, node="a")], [], NOW, 30)[0]
    assert view.gpus_free == 1
    assert place(Demand(gpu_count=1), [view]) == Placed("a")
    assert isinstance(place(Demand(gpu_count=2), [view]), Unplaceable)


def test_an_explicit_host_port_outside_the_nodes_allowed_range_does_not_fit() -> None:
    """The node's agent would refuse it (HostPortNotAllowed); the scheduler skips the
    node instead (the CI failure of 2026-12-05: an instance bound where its hostPort
    is not allowed never ran)."""
    node = _gpu_node("a", [None])
    node["status"]["ports"] = {"range": "45000-49999", "explicitRange": "45000-46000"}
    view = node_views([node], [], [], NOW, 30)[0]
    assert view.explicit_ports == (45000, 46000)
    inside, outside = ({(port, "TCP")} for port in (45500, 47000))
    assert place(Demand(host_ports=frozenset(inside)), [view]) == Placed("a")
    assert place(Demand(host_ports=frozenset(outside)), [view]) == Unplaceable(
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested "
        "host ports.")


class FakeKube:
    def __init__(self, objects: list[dict[str, Any]], stale: frozenset[str] = frozenset(),
                 ) -> None:
        self.objects = {o["metadata"]["name"]: o for o in objects}
        self.stale = set(stale)
        self.events: list[tuple[str, str, str]] = []

    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        body = self.objects[name]
        if name in self.stale or body["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(f"{name} changed")
        body["status"] = {k: v for k, v in {**body.get("status", {}), **status}.items()
                          if v is not None}
        body["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return body

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                   component: str, now: str) -> None:
        self.events.append((involved["metadata"]["name"], reason, message))


def test_a_pass_binds_with_compare_and_set_and_never_overfills() -> None:
    replica_sets = [_grs(f"r{i}", 3, created=f"2026-12-05T11:00:0{i}Z") for i in range(4)]
    kube = FakeKube(replica_sets, stale=frozenset({"r1"}))  # another scheduler changed r1
    one = SchedulingPass(kube, PassSettings(), NOW)
    one.run(FleetSnapshot([_gpu_node("a", [None] * 8)], replica_sets, []))
    bound = {n: o["status"].get("nodeName") for n, o in kube.objects.items()}
    # r1's place was counted taken before its write lost: the pass is conservative,
    # the next one decides again.
    assert bound == {"r0": "a", "r1": None, "r2": None, "r3": None}
    assert kube.objects["r3"]["status"]["reason"] == "Unschedulable"
    assert ("r3", "FailedScheduling", "0/1 nodes are available: 1 Insufficient GPUs.") in \
        kube.events
    # The next pass says nothing new: no event, no write.
    events, versions = list(kube.events), {n: o["metadata"]["resourceVersion"]
                                           for n, o in kube.objects.items()}
    again = SchedulingPass(kube, PassSettings(), NOW)
    again.run(FleetSnapshot([_gpu_node("a", [None] * 8)], list(kube.objects.values()), []))
    assert kube.events == events
    assert {n: o["metadata"]["resourceVersion"] for n, o in kube.objects.items()} == versions
    kube.stale.clear()  # r1 read again: bound now, and r2 still waits (3 + 3 of 8 taken)
    SchedulingPass(kube, PassSettings(), NOW).run(FleetSnapshot(
        [_gpu_node("a", [None] * 8)], list(kube.objects.values()), []))
    assert kube.objects["r1"]["status"]["nodeName"] == "a"
    assert "nodeName" not in kube.objects["r2"]["status"]


class FakeLeases:
    def __init__(self) -> None:
        self.record: LeaseRecord | None = None

    def read(self, namespace: str, name: str) -> LeaseRecord | None:
        return self.record

    def write(self, namespace: str, name: str, holder: str, duration_seconds: int,
              now: datetime.datetime, before: LeaseRecord | None) -> None:
        if before != self.record:
            raise ConflictError("lease changed")
        version = str(int(before.resource_version) + 1) if before else "1"
        self.record = LeaseRecord(holder, duration_seconds, now, version, 0)


def test_one_candidate_leads_and_another_takes_over_a_lease_duration_after_silence() -> None:
    clock = [0.0]
    leases = FakeLeases()
    first = LeaderElector(leases, "ns", "a", lambda: clock[0])  # type: ignore[arg-type]
    second = LeaderElector(leases, "ns", "b", lambda: clock[0])  # type: ignore[arg-type]
    assert first.step()
    assert not second.step()
    for _ in range(5):  # the leader renews; the other keeps waiting
        clock[0] += 2
        assert first.step()
        assert not second.step()
    clock[0] += LEASE_SECONDS - 1  # the leader went silent (killed)
    assert not second.step()
    clock[0] += 2
    assert second.step()
    assert not first.step()  # back, it finds another holder: it does not lead


def test_the_cache_shows_its_own_writes_until_the_watch_brings_them() -> None:
    cache = FleetCache()
    watched = _grs("r", 1, version="4")
    mine = _grs("r", 1, version="5", node="x")
    cache.note_written(mine)
    assert cache.wake.is_set()
    assert cache.snapshot({"gpureplicasets": [watched]}).replica_sets == [mine]
    newer = _grs("r", 1, version="6", node="x")
    assert cache.snapshot({"gpureplicasets": [newer]}).replica_sets == [newer]
    assert cache.snapshot({"gpureplicasets": [watched]}).replica_sets == [watched]  # dropped
    assert cache.snapshot({"gpureplicasets": []}).replica_sets == []  # deleted
