"""When a change is done: the answer of a call comes once the resource's status says
its change was applied (or refused), bounded by --wait-seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from gpudock.adapters.kube_api import KubeApi
from gpudock.api.reasons import Reason
from gpudock.errors import NotFoundError

# A wait that is still under way; a string is a refusal (gpudock's reason).
PENDING = None
DONE = ""
_WAITING = {str(Reason.INSUFFICIENT_GPUS), str(Reason.ADDRESSES_EXHAUSTED),
            str(Reason.VOLUME_NOT_READY)}
_HARMLESS = {str(Reason.AS_EXPECTED), str(Reason.DRIFT_REPAIRED), str(Reason.CRASH_LOOP)}
POLL_SECONDS = 0.1

Verdict = Callable[[Mapping[str, Any] | None], str | None]


def conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or ()}


def _observed(obj: Mapping[str, Any], generation: int) -> bool:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    seen = status.get("observedGeneration") or 0
    return bool(seen >= generation and seen >= (meta.get("generation") or 0))


def replica_set_settled(generation: int, state: str, after_revision: int | None = None,
                        spec_changed: bool = True) -> Verdict:
    """DONE once the status describes ``generation`` (or later), nothing is left to do
    and the phase is ``state`` (Running, Paused, Stopped); the reason when refused
    (Degraded, or waiting for GPUs or addresses); PENDING otherwise. With
    ``after_revision`` (a new version asked for: a gpudock.dev/redeploy value), DONE
    only once a revision after it is the current one, and its failure (a revision
    after it that never ran) is the refusal; when the change is only that annotation
    (``spec_changed`` False: no new generation), the conditions are judged only once
    the new revision is there (until then they can be the previous change's)."""
    def verdict(obj: Mapping[str, Any] | None) -> str | None:
        if obj is None:
            return "NotFound"
        if not _observed(obj, generation) or (obj.get("spec") or {}).get("rollbackTo"):
            return PENDING
        status = obj.get("status") or {}
        behind = after_revision is not None and \
            int(status.get("revision") or 0) <= after_revision
        if behind:
            failed = next((h for h in status.get("history") or ()
                           if int(h.get("revision") or 0) > (after_revision or 0)
                           and h.get("failed")), None)
            if failed is not None:
                return str(failed["failed"]).split(":", 1)[0]
            if not spec_changed:
                return PENDING
        found = conditions(obj)
        degraded, progressing = found.get("Degraded", {}), found.get("Progressing", {})
        if degraded.get("status") == "True" and degraded.get("reason") not in _HARMLESS:
            return str(degraded.get("reason"))
        if progressing.get("status") == "True" and progressing.get("reason") in _WAITING:
            return str(progressing.get("reason"))
        phase = status.get("phase")
        running = state == "Running" and phase in ("Running", "CrashLoop")
        if progressing.get("status") == "False" and (running or phase == state) \
                and not behind:
            return DONE
        return PENDING
    return verdict


def volume_settled(generation: int, size_bytes: int | None = None) -> Verdict:
    def verdict(obj: Mapping[str, Any] | None) -> str | None:
        if obj is None:
            return "NotFound"
        if not _observed(obj, generation):
            return PENDING
        found = conditions(obj)
        degraded = found.get("Degraded", {})
        if degraded.get("status") == "True":
            return str(degraded.get("reason"))
        status = obj.get("status") or {}
        if found.get("Ready", {}).get("status") == "True" and \
                found.get("Progressing", {}).get("status") != "True" and \
                (size_bytes is None or status.get("sizeBytes") == size_bytes):
            return DONE
        return PENDING
    return verdict


def request_finished(done_phases: tuple[str, ...]) -> Verdict:
    """ExecRequests and ImageCommits: DONE in ``done_phases``, the reason when Failed."""
    def verdict(obj: Mapping[str, Any] | None) -> str | None:
        if obj is None:
            return "NotFound"
        status = obj.get("status") or {}
        if status.get("phase") in done_phases:
            return DONE
        if status.get("phase") == "Failed":
            return str(status.get("reason") or "Failed")
        return PENDING
    return verdict


def gone(obj: Mapping[str, Any] | None) -> str | None:
    return DONE if obj is None else PENDING


def wait_for(kube: KubeApi, plural: str, namespace: str, name: str, verdict: Verdict,
             seconds: float) -> tuple[str, Mapping[str, Any] | None]:
    """Poll the object until ``verdict`` is not PENDING; ("Timeout", last) after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    last: Mapping[str, Any] | None = None
    while True:
        try:
            last = kube.get(plural, namespace, name)
        except NotFoundError:
            last = None
        outcome = verdict(last)
        if outcome is not PENDING:
            return outcome, last
        if time.monotonic() >= deadline:
            return "Timeout", last
        time.sleep(POLL_SECONDS)
