"""The lock files of NodeLocks: every valid key gets one, and no two keys share it."""

from __future__ import annotations

import threading
from pathlib import Path

from gpudock.agent.node_locks import NodeLocks
from gpudock.core.observed import ResourceKey


def test_the_longest_namespace_and_name_get_their_own_lock_file(tmp_path: Path) -> None:
    locks = NodeLocks(tmp_path)
    namespace = "n" * 63
    first = ResourceKey(namespace, "g" * 253)
    second = ResourceKey(namespace, "g" * 252 + "h")
    with locks.resource(first), locks.resource(second):
        files = sorted(p.name for p in (tmp_path / "locks").iterdir())
    assert len(files) == 2
    assert all(len(name.encode()) <= 255 for name in files)


def test_short_keys_keep_a_readable_file_name(tmp_path: Path) -> None:
    with NodeLocks(tmp_path).resource(ResourceKey("team-a", "lab")):
        assert [p.name for p in (tmp_path / "locks").iterdir()] == ["team-a.lab"]


def test_a_resource_lock_is_forgotten_once_no_thread_holds_or_waits_for_it(
        tmp_path: Path) -> None:
    # Found reading the code for the soak's slow RSS growth: one entry per name
    # ever reconciled, never dropped.
    locks = NodeLocks(tmp_path)
    key = ResourceKey("soak", "soak-1")
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def hold(who: str) -> None:
        with locks.resource(key):
            order.append(who)
            inside.set()
            release.wait(5)

    first = threading.Thread(target=hold, args=("first",))
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=hold, args=("second",))
    second.start()
    assert locks.held() == 1
    release.set()
    first.join(5)
    second.join(5)
    assert order == ["first", "second"]    # the waiter got the same lock, in turn
    assert locks.held() == 0
    for n in range(100):
        with locks.resource(ResourceKey("soak", f"soak-{n}")):
            pass
    assert locks.held() == 0
