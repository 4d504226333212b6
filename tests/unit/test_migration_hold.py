"""The source lets go of its copy only once the target has served the moved instance,
Ready without a break, for --migration-hold-seconds (docs/migration.md, "Safety"):
the rule, on a clock the test moves."""

from __future__ import annotations

from gpudock.agent.migration_switch import ServeWatch


def test_the_source_holds_until_the_target_has_served_for_the_hold() -> None:
    watch = ServeWatch(10.0)
    assert not watch.see(False, "None", 100.0, 0.0)      # not serving yet
    assert not watch.see(True, "t1", 105.0, 5.0)         # Ready: the count starts
    assert watch.first_served == 105.0                   # the downtime ends here
    assert not watch.see(True, "t1", 110.0, 14.9)
    assert watch.see(True, "t1", 115.0, 15.0)            # 10 s of serving


def test_a_break_or_a_new_ready_transition_starts_the_count_again() -> None:
    watch = ServeWatch(10.0)
    assert not watch.see(True, "t1", 100.0, 0.0)
    assert not watch.see(False, "None", 108.0, 8.0)      # it dropped Ready there
    assert not watch.see(True, "t2", 109.0, 9.0)
    assert not watch.see(True, "t3", 118.0, 18.0)        # restarted there meanwhile
    assert not watch.see(True, "t3", 127.0, 27.9)
    assert watch.see(True, "t3", 128.0, 28.0)
    assert watch.first_served == 100.0                   # the first Ready stays


def test_no_hold_lets_go_at_the_first_sight_of_serving() -> None:
    watch = ServeWatch(0.0)  # a Stopped instance: Stopped there is enough
    assert not watch.see(False, "None", 1.0, 1.0)
    assert watch.see(True, "None", 2.0, 2.0)


def test_the_downtime_ends_at_the_first_sight_or_at_the_targets_ready_time() -> None:
    """After a restart of the source's agent, its first sight of the instance served
    is late: the end of the downtime is then the target's Ready transition (written
    in whole seconds, so at most 1 s late)."""
    watch = ServeWatch(10.0)
    watch.see(True, "2026-12-07T10:00:00Z", 1796637600.4, 0.0)
    assert watch.served_at() == 1796637600.4              # seen within that second
    restarted = ServeWatch(10.0)
    restarted.see(True, "2026-12-07T10:00:00Z", 1796637630.0, 0.0)
    assert restarted.served_at() == 1796637601.0          # not the restart's 30 s later
