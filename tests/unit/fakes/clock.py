"""A clock the tests move by hand: the reconcilers' ``now`` and Docker's time stamps."""

from __future__ import annotations

import datetime

START = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


class FixedClock:
    def __init__(self, start: datetime.datetime = START) -> None:
        self._now = start

    def now(self) -> str:
        return self._now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def advance(self, seconds: float) -> None:
        self._now += datetime.timedelta(seconds=seconds)
