"""The SizedVolume decisions (core/volumes.py) on plain observed values."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gpudock.core import volumes as core
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.volume_revision import VolumeRevision

MiB = 2**20
KEY = ResourceKey("ns", "data")
LOOPFILE = core.Backend("loopfile", "/v")
BTRFS = core.Backend("btrfs", "/b", online_shrink=True)
COPY = core.Backend("copy", "/c", moves_on_resize=True)
USER = ObservedContainer("c1", "ns_user-1", "running", owner=ResourceKey("ns", "user"),
                         volumes={"/data": "ns_data-svol-u"})


def _record(revision: int = 1, size: int = 64 * MiB, volume: str = "ns_data-svol-u",
            backend: core.Backend = LOOPFILE) -> VolumeRevision:
    return VolumeRevision("ns", "data", revision, "u", backend.name, backend.root, volume,
                          size, "t0")


def _obs(size: int, state: core.BackendState | None, **kw: Any) -> core.VolumeObservation:
    base: dict[str, Any] = dict(key=KEY, uid="u", generation=1, size_bytes=size,
                                backend=LOOPFILE, records=(_record(),),
                                volume_id="ns_data-svol-u", state=state,
                                docker_volume_exists=True, now="t1")
    base.update(kw)
    return core.VolumeObservation(**base)


def _attached(size: int, used: int = 10 * MiB) -> core.BackendState:
    return core.BackendState(size, True, size - 4 * MiB, used)


def test_the_steps_in_order() -> None:
    first = core.plan_volume(_obs(64 * MiB, None, records=(), free_bytes=10**12))
    unmade = replace(_record(), created_at="t1", change_cause="created", generation=1,
                     made=False)
    assert first.actions == (core.RecordVolume(unmade),)
    room = core.plan_volume(_obs(64 * MiB, None, records=(), free_bytes=MiB))
    assert (room.actions, room.status["reason"]) == ((), "InsufficientSpace")
    assert core.plan_volume(_obs(64 * MiB, None, records=(unmade,))).actions == (
        core.CreateVolume("ns_data-svol-u", 64 * MiB),)
    assert core.plan_volume(_obs(64 * MiB, _attached(64 * MiB),
                                 records=(unmade,))).actions == (
        core.RecordVolume(replace(unmade, made=True)),)
    detached = core.BackendState(64 * MiB, False)
    assert core.plan_volume(_obs(64 * MiB, detached)).actions == (
        core.AttachVolume("ns_data-svol-u"),)
    assert core.plan_volume(_obs(64 * MiB, _attached(64 * MiB),
                                 docker_volume_exists=False)).actions == (
        core.CreateDockerVolume("ns_data-svol-u"),)
    ready = core.plan_volume(_obs(64 * MiB, _attached(64 * MiB)))
    assert (ready.actions, ready.status["phase"], ready.status["volumeName"],
            ready.status["revision"]) == ((), "Ready", "ns_data-svol-u", 1)


def test_a_volume_made_and_gone_is_lost_not_made_again_empty() -> None:
    lost = core.plan_volume(_obs(64 * MiB, None))  # its record says it was made
    assert lost.actions == ()
    assert (lost.status["phase"], lost.status["reason"]) == ("Failed", "VolumeLost")
    assert "not mounted" in lost.status["conditions"][2].message


def test_grow_and_shrink_in_place() -> None:
    grow = core.plan_volume(_obs(256 * MiB, _attached(64 * MiB), consumers=(USER,)))
    assert grow.actions == (core.ResizeVolume("ns_data-svol-u", 256 * MiB, True,
                                              (("c1", "ns_user-1"),)),)
    assert grow.status["phase"] == "Resizing"
    ask = core.plan_volume(_obs(32 * MiB, _attached(256 * MiB, 100 * MiB)))
    assert ask.needs_minimum  # the backend is asked how small it can get
    refused = core.plan_volume(_obs(32 * MiB, _attached(256 * MiB, 100 * MiB),
                                    minimum_bytes=120 * MiB))
    assert refused.actions == ()
    assert refused.status["reason"] == "ShrinkBelowUsage"
    assert refused.status["phase"] == "Ready"  # it still serves, unchanged
    shrink = core.plan_volume(_obs(192 * MiB, _attached(256 * MiB, 100 * MiB),
                                   minimum_bytes=120 * MiB, consumers=(USER,)))
    assert shrink.actions == (core.ResizeVolume("ns_data-svol-u", 192 * MiB, False,
                                                (("c1", "ns_user-1"),)),)
    assert shrink.status["consumers"] == ["user"]
    limit = core.plan_volume(_obs(192 * MiB, _attached(256 * MiB, 100 * MiB), backend=BTRFS,
                                  minimum_bytes=100 * MiB, consumers=(USER,)))
    assert limit.actions[0] == core.ResizeVolume("ns_data-svol-u", 192 * MiB, True,
                                                 (("c1", "ns_user-1"),))


def test_a_real_size_is_recorded_as_the_next_revision() -> None:
    plan = core.plan_volume(_obs(256 * MiB, _attached(256 * MiB)))
    assert len(plan.actions) == 1
    action = plan.actions[0]
    assert isinstance(action, core.RecordVolume)
    assert (action.record.revision, action.record.size_bytes, action.record.change_cause) \
        == (2, 256 * MiB, "resized to 256Mi")
    done = core.plan_volume(_obs(256 * MiB, _attached(256 * MiB),
                                 records=(_record(), _record(2, 256 * MiB))))
    assert done.actions == ()
    assert [h["revision"] for h in done.status["history"]] == [1, 2]


def test_the_copy_backend_moves_to_a_new_volume_and_removes_the_old_when_unused() -> None:
    first = _record(1, 64 * MiB, "ns_data-1", COPY)
    user = replace(USER, volumes={"/data": "ns_data-1"})
    obs = _obs(128 * MiB, _attached(64 * MiB, 30 * MiB), backend=COPY, records=(first,),
               volume_id="ns_data-1", consumers=(user,), minimum_bytes=30 * MiB)
    move = core.plan_volume(obs).actions
    assert len(move) == 1
    assert isinstance(move[0], core.MoveVolume)
    assert (move[0].source, move[0].target, move[0].consumers) == (
        "ns_data-1", "ns_data-2", (("c1", "ns_user-1"),))
    assert move[0].record.volume_id == "ns_data-2"
    too_small = core.plan_volume(replace(obs, size_bytes=16 * MiB))
    assert too_small.status["reason"] == "ShrinkBelowUsage"
    second = _record(2, 128 * MiB, "ns_data-2", COPY)
    after = replace(obs, records=(first, second), volume_id="ns_data-2", consumers=(),
                    state=_attached(128 * MiB), earlier=(("ns_data-1", (user,)),))
    assert core.plan_volume(after).actions == ()  # the user has not moved yet
    moved = replace(after, earlier=(("ns_data-1", ()),))
    assert core.plan_volume(moved).actions == (core.RemoveDockerVolume("ns_data-1"),)


def test_28_2_a_volume_recorded_but_not_made_is_made_only_where_it_fits() -> None:
    unmade = replace(_record(), made=False)
    refused = core.plan_volume(_obs(64 * MiB, None, records=(unmade,), free_bytes=32 * MiB))
    assert refused.actions == ()
    assert (refused.status["phase"], refused.status["reason"]) == ("Failed",
                                                                  "InsufficientSpace")
    message = refused.status["conditions"][2].message
    assert "64Mi asked" in message
    assert "32" in message
    made = core.plan_volume(_obs(64 * MiB, None, records=(unmade,), free_bytes=64 * MiB))
    assert made.actions == (core.CreateVolume("ns_data-svol-u", 64 * MiB),)


def test_28_2_a_filesystem_gone_read_only_is_not_ready_and_not_resized() -> None:
    broken = replace(_attached(64 * MiB), fault="its filesystem (/dev/loop7) is read-only")
    plan = core.plan_volume(_obs(256 * MiB, broken, consumers=(USER,)))
    assert plan.actions == ()  # not grown either
    assert (plan.status["phase"], plan.status["reason"]) == ("Failed",
                                                            "VolumeFilesystemFailed")
    ready, _, degraded = plan.status["conditions"]
    assert (ready.status, degraded.status) == (False, True)
    assert "/dev/loop7" in degraded.message
