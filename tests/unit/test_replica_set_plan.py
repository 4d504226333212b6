"""The pure core's decisions, table by table (no Docker: plain observed values)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, PortBinding, PortSpec, Protocol
from gpudock.core import replica_set_plan as core
from gpudock.core.allocation import HostPortInUseError, Ledger, allocate_gpus, allocate_ports
from gpudock.core.container_config import build_container_config, spec_hash
from gpudock.core.observed import HostPort, ObservedContainer, ResourceKey

KEY = ResourceKey("team-a", "knock")
GPUS = tuple(f"GPU-{i}" for i in range(4))


def _spec(**raw: Any) -> GpuReplicaSetSpec:
    return GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img", **raw})


def _obs(spec: GpuReplicaSetSpec, *containers: ObservedContainer, **kw: Any) -> core.Observation:
    base: dict[str, Any] = dict(
        key=KEY, uid="uid-1", generation=1, spec=spec, previous_status={},
        containers=containers, inventory=GPUS, port_range=(40000, 40010),
        allowed_host_paths=("/srv",), image_present=True)
    base.update(kw)
    return core.Observation(**base)


def _mine(spec: GpuReplicaSetSpec, gpus: tuple[str, ...] = (), **kw: Any) -> ObservedContainer:
    base: dict[str, Any] = dict(
        id="c1", name="team-a_knock-1", status="running", owner=KEY, uid="uid-1",
        revision=1, gpus=gpus, spec_hash=spec_hash(spec), base_image=spec.image,
        restart_policy="unless-stopped")
    base.update(kw)
    return ObservedContainer(**base)


def _other(name: str, gpus: tuple[str, ...], **kw: Any) -> ObservedContainer:
    return ObservedContainer(id=name, name=name, status="running",
                             owner=ResourceKey("team-b", name), uid=name, revision=1,
                             gpus=gpus, **kw)


def test_new_resource_gets_free_gpus_and_ports() -> None:
    spec = _spec(gpuCount=2, ports=[{"containerPort": 22}])
    plan = core.plan_replica_set(_obs(spec, _other("x", ("GPU-0",)),
                                      ))
    (action,) = plan.actions
    assert isinstance(action, core.CreateContainer)
    assert action.config.gpus == ("GPU-1", "GPU-2")
    assert action.config.env["NVIDIA_VISIBLE_DEVICES"] == "GPU-1,GPU-2"
    assert action.config.runtime == "nvidia"
    assert action.config.ports == (PortBinding(22, 40000),)
    assert action.config.name == "team-a_knock-1"
    assert plan.status.phase == "Creating"


def test_not_enough_gpus_waits_with_a_reason() -> None:
    spec = _spec(gpuCount=2)
    plan = core.plan_replica_set(_obs(spec, _other("x", GPUS[:3])))
    assert plan.actions == ()
    assert plan.status.phase == "Pending"
    ready = plan.status.conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", False, "InsufficientGPUs")
    assert "1 of 4" in ready.message


def test_matching_container_is_left_alone() -> None:
    spec = _spec(gpuCount=1)
    plan = core.plan_replica_set(_obs(spec, _mine(spec, ("GPU-3",))))
    assert plan.actions == ()
    assert plan.status.phase == "Running"
    assert plan.status.gpus == ("GPU-3",)


@pytest.mark.parametrize(("change", "action_type"), [
    ({"status": "exited"}, core.StartContainer),
    ({"status": "paused"}, core.UnpauseContainer),
    ({"name": "renamed"}, core.RenameContainer),
    ({"restart_policy": "no"}, core.SetRestartPolicy),
])
def test_drift_is_repaired(change: dict[str, Any], action_type: type) -> None:
    spec = _spec()
    plan = core.plan_replica_set(_obs(spec, _mine(spec, **change)))
    (action,) = plan.actions
    assert isinstance(action, action_type)
    assert plan.drift


def test_removed_container_is_recreated_with_the_same_gpus_and_ports() -> None:
    spec = _spec(gpuCount=1, ports=[{"containerPort": 22}])
    previous = {"revision": 1, "containerID": "gone", "gpus": ["GPU-2"],
                "ports": [{"containerPort": 22, "hostPort": 40007, "protocol": "TCP"}]}
    plan = core.plan_replica_set(_obs(spec, previous_status=previous))
    (action,) = plan.actions
    assert isinstance(action, core.CreateContainer)
    assert action.reason == "Recreated"
    assert action.config.gpus == ("GPU-2",)
    assert action.config.ports == (PortBinding(22, 40007),)
    assert plan.drift == "container was removed"


@pytest.mark.parametrize(("spec_raw", "kw", "reason"), [
    ({"mounts": [{"hostPath": "/etc", "mountPath": "/x"}]}, {}, "HostPathNotAllowed"),
    ({}, {"image_present": False}, "ImageNotPresent"),
    ({"mounts": [{"volume": "data", "mountPath": "/x"}]}, {}, "VolumeNotReady"),
])
def test_user_errors_give_a_condition_and_no_action(
    spec_raw: dict[str, Any], kw: dict[str, Any], reason: str,
) -> None:
    plan = core.plan_replica_set(_obs(_spec(**spec_raw), **kw))
    assert plan.actions == ()
    assert {c.reason for c in plan.status.conditions} == {reason}


def test_zero_gpus_sees_no_gpu_in_either_attach_mode() -> None:
    spec = _spec(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    for device_requests in (False, True):
        config = build_container_config(KEY, "u", spec, revision=1, gpus=(), ports=(),
                                        volume_names={}, use_device_requests=device_requests)
        assert config.env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert config.runtime is None
        assert config.gpu_device_ids == ()


def test_user_env_cannot_widen_the_visible_gpus() -> None:
    spec = _spec(gpuCount=1, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    config = build_container_config(KEY, "u", spec, revision=1, gpus=("GPU-1",), ports=(),
                                    volume_names={})
    assert config.env["NVIDIA_VISIBLE_DEVICES"] == "GPU-1"
    requested = build_container_config(KEY, "u", spec, revision=1, gpus=("GPU-1",),
                                       ports=(), volume_names={}, use_device_requests=True)
    assert "NVIDIA_VISIBLE_DEVICES" not in requested.env
    assert requested.gpu_device_ids == ("GPU-1",)


def test_spec_change_rolls_out_a_revision_that_keeps_the_disk() -> None:
    old = _spec(gpuCount=1)
    new = replace(old, gpu_count=3)
    plan = core.plan_replica_set(_obs(new, _mine(old, ("GPU-2",))))
    kinds = [type(a) for a in plan.actions]
    assert kinds == [core.StopContainer, core.CommitContainer, core.CreateContainer,
                     core.RemoveContainer]
    create = plan.actions[2]
    assert isinstance(create, core.CreateContainer)
    assert create.config.name == "team-a_knock-2"
    assert create.config.gpus[0] == "GPU-2"  # growing keeps the GPU it had
    assert create.config.image == core.preserved_image(KEY, 1)


def test_gpu_allocation_keeps_held_gpus_and_never_hands_out_taken_ones() -> None:
    assert allocate_gpus(3, GPUS, {"GPU-0"}, held=("GPU-3",)) == ("GPU-3", "GPU-1", "GPU-2")
    assert allocate_gpus(1, GPUS, set(), held=("GPU-3", "GPU-2")) == ("GPU-3",)
    assert allocate_gpus(4, GPUS, {"GPU-0"}) is None
    assert allocate_gpus(0, GPUS, set(GPUS)) == ()


def test_ledger_comes_from_the_containers() -> None:
    mine = _mine(_spec(), ("GPU-1",))
    stopped_foreign = ObservedContainer(id="f", name="f", status="exited",
                                        port_bindings={(80, Protocol.TCP): 40001})
    ledger = Ledger.from_containers([mine, _other("x", ("GPU-1", "GPU-2")), stopped_foreign])
    assert ledger.gpus_held_by_others(KEY) == {"GPU-1", "GPU-2"}
    assert HostPort(40001) not in ledger.ports_held_by_others(KEY)


def test_port_allocation() -> None:
    specs = (PortSpec(22), PortSpec(80, host_port=40000), PortSpec(53, Protocol.UDP))
    ports = allocate_ports(specs, {HostPort(40001)}, 40000, 40010,
                           held=(PortBinding(22, 40005),))
    assert ports == (PortBinding(22, 40005), PortBinding(80, 40000),
                     PortBinding(53, 40000, Protocol.UDP))
    with pytest.raises(HostPortInUseError, match="40001/TCP"):
        allocate_ports((PortSpec(22, host_port=40001),), {HostPort(40001)}, 40000, 40010)
