"""The agent dying at a crash point, inside one test process.

``--crash-at POINT`` makes the agent SIGKILL itself there (crash_points.py). Here the
kill raises :class:`AgentKilled` instead: a BaseException, so no ``except Exception``
of the agent or of the fake Docker catches it (as nothing runs after a SIGKILL); the
test then starts a fresh agent over the same fake Docker, store and API server."""

from __future__ import annotations

import os

import pytest

from gpudock import crash_points


class AgentKilled(BaseException):
    """The agent process was killed at an armed crash point."""


class _KillingOs:
    """What crash_points uses of ``os``: its own pid, and a kill that raises."""

    @staticmethod
    def getpid() -> int:
        return os.getpid()

    @staticmethod
    def kill(pid: int, signal: int) -> None:
        raise AgentKilled(f"signal {signal} to {pid}")


def kill_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crash_points, "os", _KillingOs())
