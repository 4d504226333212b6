"""Wake-ups of the per-resource daemons: one asyncio.Event per resource UID."""

from __future__ import annotations

import asyncio


class Wakeups:
    """One asyncio.Event per resource: set to make its daemon reconcile now."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, uid: str) -> asyncio.Event:
        return self._events.setdefault(uid, asyncio.Event())

    def wake(self, uid: str) -> None:
        """Wake the daemon of a resource; nothing when it has none here (yet): its
        first pass, when it starts, sees the change anyway."""
        event = self._events.get(uid)
        if event is not None:
            event.set()

    def running(self) -> frozenset[str]:
        """The UIDs of the resources whose daemon runs in this agent: each exists and
        is handled here (kopf stops a daemon when its resource is deleted or no
        longer handled by this node)."""
        return frozenset(self._events)

    def wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    def forget(self, uid: str) -> None:
        self._events.pop(uid, None)
