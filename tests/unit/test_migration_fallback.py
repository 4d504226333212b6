"""When the source takes a moved instance back (docs/migration.md, "Falling back"):
the target wrote that it cannot run it, not Ready, for --migration-hold-seconds in a
row. The rule, on a clock the test moves; the agents' parts are in
tests/integration/test_migration_fallback.py."""

from __future__ import annotations

from typing import Any

import pytest

from gpudock.agent.migration_fallback import (
    FailingWatch,
    TargetFailedError,
    failing,
    fallback_after,
)


def _status(*conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {"conditions": [{"type": t, "status": s, "reason": r, "message": f"{r} said"}
                           for t, s, r in conditions]}


CRASHING = _status(("Ready", "False", "CrashLoop"), ("Degraded", "True", "CrashLoop"),
                   ("Progressing", "False", "ReconcileComplete"))


def test_a_crash_loop_there_is_a_failure() -> None:
    assert failing(CRASHING) == ("CrashLoop", "CrashLoop said")


def test_waiting_for_gpus_there_is_a_failure() -> None:
    status = _status(("Ready", "False", "ContainerNotRunning"),
                     ("Progressing", "True", "InsufficientGPUs"),
                     ("Degraded", "False", "AsExpected"))
    assert failing(status) == ("InsufficientGPUs", "InsufficientGPUs said")


def test_a_target_at_work_or_serving_is_not_failing() -> None:
    creating = _status(("Ready", "False", "ContainerNotRunning"),
                       ("Progressing", "True", "Creating"), ("Degraded", "False", "AsExpected"))
    assert failing(creating) is None
    degraded_but_serving = _status(("Ready", "True", "ContainerRunning"),
                                   ("Degraded", "True", "GPUUnhealthy"))
    assert failing(degraded_but_serving) is None


def test_the_sources_own_status_is_not_the_targets_word() -> None:
    """Until the target writes, Ready is the source's Migrating, and the rest is what
    the source wrote (a pinned move's Degraded NodeNameChanged): not a failure."""
    switched = _status(("Ready", "False", "Migrating"), ("Degraded", "True", "NodeNameChanged"))
    assert failing(switched) is None
    assert failing({}) is None


def test_the_source_takes_it_back_after_the_hold_without_a_break() -> None:
    watch = FailingWatch()
    watch.see(("CrashLoop", "m"), 0.0, 10.0)
    watch.see(("CrashLoop", "m"), 9.9, 10.0)
    with pytest.raises(TargetFailedError) as raised:
        watch.see(("CrashLoop", "m"), 10.0, 10.0)
    assert (raised.value.target_reason, raised.value.target_message) == ("CrashLoop", "m")
    assert raised.value.reason == "TargetFailed"


def test_a_break_starts_the_count_again() -> None:
    watch = FailingWatch()
    watch.see(("CrashLoop", "m"), 0.0, 10.0)
    watch.see(None, 8.0, 10.0)  # it ran there for a moment
    watch.see(("CrashLoop", "m"), 9.0, 10.0)
    watch.see(("CrashLoop", "m"), 18.9, 10.0)
    with pytest.raises(TargetFailedError):
        watch.see(("CrashLoop", "m"), 19.0, 10.0)


def test_the_targets_dependencies_away_are_not_its_failure() -> None:
    """Its Docker or store not answering: it could not give the instance back anyway."""
    for reason in ("DockerUnavailable", "RevisionStoreUnavailable", "ApiServerUnavailable"):
        status = _status(("Ready", "Unknown", "DockerUnavailable"),
                         ("Progressing", "False", reason), ("Degraded", "False", "AsExpected"))
        assert failing(status) is None, reason


def test_no_address_for_it_there_is_a_failure() -> None:
    status = _status(("Ready", "False", "ContainerNotRunning"),
                     ("Progressing", "True", "AddressesExhausted"))
    assert failing(status) == ("AddressesExhausted", "AddressesExhausted said")


def test_one_restart_that_recovers_is_not_long_enough() -> None:
    """Docker's restart shows CrashLoop for STABLE_SECONDS (10 s); the source waits
    longer than that (and at least --migration-hold-seconds)."""
    assert fallback_after(10.0) == 20.0
    assert fallback_after(60.0) == 60.0
    assert fallback_after(0.0) == 20.0


def test_a_silent_target_agent_is_not_a_failure_of_the_target() -> None:
    """Other agents write NodeNotReady for it: it could not give the instance back
    before it answers, and it may well serve it once it does."""
    status = _status(("Ready", "Unknown", "NodeNotReady"), ("Degraded", "True", "NodeNotReady"))
    assert failing(status) is None
