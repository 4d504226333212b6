"""Which daemons a freed GPU, port or volume wakes (agent/wakeups.py)."""

from __future__ import annotations

from gpudock.agent.wakeups import Wakeups


def test_a_release_wakes_the_unsettled_and_leaves_the_settled_asleep() -> None:
    wakeups = Wakeups()
    settled, waiting, new = (wakeups.event(uid) for uid in ("settled", "waiting", "new"))
    wakeups.note("settled", settled=True)
    wakeups.note("waiting", settled=False)
    wakeups.wake_unsettled()
    assert (settled.is_set(), waiting.is_set(), new.is_set()) == (False, True, True)


def test_a_resource_that_stops_being_settled_is_woken_again() -> None:
    wakeups = Wakeups()
    event = wakeups.event("a")
    wakeups.note("a", settled=True)
    wakeups.note("a", settled=False)
    wakeups.wake_unsettled()
    assert event.is_set()


def test_a_usable_volume_wakes_everyone_and_a_forgotten_daemon_nothing() -> None:
    wakeups = Wakeups()
    kept, gone = wakeups.event("kept"), wakeups.event("gone")
    wakeups.note("kept", settled=True)
    wakeups.forget("gone")
    wakeups.wake_all()
    assert kept.is_set()
    assert not gone.is_set()
    assert wakeups.running() == frozenset({"kept"})
