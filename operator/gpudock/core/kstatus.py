"""The conditions GitOps tools read, derived from what a status already says, for
every kind: ``Ready``, ``Reconciling`` and ``Stalled`` (kstatus, as Flux's health
checks and ``kubectl wait --for=condition=Ready`` read them), each with the
``observedGeneration`` of what it was derived from.

- GpuReplicaSet and SizedVolume: ``Ready`` is theirs; ``Reconciling`` is
  ``Progressing`` (a change being applied, or waiting for the node); ``Stalled`` is
  ``Degraded`` (what needs the user: a refused change, a crash loop, a node gone).
- ExecRequest and ImageCommit (one-shot): ``Ready`` once done (Completed,
  Succeeded), ``Reconciling`` while Pending or Running, ``Stalled`` when Failed.
- GpuNode: ``Ready`` is its own; ``Reconciling`` never; ``Stalled`` when not Ready.

Pure: a function of the status to be written, applied by the agent to every status
it writes (status_writer.py and the request and node writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpudock.api.reasons import Reason

DERIVED = ("Reconciling", "Stalled")
DONE = ("Completed", "Succeeded")
UNDER_WAY = ("Pending", "Running")


def with_kstatus(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` with Ready (where the kind has none of its own), Reconciling and
    Stalled; a status without conditions is returned as it is."""
    raw = [dict(c) for c in status.get("conditions") or () if isinstance(c, Mapping)]
    if not raw:
        return dict(status)
    own = [c for c in raw if c.get("type") not in DERIVED]
    found = {str(c.get("type")): c for c in own}
    generation = status.get("observedGeneration")
    if "Progressing" in found or "Degraded" in found:  # GpuReplicaSet, SizedVolume
        derived = [_like("Reconciling", found.get("Progressing"), Reason.RECONCILE_COMPLETE),
                   _like("Stalled", found.get("Degraded"), Reason.AS_EXPECTED)]
    elif "Complete" in found:  # ExecRequest, ImageCommit
        derived = _request(status, found["Complete"])
    elif "Ready" in found:  # GpuNode
        ready = found["Ready"]
        derived = [_like("Reconciling", None, Reason.RECONCILE_COMPLETE),
                   {**ready, "type": "Stalled",
                    "status": "False" if ready.get("status") == "True" else "True"}]
    else:
        return dict(status)
    conditions = [*own, *(c for c in derived if c["type"] not in found)]
    if generation is not None:
        for cond in conditions:
            if cond.get("observedGeneration") is None:
                cond["observedGeneration"] = generation
    return {**status, "conditions": conditions}


def _like(kind: str, source: Mapping[str, Any] | None, otherwise: Reason) -> dict[str, Any]:
    """A condition of type ``kind`` that says what ``source`` says (False when none)."""
    if source is None:
        return {"type": kind, "status": "False", "reason": str(otherwise),
                "message": "nothing to report"}
    return {**source, "type": kind}


def _request(status: Mapping[str, Any], complete: Mapping[str, Any]) -> list[dict[str, Any]]:
    phase = str(status.get("phase") or "Pending")
    base = {k: v for k, v in complete.items() if k not in ("type", "status")}

    def cond(kind: str, true: bool) -> dict[str, Any]:
        return {**base, "type": kind, "status": "True" if true else "False"}

    return [cond("Ready", phase in DONE), cond("Reconciling", phase in UNDER_WAY),
            cond("Stalled", phase == "Failed")]
