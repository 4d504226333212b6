"""Time stamps as the status and Docker write them (RFC 3339, UTC, "Z")."""

from __future__ import annotations

import datetime


def parsed(stamp: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def seconds_between(earlier: str, later: str) -> float | None:
    """``later`` - ``earlier`` in seconds; None when either cannot be read."""
    first, second = parsed(earlier), parsed(later)
    if first is None or second is None:
        return None
    return (second - first).total_seconds()


def utc_now() -> str:
    """The clock of the agent and the scheduler: RFC 3339 UTC, to the second, as
    Kubernetes writes times."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
