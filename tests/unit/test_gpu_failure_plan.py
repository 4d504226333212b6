"""#24: what the plan does for an instance holding an Unhealthy GPU (Degraded, and
Replace's new revision) or one whose container lost its GPUs (the access probe)."""

from __future__ import annotations

from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.plan import plan_replica_set
from tests.unit.test_replica_set_plan import _mine, _obs, _other, _record, _spec

SICK = {"GPU-3": "GPU 3 (GPU-3) is Unhealthy: XID79 since t"}


def _degraded(plan: object) -> tuple[bool, str, str]:
    status = plan.status  # type: ignore[attr-defined]
    found = next(c for c in status.conditions if c.type == "Degraded")
    return found.status, str(found.reason), found.message


def test_keep_runs_on_degraded_naming_the_gpu_and_a_new_one_never_gets_it() -> None:
    spec = _spec(gpuCount=1)
    plan = plan_replica_set(_obs(spec, _mine(spec, ("GPU-3",)), records=(_record(spec),),
                                 unhealthy_gpus=SICK))
    assert plan.actions == ()
    assert plan.status.phase == "Running"
    status, reason, message = _degraded(plan)
    assert (status, reason) == (True, "GPUUnhealthy")
    assert "GPU-3" in message
    # Every other GPU taken: a new instance waits rather than get the sick one.
    new = plan_replica_set(_obs(spec, _other("x", ("GPU-0", "GPU-1", "GPU-2")),
                                unhealthy_gpus=SICK))
    assert new.actions == ()
    assert "1 Unhealthy" in new.status.conditions[1].message


def test_replace_moves_to_a_healthy_gpu_as_a_new_revision_when_one_is_free() -> None:
    spec = _spec(gpuCount=1, gpuFailurePolicy="Replace")
    mine = _mine(spec, ("GPU-3",))
    plan = plan_replica_set(_obs(spec, mine, records=(_record(spec),), unhealthy_gpus=SICK))
    assert act.PreserveDisk in [type(a) for a in plan.actions]  # the disk is kept
    start = next(a for a in plan.actions if isinstance(a, act.StartRevision))
    assert isinstance(start, act.StartRevision)
    assert start.config.gpus == ("GPU-0",)
    assert start.record.change_cause.startswith("replacing an Unhealthy GPU")
    # None free: it runs on, Degraded.
    full = plan_replica_set(_obs(spec, mine, _other("x", ("GPU-0", "GPU-1", "GPU-2")),
                                 records=(_record(spec),), unhealthy_gpus=SICK))
    assert full.actions == ()
    assert _degraded(full)[:2] == (True, "GPUUnhealthy")


def test_a_container_that_lost_its_gpus_is_recreated_with_its_gpus() -> None:
    spec = _spec(gpuCount=1)
    plan = plan_replica_set(_obs(spec, _mine(spec, ("GPU-2",)), records=(_record(spec),),
                                 access_lost={"c1": "probe failed"}))
    assert act.PreserveDisk in [type(a) for a in plan.actions]
    start = next(a for a in plan.actions if isinstance(a, act.StartRevision))
    assert isinstance(start, act.StartRevision)
    assert start.config.gpus == ("GPU-2",)
    assert start.record.change_cause == "GPUAccessLost: probe failed"
