"""Conditions with stable transition times: a condition keeps its lastTransitionTime
while its status stays the same, as the Kubernetes API conventions ask."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gpudock.api.conditions import Condition, ConditionType
from gpudock.api.reasons import Reason


def condition(type_: ConditionType, status: bool, reason: Reason, message: str) -> Condition:
    return Condition(type=str(type_), status=status, reason=reason, message=message)


def with_transition_times(
    conditions: Iterable[Condition], previous: Sequence[Mapping[str, Any]], now: str,
    generation: int | None,
) -> tuple[Condition, ...]:
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    result = []
    for cond in conditions:
        old = before.get(cond.type)
        same = old is not None and old.get("status") == ("True" if cond.status else "False")
        since = str(old.get("lastTransitionTime") or now) if same and old else now
        result.append(Condition(cond.type, cond.status, cond.reason, cond.message, since,
                                generation))
    return tuple(result)
