"""The crash points' names (the agent dying at them is shown by the crash trials)."""

from __future__ import annotations

import pytest

from gpudock.crash_points import INSIDE_STEPS, POINTS, STEPS, CrashPoints, check
from gpudock.crash_points import UnknownCrashPointError as Unknown


def test_every_step_has_a_before_and_an_after_point() -> None:
    assert {"StopContainer", "PreserveDisk", "StartRevision", "RemoveContainer",
            "WriteSpec"} <= set(STEPS)
    for step in STEPS:
        assert {f"{step}.before", f"{step}.after"} <= POINTS
    assert {point.split(".")[0] for point in INSIDE_STEPS} <= set(STEPS)


def test_an_unknown_point_is_refused_by_name() -> None:
    assert check(["WriteSpec.after"]) == ("WriteSpec.after",)
    with pytest.raises(Unknown, match=r"'StopContainer\.during'"):
        CrashPoints(["StopContainer.during"])


def test_points_not_armed_do_nothing() -> None:
    points = CrashPoints(["WriteSpec.after"])
    for point in sorted(POINTS - {"WriteSpec.after"}):
        points.reach(point)  # still alive
