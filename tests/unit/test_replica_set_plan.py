"""The pure core's decisions, table by table (no Docker: plain observed values)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gpudock.api.container_fields import PortSpec, Protocol
from gpudock.api.gpu_replica_set import (
    GpuReplicaSetSpec,
    GpuReplicaSetStatus,
    HistoryPolicy,
    PortBinding,
)
from gpudock.core.allocation import HostPortInUseError, Ledger, allocate_gpus, allocate_ports
from gpudock.core.container_config import build_container_config, exact_env, spec_hash
from gpudock.core.gpu_attach import GPU_ATTACHMENTS, DeviceRequests
from gpudock.core.observed import HostPort, ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.history import plan_delete
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.plan import plan_replica_set
from gpudock.core.replica_set.saved_disks import SavedDisks, preserved_image
from gpudock.core.replica_set.status import invalid_spec_status
from gpudock.core.revision import Revision
from gpudock.errors import SpecError

KEY = ResourceKey("team-a", "knock")
GPUS = tuple(f"GPU-{i}" for i in range(4))


def _spec(**raw: Any) -> GpuReplicaSetSpec:
    # IfNotPresent: these plans are about the image on the node (a pull: test_image_pulls)
    return GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img",
                                    "imagePullPolicy": "IfNotPresent", **raw})


def _obs(spec: GpuReplicaSetSpec, *containers: ObservedContainer, **kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        key=KEY, uid="uid-1", generation=1, spec=spec, previous_status={},
        containers=containers, inventory=GPUS, port_range=(40000, 40010),
        allowed_host_paths=("/srv",), images_present=frozenset({"img"}))
    base.update(kw)
    return Observation(**base)


def _mine(spec: GpuReplicaSetSpec, gpus: tuple[str, ...] = (), **kw: Any) -> ObservedContainer:
    base: dict[str, Any] = dict(
        id="c1", name="team-a_knock-1", status="running", owner=KEY, uid="uid-1",
        revision=1, gpus=gpus, spec_hash=spec_hash(spec), base_image=spec.image,
        restart_policy="unless-stopped")
    base.update(kw)
    return ObservedContainer(**base)


def _record(spec: GpuReplicaSetSpec, revision: int = 1) -> Revision:
    return Revision(namespace=KEY.namespace, name=KEY.name, revision=revision, uid="uid-1",
                    spec=spec.shape(), image=spec.image,
                    container_name=f"team-a_knock-{revision}", gpus=(), ports=(),
                    created_at="t")


def _other(name: str, gpus: tuple[str, ...], **kw: Any) -> ObservedContainer:
    return ObservedContainer(id=name, name=name, status="running",
                             owner=ResourceKey("team-b", name), uid=name, revision=1,
                             gpus=gpus, **kw)


def test_new_resource_gets_free_gpus_and_ports() -> None:
    spec = _spec(gpuCount=2, ports=[{"containerPort": 22}])
    plan = plan_replica_set(_obs(spec, _other("x", ("GPU-0",)),
                                      ))
    (action,) = plan.actions
    assert isinstance(action, act.StartRevision)
    assert action.record.revision == 1
    assert action.config.gpus == ("GPU-1", "GPU-2")
    assert action.config.env["NVIDIA_VISIBLE_DEVICES"] == "GPU-1,GPU-2"
    assert action.config.runtime == "nvidia"
    assert action.config.ports == (PortBinding(22, 40000),)
    assert action.config.name == "team-a_knock-1"
    assert plan.status.phase == "Creating"


def test_not_enough_gpus_waits_with_a_reason() -> None:
    spec = _spec(gpuCount=2)
    plan = plan_replica_set(_obs(spec, _other("x", GPUS[:3])))
    assert plan.actions == ()
    assert plan.status.phase == "Pending"
    ready = plan.status.conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", False, "InsufficientGPUs")
    assert "1 of 4" in ready.message


def test_matching_container_is_left_alone() -> None:
    spec = _spec(gpuCount=1)
    plan = plan_replica_set(_obs(spec, _mine(spec, ("GPU-3",)), records=(_record(spec),)))
    assert plan.actions == ()
    assert plan.status.phase == "Running"
    assert plan.status.gpus == ("GPU-3",)


@pytest.mark.parametrize(("change", "action_type"), [
    ({"status": "exited"}, act.StartContainer),
    ({"status": "paused"}, act.UnpauseContainer),
    ({"name": "renamed"}, act.RenameContainer),
    ({"restart_policy": "no"}, act.SetRestartPolicy),
])
def test_drift_is_repaired(change: dict[str, Any], action_type: type) -> None:
    spec = _spec()
    plan = plan_replica_set(_obs(spec, _mine(spec, **change), records=(_record(spec),)))
    (action,) = plan.actions
    assert isinstance(action, action_type)
    assert plan.drift


def test_removed_container_is_recreated_from_its_revision_with_its_gpus_and_ports() -> None:
    spec = _spec(gpuCount=1, ports=[{"containerPort": 22}])
    record = replace(_record(spec), gpus=("GPU-2",), ports=(PortBinding(22, 40007),),
                     container_id="c1")
    plan = plan_replica_set(_obs(spec, records=(record,)))
    (action,) = plan.actions
    assert isinstance(action, act.StartRevision)
    assert action.reason == "Recreated"
    assert action.config.gpus == ("GPU-2",)
    assert action.config.ports == (PortBinding(22, 40007),)
    assert plan.drift == "container was removed"


@pytest.mark.parametrize(("recorded", "reason"), [
    ({}, "RevisionStarted"),  # its container never ran (a refused port, a crash)
    ({"container_id": "c1", "preserved_from": "c1"}, "Resumed"),  # the agent removed it
])
def test_a_container_the_agent_removed_itself_is_no_drift_6(recorded: dict[str, Any],
                                                            reason: str) -> None:
    spec = _spec(gpuCount=1)
    record = replace(_record(spec), **recorded)
    # Whatever the status last said: the decision is the record's.
    plan = plan_replica_set(_obs(spec, records=(record,),
                                      previous_status={"phase": "Running"}))
    (action,) = plan.actions
    assert isinstance(action, act.StartRevision)
    assert (action.reason, plan.drift) == (reason, None)


@pytest.mark.parametrize(("spec_raw", "kw", "reason"), [
    ({"mounts": [{"hostPath": "/etc", "mountPath": "/x"}]}, {}, "HostPathNotAllowed"),
    ({"imagePullPolicy": "Never"}, {"images_present": frozenset()}, "ImageNotPresent"),
    ({"mounts": [{"volume": "data", "mountPath": "/x"}]}, {}, "VolumeNotReady"),
])
def test_user_errors_give_a_condition_and_no_action(
    spec_raw: dict[str, Any], kw: dict[str, Any], reason: str,
) -> None:
    plan = plan_replica_set(_obs(_spec(**spec_raw), **kw))
    assert plan.actions == ()
    conditions = {c.type: (c.status, c.reason) for c in plan.status.conditions}
    waiting = reason == "VolumeNotReady"  # the node's to resolve, not the user's
    assert conditions == {"Ready": (False, reason), "Progressing": (waiting, reason),
                          "Degraded": (not waiting, "AsExpected" if waiting else reason)}
    assert (plan.status.phase, plan.status.reason) == (
        "Pending" if waiting else "Failed", reason)


def test_zero_gpus_sees_no_gpu_in_either_attach_mode() -> None:
    spec = _spec(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    for gpu_attach in GPU_ATTACHMENTS.values():
        config = build_container_config(KEY, "u", spec, revision=1, gpus=(), ports=(),
                                        volume_names={}, gpu_attach=gpu_attach)
        assert config.env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert config.runtime is None
        assert config.gpu_device_ids == ()


def test_user_env_cannot_widen_the_visible_gpus() -> None:
    spec = _spec(gpuCount=1, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    config = build_container_config(KEY, "u", spec, revision=1, gpus=("GPU-1",), ports=(),
                                    volume_names={})
    assert config.env["NVIDIA_VISIBLE_DEVICES"] == "GPU-1"
    requested = build_container_config(KEY, "u", spec, revision=1, gpus=("GPU-1",),
                                       ports=(), volume_names={}, gpu_attach=DeviceRequests())
    assert "NVIDIA_VISIBLE_DEVICES" not in requested.env
    assert requested.gpu_device_ids == ("GPU-1",)


def test_spec_change_first_saves_the_disk_then_starts_a_revision_from_it() -> None:
    old = _spec(gpuCount=1)
    new = replace(old, gpu_count=3)
    running = _mine(old, ("GPU-2",))
    plan = plan_replica_set(_obs(new, running, records=(_record(old),)))
    assert [type(a) for a in plan.actions] == [act.StopContainer, act.PreserveDisk,
                                               act.StartRevision, act.RemoveContainer]
    planned = plan.actions[2]
    assert isinstance(planned, act.StartRevision)
    assert planned.config.image == preserved_image(KEY, 1)  # the image the save makes
    # A rollout cut short after the save: the saved disk is used, not saved again.
    saved = replace(_record(old), preserved_image=preserved_image(KEY, 1),
                    preserved_from="c1")
    stopped = replace(running, status="exited")
    plan = plan_replica_set(_obs(new, stopped, records=(saved,),
                                      preserved_tags=frozenset({saved.preserved_image})))
    start, remove = plan.actions
    assert isinstance(remove, act.RemoveContainer)
    assert isinstance(start, act.StartRevision)
    assert start.config == planned.config
    assert start.config.name == "team-a_knock-2"
    assert start.config.gpus[0] == "GPU-2"  # growing keeps the GPU it had
    assert start.config.image == preserved_image(KEY, 1)
    assert start.record.revision == 2


def test_not_enough_gpus_for_a_change_leaves_the_old_container_running() -> None:
    old = _spec(gpuCount=1)
    plan = plan_replica_set(_obs(replace(old, gpu_count=4), _mine(old, ("GPU-0",)),
                                      _other("x", ("GPU-3",)), records=(_record(old),)))
    assert plan.actions == ()
    assert plan.status.phase == "Running"  # the old container still serves
    assert plan.status.conditions[0].status  # still Ready: the old container runs
    assert plan.status.conditions[1].reason == "InsufficientGPUs"  # the change waits


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


def _saved(spec: GpuReplicaSetSpec, revision: int) -> Revision:
    image = preserved_image(KEY, revision)
    return replace(_record(spec, revision), preserved_image=image,
                   preserved_from=f"c{revision}", image=preserved_image(KEY, revision - 1))


def test_history_past_the_limit_is_pruned_but_never_the_current_source() -> None:
    spec = _spec(revisionHistoryLimit=0)
    records = tuple(_saved(spec, r) for r in range(1, 5))  # revision 4 is current
    current = _mine(spec, revision=4, name="team-a_knock-4")
    plan = plan_replica_set(_obs(spec, current, records=records))
    pruned = [a.record.revision for a in plan.actions if isinstance(a, act.PruneRevision)]
    assert pruned == [1, 2]  # 3 is kept: revision 4's container started from its disk
    assert [h.revision for h in plan.status.history] == [1, 2, 3, 4]


@pytest.mark.parametrize("policy", ["Retain", "Purge"])
def test_delete_saves_the_disk_or_purges(policy: str) -> None:
    spec = _spec()
    running = _mine(spec)
    tags = frozenset({preserved_image(KEY, 1)})
    actions = plan_delete(KEY, (running, _other("x", ())), (_record(spec),),
                               SavedDisks(tags),
                               HistoryPolicy(policy))
    kinds = [type(a) for a in actions]
    if policy == "Retain":
        assert kinds == [act.StopContainer, act.PreserveDisk, act.RemoveContainer]
    else:
        assert kinds == [act.RemoveContainer, act.PurgeHistory]


def test_rollback_needs_a_saved_disk_and_starts_from_it() -> None:
    old, new = _spec(gpuCount=1), _spec(gpuCount=2)
    first, second = _saved(old, 1), replace(_record(new, 2), image=preserved_image(KEY, 1))
    wanted = replace(new, rollback_to=1)
    current = _mine(new, revision=2, name="team-a_knock-2")
    gone = plan_replica_set(_obs(wanted, current, records=(first, second)))
    # The instance serves on: Ready stays True, the refused rollback is Degraded.
    assert {c.type: (c.status, c.reason) for c in gone.status.conditions} == {
        "Ready": (True, "ContainerRunning"), "Progressing": (False, "RevisionDiskGone"),
        "Degraded": (True, "RevisionDiskGone")}
    assert (gone.status.phase, gone.status.reason) == ("Running", "RevisionDiskGone")
    saved = replace(second, preserved_image=preserved_image(KEY, 2), preserved_from="c1")
    stopped = replace(current, status="exited")
    plan = plan_replica_set(_obs(wanted, stopped, records=(first, saved),
                                      preserved_tags=frozenset({first.preserved_image or "",
                                                                saved.preserved_image or ""})))
    start, _ = plan.actions
    assert isinstance(start, act.StartRevision)
    assert start.record.rollback_of == 1
    assert start.record.spec == old.shape()
    assert start.config.image == first.preserved_image


def test_exact_env_unsets_what_a_saved_disk_inherited() -> None:
    env = exact_env(["PATH=/bin", "CUDA=12"], ["PATH=/bin", "CUDA=12", "OLD=1", "KEEP=0"],
                    {"KEEP": "1"})
    assert env == ["PATH=/bin", "CUDA=12", "KEEP=1", "OLD"]


def test_an_invalid_spec_keeps_the_previous_history_as_it_was() -> None:
    history = [{"revision": 1, "createdAt": "t1", "changeCause": None, "image": "img",
                "gpuCount": 1, "rollbackOf": None, "failed": None},
               {"revision": 2, "createdAt": "t2", "changeCause": "grow", "image": "img",
                "gpuCount": 2, "rollbackOf": None, "failed": None}]
    status = invalid_spec_status(3, {"phase": "Running", "revision": 2, "history": history},
                                 SpecError("spec.gpuCount: bad"), ())
    assert [h.to_dict() for h in status.history] == history  # null stays null, not "None"


def _ready(status: GpuReplicaSetStatus) -> tuple[bool, str]:
    found = next(c for c in status.conditions if c.type == "Ready")
    return found.status, found.reason


def test_an_invalid_spec_over_a_dead_container_is_not_ready() -> None:
    """Ready comes from the container seen now, not from the last status written."""
    shown = {"phase": "Running", "revision": 1, "containerID": "c1",
             "conditions": [{"type": "Ready", "status": "True"}]}
    dead = _mine(_spec(), status="exited")
    status = invalid_spec_status(2, shown, SpecError("spec.gpuCount: bad"), (dead,))
    assert _ready(status) == (False, "InvalidSpec")
    assert status.phase == "Failed"
    running = invalid_spec_status(2, shown, SpecError("spec.gpuCount: bad"),
                                  (replace(dead, status="running"),))
    assert _ready(running) == (True, "ContainerRunning")
    gone = invalid_spec_status(2, shown, SpecError("spec.gpuCount: bad"), ())
    assert _ready(gone) == (False, "InvalidSpec")


def test_a_sized_volume_moved_to_another_docker_volume_rolls_to_a_new_revision() -> None:
    spec = _spec(mounts=[{"volume": "data", "mountPath": "/data"}])
    stopped = _mine(spec, status="exited", volumes={"/data": "team-a_data-1"})
    record = _record(spec)
    same = plan_replica_set(_obs(spec, replace(stopped, status="running"),
                                      records=(record,),
                                      volume_names={"data": "team-a_data-1"}))
    assert same.actions == ()  # where the volume is: nothing to do
    moved = plan_replica_set(_obs(spec, stopped, records=(record,),
                                       volume_names={"data": "team-a_data-2"}))
    assert [type(a) for a in moved.actions] == [  # its disk first
        act.PreserveDisk, act.StartRevision, act.RemoveContainer]
    saved = replace(record, preserved_image=preserved_image(KEY, 1),
                    preserved_from="c1")
    plan = plan_replica_set(_obs(spec, stopped, records=(saved,),
                                      volume_names={"data": "team-a_data-2"},
                                      preserved_tags=frozenset({saved.preserved_image})))
    start, _ = plan.actions
    assert isinstance(start, act.StartRevision)
    assert start.record.revision == 2
    assert start.record.change_cause == "SizedVolume data moved to Docker volume team-a_data-2"
    assert [m.source for m in start.config.mounts] == ["team-a_data-2"]
