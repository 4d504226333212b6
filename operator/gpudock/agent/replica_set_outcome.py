"""What one reconcile of a GpuReplicaSet returns to the kopf layer: the status to
write, the events to post, and what the daemon should do next."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpudock.api.reasons import Reason


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: Reason
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    released: bool = False  # GPUs or ports may be free now: wake waiting resources
    recheck_after: float | None = None  # reconcile again this soon, whatever happens
    settled: bool = False  # nothing in progress, nothing wrong, nothing waited for
    # Why this node hands the binding back to the scheduler (it cannot run the
    # resource and holds nothing of it); None: it keeps it.
    hand_back: str | None = None
