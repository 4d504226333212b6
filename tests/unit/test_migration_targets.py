"""Where a migration without a targetNode goes: the scheduler's filters and policy
(core/placement.py) over the other nodes that serve migrations, with the SizedVolumes
that move with the instance made there at their size; kube-scheduler's message when
none can take it. On in-memory fakes of the API server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from gpudock.agent.migration_context import MigrationContext, MigrationError
from gpudock.agent.migration_targets import choose_target
from gpudock.agent.migration_volumes import MovingVolume
from gpudock.api.gpu_migration import GpuMigrationSpec
from gpudock.api.reasons import Reason

NOW = "2026-12-07T12:00:00Z"
ENDPOINT = {"address": "127.0.0.1", "port": 9465, "caBundle": "PEM"}


def _gpu_node(name: str, gpus: int, held: int = 0, *, endpoint: bool = True,
              **spec: Any) -> dict[str, Any]:
    holder = {"namespace": "other", "name": "x"}
    return {"metadata": {"name": name, "labels": {"pool": name}}, "spec": spec,
            "status": {"heartbeatTime": NOW,
                       "gpus": [{"model": "Simulated GPU", "memoryMiB": 81920,
                                 "health": "Healthy", "holder": holder if i < held else None}
                                for i in range(gpus)],
                       "volumes": {"freeBytes": 10 << 30},
                       **({"transfer": ENDPOINT} if endpoint else {})}}


def _grs(gpus: int = 1, mounts: tuple[str, ...] = (), **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "moving", "uid": "uid-moving"},
            "spec": {"image": "x", "gpuCount": gpus, **spec,
                     "mounts": [{"volume": v, "mountPath": f"/{v}"} for v in mounts]},
            "status": {"nodeName": "src"}}


def _volume(name: str, size: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name},
            "spec": {"size": size}, "status": {"nodeName": "src"}}


@dataclass
class _Settings:
    node_name: str = "src"
    namespaces: tuple[str, ...] = ()
    heartbeat_seconds: float = 30.0
    scheduling_policy: str = "Binpack"


@dataclass
class _Kube:
    nodes: list[dict[str, Any]]
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def list_cluster(self, plural: str) -> list[dict[str, Any]]:
        assert plural == "gpunodes"
        return self.nodes

    def list_objects(self, plural: str, namespaces: tuple[str, ...] = ()
                     ) -> list[dict[str, Any]]:
        return self.objects.get(plural, [])


@dataclass
class _Agent:
    kube: _Kube
    settings: _Settings = field(default_factory=_Settings)

    def now(self) -> str:
        return NOW


def _choose(nodes: list[dict[str, Any]], grs: dict[str, Any], spec: dict[str, Any] | None = None,
            volumes: tuple[dict[str, Any], ...] = (), moving: tuple[MovingVolume, ...] = (),
            policy: str = "Binpack") -> str:
    agent = _Agent(_Kube([_gpu_node("src", 8), *nodes],
                         {"gpureplicasets": [grs], "sizedvolumes": list(volumes)}),
                   _Settings(scheduling_policy=policy))
    parsed = GpuMigrationSpec.parse({"replicaSetName": "moving", **(spec or {})})
    node, endpoint = choose_target(cast(MigrationContext, agent), parsed, grs, list(moving))
    assert endpoint == ENDPOINT
    return node


def test_without_a_target_the_policy_picks_among_the_nodes_that_fit() -> None:
    nodes = [_gpu_node("roomy", 8), _gpu_node("tight", 8, held=6)]
    assert _choose(nodes, _grs(2)) == "tight"              # Binpack (the default)
    assert _choose(nodes, _grs(2), policy="Spread") == "roomy"
    assert _choose(nodes, _grs(2, schedulingPolicy="Spread")) == "roomy"
    assert _choose(nodes, _grs(3)) == "roomy"              # tight has 2 free


def test_the_schedulers_filters_apply_and_the_source_is_never_a_target() -> None:
    nodes = [_gpu_node("cordoned", 8, unschedulable=True),
             _gpu_node("tainted", 8, taints=[{"key": "k", "value": "v",
                                              "effect": "NoSchedule"}]),
             _gpu_node("plain", 8)]
    assert _choose(nodes, _grs(1)) == "plain"
    assert _choose(nodes, _grs(1, tolerations=[{"key": "k", "operator": "Equal",
                                                "value": "v", "effect": "NoSchedule"}]),
                   spec={"nodeSelector": {"pool": "tainted"}}) == "tainted"
    with pytest.raises(MigrationError) as caught:
        _choose(nodes, _grs(1), spec={"nodeSelector": {"pool": "src"}})
    assert caught.value.reason == Reason.TARGET_UNSCHEDULABLE
    assert caught.value.message == (
        "no other node can take it: 0/3 nodes are available: 1 node(s) didn't match node "
        "selector, 1 node(s) had untolerated taint {k: v}, 1 node(s) were unschedulable.")


def test_kube_schedulers_message_when_none_can_take_it() -> None:
    nodes = [_gpu_node("full", 8, held=8), _gpu_node("closed", 8, endpoint=False),
             _gpu_node("cordoned", 8, unschedulable=True)]
    with pytest.raises(MigrationError) as caught:
        _choose(nodes, _grs(1))
    assert caught.value.message == (
        "no other node can take it: 0/3 nodes are available: 1 Insufficient GPUs, "
        "1 node(s) had no migration endpoint (with TLS), 1 node(s) were unschedulable.")
    with pytest.raises(MigrationError) as named:
        _choose(nodes, _grs(1), spec={"targetNode": "full"})
    assert named.value.message == (
        "node full cannot take it: 0/1 nodes are available: 1 Insufficient GPUs.")
    with pytest.raises(MigrationError) as missing:
        _choose(nodes, _grs(1), spec={"targetNode": "gone"})
    assert missing.value.message == "node gone cannot take it: no GpuNode gone serves GPUs"
    with pytest.raises(MigrationError) as home:  # not a wait for room: it never will be
        _choose(nodes, _grs(1), spec={"targetNode": "src"})
    assert home.value.reason == Reason.NOT_MIGRATABLE


def test_a_move_asked_by_spec_node_name_skips_cordon_taints_and_selectors() -> None:
    """As a pod's nodeName skips the scheduler: only readiness and room count."""
    nodes = [_gpu_node("b", 8, unschedulable=True,
                       taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}])]
    pinned = _grs(1, nodeName="b", nodeSelector={"pool": "elsewhere"})
    assert _choose(nodes, pinned, spec={"targetNode": "b"}) == "b"
    with pytest.raises(MigrationError) as caught:  # a GpuMigration naming b: filtered
        _choose(nodes, _grs(1), spec={"targetNode": "b"})
    assert "1 node(s) were unschedulable" in caught.value.message
    with pytest.raises(MigrationError):           # room still counts
        _choose([_gpu_node("b", 8, held=8)], pinned, spec={"targetNode": "b"})


def test_its_own_sized_volumes_move_with_it_and_need_room_there() -> None:
    """A SizedVolume bound to the source would tie a new resource to the source;
    the ones a migration moves tie it nowhere, but are made on the target."""
    grs = _grs(1, mounts=("data",))
    volumes = (_volume("data", "4Gi"),)
    data = MovingVolume("data", "uid-data")
    assert _choose([_gpu_node("b", 8)], grs, volumes=volumes, moving=(data,)) == "b"
    small = _gpu_node("b", 8)
    small["status"]["volumes"] = {"freeBytes": 1 << 30}
    with pytest.raises(MigrationError) as caught:
        _choose([small], grs, volumes=volumes, moving=(data,))
    assert caught.value.message == ("no other node can take it: 0/1 nodes are available: "
                                    "1 node(s) did not have enough free storage.")
    # A volume pinned to another node by its spec.nodeName takes the instance there.
    nodes = [_gpu_node("b", 8), _gpu_node("c", 8)]
    assert _choose(nodes, grs, volumes=volumes, moving=(data,)) == "b"  # (ties: by name)
    to_c = MovingVolume("data", "uid-data", pinned="c")
    assert _choose(nodes, grs, volumes=volumes, moving=(to_c,)) == "c"
