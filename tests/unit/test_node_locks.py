"""The lock files of NodeLocks: every valid key gets one, and no two keys share it."""

from __future__ import annotations

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
