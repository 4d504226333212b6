"""The SizedVolume decisions (core/volumes.py) on plain observed values."""

from __future__ import annotations

from typing import Any

from gpudock.core import volumes as core
from gpudock.core.observed import ObservedContainer, ResourceKey

MiB = 2**20
KEY = ResourceKey("ns", "data")


def _obs(size: int, state: core.BackendState | None, **kw: Any) -> core.VolumeObservation:
    base: dict[str, Any] = dict(key=KEY, uid="u", generation=1, size_bytes=size,
                                backend="loopfile", volume_id="ns_data-svol-u",
                                state=state, docker_volume_exists=True)
    base.update(kw)
    return core.VolumeObservation(**base)


def _attached(size: int, used: int = 10 * MiB) -> core.BackendState:
    return core.BackendState(size, True, size - 4 * MiB, used)


def test_the_steps_in_order() -> None:
    assert core.plan_volume(_obs(64 * MiB, None, free_bytes=10**12)).actions == (
        core.CreateVolume("ns_data-svol-u", 64 * MiB),)
    room = core.plan_volume(_obs(64 * MiB, None, free_bytes=MiB))
    assert (room.actions, room.status["reason"]) == ((), "InsufficientSpace")
    detached = core.BackendState(64 * MiB, False)
    assert core.plan_volume(_obs(64 * MiB, detached)).actions == (
        core.AttachVolume("ns_data-svol-u"),)
    assert core.plan_volume(_obs(64 * MiB, _attached(64 * MiB),
                                 docker_volume_exists=False)).actions == (
        core.CreateDockerVolume("ns_data-svol-u"),)
    ready = core.plan_volume(_obs(64 * MiB, _attached(64 * MiB)))
    assert (ready.actions, ready.status["phase"], ready.status["volumeName"]) == (
        (), "Ready", "ns_data-svol-u")


def test_grow_and_shrink() -> None:
    user = ObservedContainer("c1", "ns_user-1", "running", owner=ResourceKey("ns", "user"),
                             volumes={"/data": "ns_data-svol-u"})
    grow = core.plan_volume(_obs(256 * MiB, _attached(64 * MiB), consumers=(user,)))
    assert grow.actions == (core.GrowVolume("ns_data-svol-u", 256 * MiB,
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
                                   minimum_bytes=120 * MiB, consumers=(user,)))
    assert shrink.actions == (core.ShrinkVolume("ns_data-svol-u", 192 * MiB,
                                                (("c1", "ns_user-1"),)),)
    assert shrink.status["consumers"] == ["user"]
