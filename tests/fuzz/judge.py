"""What became of an object the API server accepted, read from its status alone.

``outcome`` answers ``None`` while the object is still on its way (no status yet, or
only a step under way); else a short label: ``running`` (Ready=True),
``condition(<reason>)``, ``<phase>(<reason>)`` for the one-shot kinds. At the deadline
``final`` gives the label of whatever reason it has, or ``None`` when it has none: an
accepted spec left without a condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Reasons of a step under way: wait for what follows them.
UNDER_WAY = {"Creating", "Pulling", "Pulled", "Reconciling", "RollingOut", "RollingBack",
             "Recording", "Adopting", "Cleaning", "Stopping", "Retrying", "Attaching",
             "Copying", "Growing", "Shrinking", "Scheduled", "Committing", "Running",
             "Migrating", "DockerUnavailable", "ApiServerUnavailable"}
REQUEST_DONE = {"Succeeded", "Completed", "Failed", "Cancelled"}  # Completed: an exec
READY_KINDS = {"GpuReplicaSet", "SizedVolume"}
REQUEST_KINDS = {"ExecRequest", "ImageCommit", "GpuMigration"}


def conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = obj.get("status") or {}
    return {str(c.get("type")): c for c in status.get("conditions") or ()
            if isinstance(c, Mapping)}


def reason_of(obj: Mapping[str, Any]) -> str | None:
    """The reason the status gives: status.reason, else the first condition's that is
    not True-and-fine (Ready, Degraded, Progressing, Scheduled, Stalled in turn)."""
    status = obj.get("status") or {}
    if status.get("reason"):
        return str(status["reason"])
    found = conditions(obj)
    for kind in ("Ready", "Degraded", "Stalled", "Scheduled", "Progressing", "Reconciling"):
        cond = found.get(kind)
        if cond and cond.get("reason"):
            return str(cond["reason"])
    for cond in found.values():
        if cond.get("reason"):
            return str(cond["reason"])
    return None


def outcome(kind: str, obj: Mapping[str, Any]) -> str | None:
    """The settled outcome, or None while it is still under way."""
    status = obj.get("status") or {}
    if kind in REQUEST_KINDS:
        phase = status.get("phase")
        if phase in REQUEST_DONE:
            return f"{phase}({reason_of(obj) or '-'})"
        return None
    ready = conditions(obj).get("Ready") or {}
    if ready.get("status") == "True":
        return "running" if kind == "GpuReplicaSet" else "ready"
    reason = reason_of(obj)
    if reason is None or reason in UNDER_WAY:
        return None
    return f"condition({reason})"


def final(kind: str, obj: Mapping[str, Any]) -> str | None:
    """At the deadline: the outcome, else the reason shown so far, else None."""
    settled = outcome(kind, obj)
    if settled is not None:
        return settled
    reason = reason_of(obj)
    if reason is None:
        return None
    phase = (obj.get("status") or {}).get("phase")
    return f"{phase}({reason})" if kind in REQUEST_KINDS else f"condition({reason})"
