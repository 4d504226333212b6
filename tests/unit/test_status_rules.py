"""The condition and phase rules (docs/gpu-replica-set.md, "Status"), on plain
observed values: Ready is about serving, Progressing about a change, Degraded about
what needs the user."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.reasons import Reason
from gpudock.core.container_config import spec_hash
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation, Plan
from gpudock.core.replica_set.plan import plan_replica_set
from gpudock.core.revision import Revision

KEY = ResourceKey("team-a", "knock")
NOW = "2026-11-22T10:00:30Z"


def _spec(**raw: Any) -> GpuReplicaSetSpec:
    return GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img", **raw})


def _record(spec: GpuReplicaSetSpec, revision: int = 1, **kw: Any) -> Revision:
    base: dict[str, Any] = dict(
        namespace=KEY.namespace, name=KEY.name, revision=revision, uid="u",
        spec=spec.shape(), image=spec.image, container_name=f"team-a_knock-{revision}",
        gpus=(), ports=(), created_at="t", generation=1)
    return Revision(**{**base, **kw})


def _container(spec: GpuReplicaSetSpec, **kw: Any) -> ObservedContainer:
    base: dict[str, Any] = dict(
        id="c1", name="team-a_knock-1", status="running", owner=KEY, uid="u", revision=1,
        spec_hash=spec_hash(spec), base_image=spec.image, restart_policy="unless-stopped",
        started_at="2026-11-22T10:00:00Z")
    base.update(kw)
    return ObservedContainer(**base)


def _plan(spec: GpuReplicaSetSpec, *containers: ObservedContainer,
          records: tuple[Revision, ...], **kw: Any) -> Plan:
    return plan_replica_set(Observation(
        key=KEY, uid="u", generation=1, spec=spec, previous_status={},
        containers=containers, inventory=("GPU-0", "GPU-1"), port_range=(40000, 40010),
        allowed_host_paths=(), images_present=frozenset({"img"}), records=records,
        now=NOW, **kw))


def _conditions(plan: Plan) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in plan.status.conditions}


def test_a_restarting_container_is_a_crash_loop_not_ready_2() -> None:
    spec = _spec()
    crashing = _container(spec, status="restarting", exit_code=3, restart_count=4,
                          finished_at="2026-11-22T10:00:29Z")
    plan = _plan(spec, crashing, records=(_record(spec),))
    assert plan.actions == ()  # Docker restarts it; nothing for the agent to do
    assert _conditions(plan) == {"Ready": (False, "CrashLoop"),
                                 "Progressing": (False, "ReconcileComplete"),
                                 "Degraded": (True, "CrashLoop")}
    raw = plan.status.to_dict()
    assert (raw["phase"], raw["reason"], raw["restartCount"], raw["lastExitCode"]) == (
        "CrashLoop", "CrashLoop", 4, 3)
    assert "exited with code 3" in plan.status.conditions[0].message


def test_a_container_just_restarted_by_docker_serves_only_after_a_while_2() -> None:
    spec = _spec()
    fresh = _container(spec, restart_count=1, started_at="2026-11-22T10:00:26Z",
                       oom_killed=True, exit_code=137)
    plan = _plan(spec, fresh, records=(_record(spec),))
    assert _conditions(plan)["Ready"] == (False, "CrashLoop")
    assert "OOMKilled" in plan.status.conditions[0].message
    assert plan.status.to_dict()["oomKilled"] is True
    assert plan.recheck_after == 6  # looked at again when it counts as stable
    stable = replace(fresh, started_at="2026-11-22T10:00:10Z")
    later = _plan(spec, stable, records=(_record(spec),))
    assert _conditions(later)["Ready"] == (True, "ContainerRunning")
    assert later.status.to_dict()["restartCount"] == 1  # the count stays visible
    assert later.status.reason is None


def test_stopped_holds_no_gpus_and_is_not_ready_5() -> None:
    spec = _spec(gpuCount=2, state="Stopped")
    record = _record(spec, gpus=("GPU-0", "GPU-1"), preserved_image="p:rev-1",
                     preserved_from="c1", container_id="c1")
    plan = _plan(spec, records=(record,), preserved_tags=frozenset({"p:rev-1"}))
    raw = plan.status.to_dict()
    assert (raw["phase"], raw["gpuCount"], raw["gpus"], raw["reason"]) == (
        "Stopped", 0, [], None)
    assert _conditions(plan) == {"Ready": (False, "Stopped"),
                                 "Progressing": (False, "ReconcileComplete"),
                                 "Degraded": (False, "AsExpected")}


def test_waiting_for_gpus_while_the_old_revision_serves_is_running_5() -> None:
    old, new = _spec(gpuCount=1), _spec(gpuCount=3)
    plan = _plan(new, _container(old, gpus=("GPU-0",)), records=(_record(old),))
    assert plan.actions == ()
    assert plan.status.phase == "Running"  # not Pending: the previous container serves
    assert _conditions(plan) == {"Ready": (True, "ContainerRunning"),
                                 "Progressing": (False, "ExceedsNodeCapacity"),
                                 "Degraded": (True, "ExceedsNodeCapacity")}
    assert "node n1 has 2 GPUs in all" in plan.status.conditions[1].message


def test_a_refused_revision_is_not_retried_and_the_previous_one_runs_again_3() -> None:
    old, new = _spec(), _spec(command=["jupyter", "lab"])
    saved = _record(old, preserved_image="p:rev-1", preserved_from="c1", container_id="c1")
    failed = _record(new, 2, failed_reason=Reason.COMMAND_NOT_FOUND,
                     failed_message="exec: jupyter not found")
    stopped = _container(old, status="exited")
    plan = _plan(new, stopped, records=(saved, failed))
    (start,) = plan.actions
    assert isinstance(start, act.StartContainer)
    assert (start.container_id, start.reason, plan.drift) == (
        "c1", "PreviousRevisionRestored", None)
    running = _plan(new, _container(old), records=(saved, failed))
    assert running.actions == ()
    assert _conditions(running) == {"Ready": (True, "ContainerRunning"),
                                    "Progressing": (False, "CommandNotFound"),
                                    "Degraded": (True, "CommandNotFound")}
    assert running.status.history[-1].failed is not None  # listed as never ran
    # A new spec generation is a new attempt, numbered after the failed one.
    again = plan_replica_set(replace(_observation_of(new, running), generation=2))
    assert any(isinstance(a, act.StopContainer) for a in again.actions)
    assert again.next_config is not None
    assert again.next_config.name == "team-a_knock-3"


def _observation_of(spec: GpuReplicaSetSpec, _: Plan) -> Observation:
    old = _spec()
    return Observation(
        key=KEY, uid="u", generation=1, spec=spec, previous_status={},
        containers=(_container(old),), inventory=("GPU-0", "GPU-1"),
        port_range=(40000, 40010), allowed_host_paths=(), images_present=frozenset({"img"}),
        records=(_record(old, preserved_image="p:rev-1", preserved_from="c0",
                         container_id="c1"),
                 _record(spec, 2, failed_reason=Reason.COMMAND_NOT_FOUND,
                         failed_message="x")), now=NOW)


def test_rollback_to_a_revision_that_never_ran_is_refused_4() -> None:
    old = _spec()
    failed = _record(_spec(gpuCount=1), 2, failed_reason=Reason.CONTAINER_START_FAILED,
                     failed_message="no")
    plan = _plan(replace(old, rollback_to=2), _container(old), records=(_record(old), failed))
    assert plan.actions == ()
    assert _conditions(plan)["Ready"] == (True, "ContainerRunning")
    assert _conditions(plan)["Degraded"] == (True, "RevisionNotFound")
    assert "never ran" in plan.status.conditions[2].message


def test_a_new_defaulted_shape_field_does_not_change_the_match_9() -> None:
    spec = _spec(gpuCount=1)
    recorded = spec.shape()
    assert spec.matches(recorded)
    # An older agent's record lacks a field the newer one writes at its default.
    assert spec.matches({k: v for k, v in recorded.items() if k != "command"})
    assert not spec.matches({**recorded, "gpuCount": 2})
