"""#28 item 5 in the pure core: an instance's fixed address on the instance network."""

from __future__ import annotations

import argparse
import concurrent.futures
from dataclasses import replace
from typing import Any

import pytest

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.core.allocation import Ledger, address_count, allocate_address
from gpudock.core.container_config import spec_hash
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.plan import plan_replica_set
from gpudock.core.revision import Revision
from gpudock.settings import SettingsError, settings_from
from gpudock.settings_flags import add_agent_arguments
from tests.unit.fakes.node import Node

KEY = ResourceKey("team-a", "web")
SUBNET = "10.9.0.0/29"  # .1 gateway; .2-.6 for instances


def _spec(**raw: Any) -> GpuReplicaSetSpec:
    return GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img",
                                    "imagePullPolicy": "IfNotPresent", **raw})


def _obs(spec: GpuReplicaSetSpec, *containers: ObservedContainer, **kw: Any) -> Observation:
    return Observation(key=KEY, uid="u", generation=1, spec=spec, previous_status={},
                       containers=containers, inventory=("GPU-0",), port_range=(40000, 40010),
                       allowed_host_paths=(), images_present=frozenset({"img"}),
                       instance_network="gpudock", instance_subnet=SUBNET, **kw)


def _container(owner: ResourceKey, address: str, status: str = "running",
               spec: GpuReplicaSetSpec | None = None, **kw: Any) -> ObservedContainer:
    return ObservedContainer(id=f"{owner.name}-{address}", name=f"c-{owner.name}",
                             status=status, owner=owner, uid="u", revision=1,
                             address=address, base_image="img", restart_policy="unless-stopped",
                             spec_hash=spec_hash(spec) if spec else "", **kw)


def _record(spec: GpuReplicaSetSpec, address: str = "") -> Revision:
    return Revision(namespace=KEY.namespace, name=KEY.name, revision=1, uid="u",
                    spec=spec.shape(), image="img", container_name="team-a_web-1", gpus=(),
                    ports=(), created_at="t", address=address)


def _others(*addresses: str) -> tuple[ObservedContainer, ...]:
    return tuple(_container(ResourceKey("team-b", f"b{i}"), a) for i, a in enumerate(addresses))


def test_addresses_skip_the_gateway_and_keep_what_is_held() -> None:
    assert address_count(SUBNET) == 5
    assert allocate_address(SUBNET, set()) == "10.9.0.2"
    assert allocate_address(SUBNET, {"10.9.0.2"}, held=["10.9.0.5"]) == "10.9.0.5"
    assert allocate_address(SUBNET, {"10.9.0.5"}, held=["10.9.0.5"]) == "10.9.0.2"
    for outside in ("10.9.0.1", "10.9.0.7", "10.9.1.2", "junk"):  # gateway, broadcast, ...
        assert allocate_address(SUBNET, set(), held=[outside]) == "10.9.0.2"
    assert allocate_address(SUBNET, {f"10.9.0.{i}" for i in range(2, 7)}) is None


def test_a_stopped_container_keeps_its_address_for_its_instance() -> None:
    ledger = Ledger.from_containers([_container(KEY, "10.9.0.2", "exited"),
                                     *_others("10.9.0.3"),
                                     _container(ResourceKey("team-b", "s"), "10.9.0.4",
                                                "exited")])
    assert ledger.addresses_held_by_others(KEY) == {"10.9.0.3", "10.9.0.4"}


def test_a_new_instance_waits_when_every_address_is_held() -> None:
    plan = plan_replica_set(_obs(_spec(), *_others(*(f"10.9.0.{i}" for i in range(2, 7)))))
    assert plan.actions == ()
    assert plan.status.phase == "Pending"
    progressing = plan.status.conditions[1]
    assert (progressing.status, progressing.reason) == (True, "AddressesExhausted")


def test_a_new_revision_takes_the_address_of_the_container_it_replaces() -> None:
    old = _spec()
    current = _container(KEY, "10.9.0.6", spec=old)
    full = _others(*(f"10.9.0.{i}" for i in range(2, 6)))  # every other address held
    plan = plan_replica_set(_obs(replace(old, gpu_count=1), current, *full,
                                 records=(_record(old, "10.9.0.6"),)))
    start = next(a for a in plan.actions if isinstance(a, act.StartRevision))
    assert (start.config.address, start.config.network) == ("10.9.0.6", "gpudock")
    assert start.config.labels["gpudock.dev/address"] == "10.9.0.6"
    assert start.record.address == "10.9.0.6"
    assert plan.status.ip == "10.9.0.6"


def test_recreated_after_stopped_it_asks_for_its_recorded_address_first() -> None:
    spec = _spec()
    plan = plan_replica_set(_obs(spec, *_others("10.9.0.2"),
                                 records=(_record(spec, "10.9.0.4"),)))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert start.config.address == "10.9.0.4"


@pytest.mark.parametrize("subnet", ["10.9.0.0/31", "10.9.0.1/29", "fd00::/64", "x"])
def test_an_unusable_instance_subnet_is_refused(subnet: str) -> None:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    with pytest.raises(SettingsError, match="--instance-subnet"):
        settings_from(parser.parse_args(["--node-name", "n", "--instance-subnet", subnet]), {})


def test_no_address_is_given_to_two_containers_by_concurrent_reconciles(node: Node) -> None:
    node.start_agent("--instance-subnet", SUBNET)
    names = [f"r{i}" for i in range(8)]
    for name in names:
        node.apply(name, gpus=0)
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(node.reconcile, names))  # the agent's worker threads, at once
    statuses = [node.status(n) for n in names]
    assert sorted(s["phase"] for s in statuses) == ["Pending"] * 3 + ["Running"] * 5
    given = [s["ip"] for s in statuses if s["phase"] == "Running"]
    assert sorted(given) == [f"10.9.0.{i}" for i in range(2, 7)]
    waiting = [n for n in names if node.status(n)["phase"] == "Pending"]
    assert {node.condition(n, "Progressing")["reason"] for n in waiting} == {
        "AddressesExhausted"}
