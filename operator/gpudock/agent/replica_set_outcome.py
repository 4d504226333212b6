"""What one reconcile of a GpuReplicaSet returns to the kopf layer: the status to
write, the events to post, and what the daemon should do next; and the problem a
status reports (what a Warning event is posted for)."""

from __future__ import annotations

from collections.abc import Iterable
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


WAITING = (Reason.INSUFFICIENT_GPUS, Reason.VOLUME_NOT_READY)  # Progressing, waiting


def problem_of(conditions: Iterable[tuple[str, bool, str, str]]) -> tuple[str, str] | None:
    """The problem a status reports, (reason, message), from its conditions (type,
    status, reason, message): Degraded (a crash loop, a change the user must fix), a
    change that cannot be applied, or waiting for the node (GPUs, a volume)."""
    found = {kind: (status, reason, message) for kind, status, reason, message in conditions}
    degraded, progressing = found.get("Degraded"), found.get("Progressing")
    if degraded is not None and degraded[0]:
        return degraded[1], degraded[2]
    if progressing is not None and (progressing[1] in WAITING if progressing[0] else
                                    progressing[1] != Reason.RECONCILE_COMPLETE):
        return progressing[1], progressing[2]
    return None
