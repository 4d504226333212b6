"""Status conditions in the Kubernetes API conventions' shape."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from gpudock.api.reasons import Reason


class ConditionType(enum.StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SCHEDULED = Reason.SCHEDULED.value  # bound to a node (core/binding.py); same word


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: Reason
    message: str
    last_transition_time: str = ""
    observed_generation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": "True" if self.status else "False",
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedGeneration": self.observed_generation,
        }
