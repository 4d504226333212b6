"""The one place the agent writes the status of its resources.

A status is patched only when it says something the resource does not say already
(compared without nulls: the API server drops null fields from what it stores, so a
comparison with them would write the same status on every pass). Every write is
counted (gpudock_status_writes_total), so a benchmark can tell how many writes an
update costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gpudock import metrics
from gpudock.core.binding import with_binding
from gpudock.core.kstatus import with_kstatus
from gpudock.core.ports import KubeClient


class StatusWriter:
    """Writes the status of one kind's resources through the API server, each bound to
    ``node`` (core/binding.py) when given."""

    def __init__(self, kube: KubeClient, plural: str, kind: str, node: str = "",
                 clock: Callable[[], str] | None = None) -> None:
        self._kube = kube
        self._plural = plural
        self._kind = kind
        self._node = node
        self._clock = clock

    def bound(self, status: Mapping[str, Any], previous: Mapping[str, Any],
              ) -> dict[str, Any]:
        """``status`` as this node's agent writes it: bound to the node, Scheduled=True
        (its transition time from ``previous``, the status stored now)."""
        if not self._node or self._clock is None:
            return dict(status)
        return with_binding(status, previous, self._node, self._clock())

    def write(self, namespace: str, name: str, status: Mapping[str, Any],
              shown: Mapping[str, Any], resource_version: str | None = None) -> str | None:
        """Patch ``status`` unless ``shown`` (the resource's status as last read or
        written) already says it; the new resourceVersion, or None when nothing was
        written. With ``resource_version`` only while the resource is still at it
        (ConflictError otherwise: the caller decides again). Raises the Kubernetes
        adapter's errors."""
        status = with_kstatus(status)  # Reconciling, Stalled: what GitOps tools read
        if not changed(status, shown):
            return None
        if resource_version is None:
            version = self._kube.patch_status(self._plural, namespace, name, dict(status))
        else:
            version = str(self._kube.patch_status_at(
                self._plural, namespace, name, dict(status), resource_version)
                ["metadata"]["resourceVersion"])
        metrics.STATUS_WRITES.labels(self._kind).inc()
        return version


def changed(status: Mapping[str, Any], shown: Mapping[str, Any]) -> bool:
    """True when writing ``status`` over ``shown`` would change what is stored (fields
    ``status`` does not name are left as they are by a merge patch)."""
    return bool(without_nulls(dict(status)) != without_nulls(
        {key: shown.get(key) for key in status}))


def without_nulls(value: Any) -> Any:
    """``value`` as the API server stores it: null fields dropped, at every depth."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value
