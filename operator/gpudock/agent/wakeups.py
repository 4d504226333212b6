"""Wake-ups of the per-resource daemons: one asyncio.Event per resource UID.

When GPUs, ports or a volume come free, only the resources that are not settled
(waiting for the node, failing, or not yet through a first pass) are woken: a
GpuReplicaSet that runs as its spec says has nothing to gain from another look, and
waking every daemon of a busy node after each update made each update cost a pass of
all. SizedVolumes never count as settled (an earlier Docker volume is removed once
its last user has moved off it, which a release may be).
"""

from __future__ import annotations

import asyncio


class Wakeups:
    """One asyncio.Event per resource: set to make its daemon reconcile now."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._settled: set[str] = set()

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

    def note(self, uid: str, *, settled: bool) -> None:
        """What the resource's last pass found: settled (nothing in progress, nothing
        wrong, nothing waited for) or not."""
        if settled:
            self._settled.add(uid)
        else:
            self._settled.discard(uid)

    def wake_unsettled(self) -> None:
        """Something came free on the node: wake every resource that may want it."""
        for uid, event in self._events.items():
            if uid not in self._settled:
                event.set()

    def wake_all(self) -> None:
        """Wake every daemon (a SizedVolume became usable: instances that mount it may
        have to move onto it, settled or not; Docker's event stream is back after a
        break, whose events were lost)."""
        for event in self._events.values():
            event.set()

    def forget(self, uid: str) -> None:
        self._events.pop(uid, None)
        self._settled.discard(uid)
