"""Slots for the one-shot requests (ExecRequest, ImageCommit) on this node.

A running request holds a thread of the request pool (wiring.NodeAgent.request_pool,
never the pool the reconciles and the heartbeat use) for as long as its command or
commit runs: up to timeoutSeconds, an hour. So that no tenant can take what others
need, a request runs only with a slot: at most ``total`` requests run on the node (the
pool's size, so a running request always has its thread), and at most
``per_namespace`` ExecRequests of one namespace. A request without a slot waits
(asynchronously: it holds no thread) and is Pending with the reason; slots are handed
out in the order requests asked for them, skipping those whose namespace is still
full, as soon as one is given back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from gpudock.api.reasons import Reason


@dataclass(frozen=True)
class Wait:
    """Why a request cannot start now."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class Claim:
    """One request's slot: its namespace, and whether the namespace's cap counts it
    (ExecRequests; ImageCommits take only a slot of the node)."""

    namespace: str
    capped: bool


@dataclass
class _Waiter:
    claim: Claim
    granted: asyncio.Future[None]


@dataclass
class RequestSlots:
    total: int  # requests running on the node at once (the pool's threads)
    per_namespace: int  # ExecRequests of one namespace running at once
    _running: int = 0
    _by_namespace: Counter[str] = field(default_factory=Counter)
    _waiting: list[_Waiter] = field(default_factory=list)

    def running(self, namespace: str | None = None) -> int:
        """Requests holding a slot (ExecRequests of ``namespace``, when given)."""
        return self._running if namespace is None else self._by_namespace[namespace]

    def waiting(self) -> int:
        return sum(not w.granted.done() for w in self._waiting)

    def why_not(self, claim: Claim) -> Wait | None:
        """Why ``claim`` cannot have a slot now; None when it can."""
        if claim.capped and self._by_namespace[claim.namespace] >= self.per_namespace:
            return Wait(Reason.EXEC_LIMIT_REACHED, (
                f"{self.per_namespace} ExecRequests of namespace {claim.namespace} run on "
                f"this node already (--max-running-execs-per-namespace "
                f"{self.per_namespace}); this one starts when one of them ends"))
        if self._running >= self.total:
            return Wait(Reason.REQUEST_LIMIT_REACHED, (
                f"{self.total} ExecRequests and ImageCommits run on this node already "
                f"(--max-running-requests {self.total}); this one starts when one ends"))
        return None

    def try_take(self, claim: Claim) -> Wait | None:
        """Take a slot if one is free now (None); otherwise why not, and nothing taken."""
        why = self.why_not(claim)
        if why is None:
            self._add(claim)
        return why

    async def take(self, claim: Claim) -> None:
        """Wait for a slot, and take it. Cancelled while waiting, it takes none."""
        if self.try_take(claim) is None:
            return
        waiter = _Waiter(claim, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self.give_back(claim)  # granted just as it was cancelled
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def give_back(self, claim: Claim) -> None:
        """The request ended: its slot goes to the first waiting one that may have it."""
        self._running -= 1
        if claim.capped:
            self._by_namespace[claim.namespace] -= 1
            if self._by_namespace[claim.namespace] <= 0:
                del self._by_namespace[claim.namespace]
        for waiter in list(self._waiting):
            if waiter.granted.done():
                self._waiting.remove(waiter)
            elif self.why_not(waiter.claim) is None:
                self._add(waiter.claim)
                waiter.granted.set_result(None)
                self._waiting.remove(waiter)

    def _add(self, claim: Claim) -> None:
        self._running += 1
        if claim.capped:
            self._by_namespace[claim.namespace] += 1
