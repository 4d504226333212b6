"""What a node's agent writes of a resource's binding: ``status.nodeName`` (its node,
shown in the NODE column; the scheduler wrote it first for an unpinned resource, the
agent writes the same value for a pinned one) and ``Scheduled=True``.

Every status the agent writes names every condition it keeps, and a merge patch
replaces the whole list: the Scheduled condition the scheduler wrote would be lost
without this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpudock.api.conditions import ConditionType
from gpudock.api.reasons import Reason

SCHEDULED = str(ConditionType.SCHEDULED)


def with_binding(status: Mapping[str, Any], previous: Mapping[str, Any], node: str,
                 now: str) -> dict[str, Any]:
    """``status`` bound to ``node``: nodeName set, Scheduled=True (its transition time
    kept from ``previous`` when it said so already)."""
    conditions = [c for c in status.get("conditions") or ()
                  if isinstance(c, Mapping) and c.get("type") != SCHEDULED]
    old = next((c for c in previous.get("conditions") or ()
                if isinstance(c, Mapping) and c.get("type") == SCHEDULED), None)
    since = str(old.get("lastTransitionTime") or now) \
        if old is not None and old.get("status") == "True" else now
    conditions.append({"type": SCHEDULED, "status": "True", "reason": Reason.SCHEDULED,
                       "message": f"bound to node {node}", "lastTransitionTime": since})
    return {**status, "nodeName": node, "conditions": conditions}
