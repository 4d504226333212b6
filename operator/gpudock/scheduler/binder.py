"""One scheduling pass: bind each waiting resource to a node, or say why none fits.

Every binding is a compare-and-set: ``status.nodeName`` is written with the
resourceVersion the pass read, so if another scheduler (or the user) changed the
resource meanwhile the write fails and the next pass decides again; a resource is
never bound to two nodes, whatever the Lease says. The pass works from the fleet
cache and updates its node views as it binds, so one burst never overfills a node.

Order: resources by creation time (then namespace and name), as a queue.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gpudock.adapters.kube_api import ConflictError, KubeUnavailableError, ObjectNotFoundError
from gpudock.api import gpu_replica_set, ownership, sized_volume
from gpudock.api.conditions import ConditionType
from gpudock.api.placement import SchedulingPolicy, bound_node
from gpudock.api.reasons import Reason
from gpudock.core.fleet_view import Volume, demand_of, key_of, node_views, volumes_by_key
from gpudock.core.placement import NodeView, Placed, place
from gpudock.core.times import seconds_between
from gpudock.errors import SpecError
from gpudock.scheduler.fleet_cache import FleetSnapshot

logger = logging.getLogger(__name__)
COMPONENT = "gpudock-scheduler"
REJECTION_BACKOFF_SECONDS = 60.0
BINDING_WRITERS = 8  # API calls of one pass at once


class SchedulerKube(Protocol):
    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], resource_version: str) -> dict[str, Any]: ...

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                   component: str, now: str) -> None: ...


@dataclass(frozen=True)
class PassSettings:
    policy: SchedulingPolicy = SchedulingPolicy.BINPACK
    heartbeat_seconds: float = 30.0


class SchedulingPass:
    """``written``: the objects as this pass's writes left them (for the cache)."""

    def __init__(self, kube: SchedulerKube, settings: PassSettings, now: str) -> None:
        self._kube, self._settings, self._now = kube, settings, now
        self.written: list[tuple[str, dict[str, Any]]] = []
        self._bindings: list[tuple[dict[str, Any], str]] = []

    def run(self, fleet: FleetSnapshot) -> None:
        nodes = node_views(fleet.gpu_nodes, fleet.replica_sets, fleet.volumes, self._now,
                           self._settings.heartbeat_seconds)
        volumes = volumes_by_key(fleet.volumes)
        volume_bodies = {key_of(b): b for b in fleet.volumes}
        live = [b for b in fleet.replica_sets if not b["metadata"].get("deletionTimestamp")]
        for body in sorted(live, key=_queue_order):
            node = bound_node(body)
            if node:  # pinned or bound: its unbound volumes follow it
                self._bind_volumes(body, node, volumes, volume_bodies)
            elif any(f.startswith(ownership.FINALIZER_PREFIX)
                     for f in body["metadata"].get("finalizers") or ()):
                continue  # a node is handing it back: bound again once it let go
            else:
                self._place(body, nodes, volumes, volume_bodies)
        self._write_bindings()
        consumers = {(key_of(b)[0], str(m.get("volume"))) for b in live
                     for m in (b.get("spec") or {}).get("mounts") or ()
                     if isinstance(m, Mapping) and m.get("volume")}
        for key, body in volume_bodies.items():
            if not volumes[key].node and key not in consumers and \
                    not body["metadata"].get("deletionTimestamp"):
                self._say_waiting(body)

    # ------------------------------------------------------------------ GpuReplicaSets
    def _place(self, body: dict[str, Any], nodes: list[NodeView],
               volumes: dict[tuple[str, str], Volume],
               volume_bodies: Mapping[tuple[str, str], dict[str, Any]]) -> None:
        try:
            demand = demand_of(body, volumes, _avoided(body, self._now))
        except SpecError as exc:
            self._say_unschedulable(body, Reason.INVALID_SPEC, exc.message, event=False)
            return
        result = place(demand, nodes, self._settings.policy)
        if not isinstance(result, Placed):
            self._say_unschedulable(body, Reason.UNSCHEDULABLE, result.message, event=True)
            return
        if not self._bind_volumes(body, result.node, volumes, volume_bodies):
            return  # a volume changed meanwhile: the next pass decides again
        # Counted as taken now, written with the pass's other bindings at once (a
        # binding that loses its compare-and-set leaves the node under-used for this
        # pass only: the next one decides again).
        next(n for n in nodes if n.name == result.node).claim(demand)
        self._bindings.append((body, result.node))

    def _write_bindings(self) -> None:
        """The pass's bindings, written side by side: each is its own compare-and-set,
        and a burst is bound in a fraction of the time one after the other takes."""
        def bind(body: dict[str, Any], node: str) -> None:
            if self._bind(gpu_replica_set.PLURAL, body, node):
                meta = body["metadata"]
                logger.info("bound %s/%s to %s", meta["namespace"], meta["name"], node)
                self._event(body, "Normal", Reason.SCHEDULED, f"Successfully assigned "
                            f"{meta['namespace']}/{meta['name']} to {node}")

        with concurrent.futures.ThreadPoolExecutor(BINDING_WRITERS) as pool:
            for future in [pool.submit(bind, body, node) for body, node in self._bindings]:
                future.result()
        self._bindings.clear()

    def _bind_volumes(self, body: Mapping[str, Any], node: str,
                      volumes: dict[tuple[str, str], Volume],
                      volume_bodies: Mapping[tuple[str, str], dict[str, Any]]) -> bool:
        """Bind the unbound SizedVolumes ``body`` mounts to ``node``; False when one
        could not be bound now."""
        namespace = key_of(body)[0]
        for mount in (body.get("spec") or {}).get("mounts") or ():
            key = (namespace, str(mount.get("volume"))) if isinstance(mount, Mapping) \
                else ("", "")
            volume = volumes.get(key)
            if volume is None or volume.node:
                continue
            if volume_bodies[key]["metadata"].get("deletionTimestamp") or \
                    not self._bind(sized_volume.PLURAL, volume_bodies[key], node):
                return False
            volumes[key] = Volume(node, volume.size_bytes)
        return True

    def _bind(self, plural: str, body: Mapping[str, Any], node: str) -> bool:
        status = {"nodeName": node, "reason": None, "message": None, "conditions": [
            _condition(ConditionType.SCHEDULED, "True", Reason.SCHEDULED,
                       f"bound to node {node} by the scheduler", self._now)]}
        return self._write(plural, body, status)

    def _say_unschedulable(self, body: dict[str, Any], reason: Reason, message: str,
                           event: bool) -> None:
        """Pending with Scheduled=False: written, and a FailedScheduling event posted,
        only when the status does not say this already (one event per message)."""
        if _scheduled_condition(body) == ("False", str(reason), message):
            return
        status = {"phase": "Pending", "reason": reason, "message": message, "conditions": [
            _condition(ConditionType.SCHEDULED, "False", reason, message, self._now),
            _condition(ConditionType.READY, "False", reason, message, self._now)]}
        meta = body["metadata"]
        logger.info("%s/%s: %s", meta["namespace"], meta["name"], message)
        if self._write(gpu_replica_set.PLURAL, body, status) and event:
            self._event(body, "Warning", Reason.FAILED_SCHEDULING, message)

    # ------------------------------------------------------------------ SizedVolumes
    def _say_waiting(self, body: dict[str, Any]) -> None:
        message = ("waiting for the first GpuReplicaSet that mounts it: an unpinned "
                   "SizedVolume is made on that instance's node")
        reason = Reason.WAITING_FOR_FIRST_CONSUMER
        if _scheduled_condition(body) == ("False", str(reason), message):
            return
        self._write(sized_volume.PLURAL, body, {
            "phase": "Pending", "reason": reason, "conditions": [
                _condition(ConditionType.SCHEDULED, "False", reason, message, self._now),
                _condition(ConditionType.READY, "False", reason, message, self._now)]})

    # ------------------------------------------------------------------ writes
    def _write(self, plural: str, body: Mapping[str, Any], status: dict[str, Any]) -> bool:
        meta = body["metadata"]
        try:
            written = self._kube.patch_status_at(plural, meta["namespace"], meta["name"],
                                                 status, str(meta.get("resourceVersion")))
        except (ConflictError, ObjectNotFoundError):
            return False  # changed or gone meanwhile: the next pass sees it anew
        except KubeUnavailableError as exc:
            logger.warning("scheduler: %s", exc)
            return False
        self.written.append((plural, written))
        return True

    def _event(self, body: Mapping[str, Any], type_: str, reason: Reason,
               message: str) -> None:
        try:
            self._kube.post_event(dict(body), type_, str(reason), message, COMPONENT,
                                  self._now)
        except (KubeUnavailableError, ObjectNotFoundError) as exc:
            logger.warning("scheduler: event not posted: %s", exc)


def _queue_order(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace")),
            str(meta.get("name")))


def _avoided(body: Mapping[str, Any], now: str) -> frozenset[str]:
    """The node that handed the resource back (status.rejection), for a backoff."""
    rejection = (body.get("status") or {}).get("rejection") or {}
    node, since = rejection.get("nodeName"), str(rejection.get("time") or "")
    age = seconds_between(since, now)
    if node and (age is None or age < REJECTION_BACKOFF_SECONDS):
        return frozenset({str(node)})
    return frozenset()


def _scheduled_condition(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    for cond in (body.get("status") or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == ConditionType.SCHEDULED:
            return (str(cond.get("status")), str(cond.get("reason")),
                    str(cond.get("message")))
    return None


def _condition(type_: ConditionType, status: str, reason: Reason, message: str,
               now: str) -> dict[str, Any]:
    return {"type": str(type_), "status": status, "reason": str(reason),
            "message": message, "lastTransitionTime": now}
