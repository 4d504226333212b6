"""kopf registration of GpuReplicaSets: wires their events to ReplicaSetReconciler and
writes what it returns. No decisions are made here.

Each GpuReplicaSet of this node gets a daemon that reconciles it level-based: at
start (also after an agent restart), whenever its spec changes or another resource
frees GPUs or ports, and every --resync-seconds to catch drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from gpudock import metrics
from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.agent import node_name_moves, wiring
from gpudock.agent.replica_set_outcome import Event, Outcome
from gpudock.agent.wiring import NodeAgent
from gpudock.api import GROUP, VERSION, gpu_replica_set, ownership
from gpudock.api.conditions import ConditionType
from gpudock.api.placement import bound_node
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set.status import serving_while_waiting, waiting_on
from gpudock.errors import TransientError

GRS = gpu_replica_set.PLURAL
Logger = logging.Logger | logging.LoggerAdapter[Any]
STATUS_RETRY_SECONDS = 5.0
HAND_BACK_RETRY_SECONDS = 1.0  # the resource changed while it was handed back
FINALIZER_TRIES = 5
# A settled resource's look while Docker's events are followed (every change of its
# container wakes it): the period doubles with each pass that changes nothing, up to
# this many times --resync-seconds; a wake-up brings it back.
QUIET_RESYNC_FACTOR = 4


def _on_this_node(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    """Resources this node's agent handles (api/ownership.py): those held by its
    finalizer, and new ones pinned (spec.nodeName) or bound (status.nodeName) to it."""
    return ownership.handled_here(bound_node(body), meta.get("finalizers") or (),
                                  wiring.settings_of(memo).node_name)


def _still_here(agent: NodeAgent, body: Mapping[str, Any]) -> bool:
    """What kopf's filter of the daemon says of the resource as watched (or read)."""
    return ownership.handled_here(bound_node(body), body["metadata"].get("finalizers") or (),
                                  agent.settings.node_name)


def _drop_legacy_finalizer(agent: NodeAgent, body: kopf.Body) -> None:
    """Resources made by an agent before 0.2 carry the finalizer every agent shared;
    once this node's own is there, the old one goes (else deletes would hang)."""
    finalizers = body["metadata"].get("finalizers") or ()
    if ownership.LEGACY_FINALIZER in finalizers:
        agent.kube.remove_finalizer(GRS, body["metadata"]["namespace"],
                                    body["metadata"]["name"], ownership.LEGACY_FINALIZER)


def _post(body: kopf.Body, events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


class StatusLine:
    """One daemon's link to its resource's status: what it last read or wrote, and
    what could not be written while the API server was away (the next pass starts
    from that status, so a repair it notes is not forgotten, and posts the events)."""

    def __init__(self, agent: NodeAgent, body: kopf.Body, logger: Logger) -> None:
        self._agent, self._body, self._logger = agent, body, logger
        self.shown: dict[str, Any] = {}  # the status as this pass knows it
        # The resourceVersion last read or made with a status write: a pass woken at
        # once (by the Docker event of its own last step) can start before the watch
        # has brought that write into ``body``, and must not take the older status for
        # the resource's last (a note such as DriftRepaired would be lost).
        self.known_version: str | None = None
        self.carried: dict[str, Any] = {}
        self.unsent: list[Event] = []
        self.base: dict[str, Any] = {}  # what the last read found (no carried status)

    def read(self) -> dict[str, Any]:
        """The resource as the pass must see it: the watched body when it is at the
        version the daemon knows (or it knows none yet); else read afresh."""
        body = self._body
        if self.known_version is None or \
                body["metadata"].get("resourceVersion") == self.known_version:
            view = dict(body)
        else:
            view = self._agent.kube.get(GRS, body["metadata"]["namespace"],
                                        body["metadata"]["name"])
        self.known_version = view["metadata"].get("resourceVersion")
        self.shown, self.base = view.get("status") or {}, view
        return {**view, "status": self.carried} if self.carried else view

    def read_afresh(self) -> None:
        """The next read asks the API server (this pass changed the binding: the
        watched body may not show it yet)."""
        self.known_version = ""

    def show(self, outcome: Outcome) -> None:
        """Post the events, write the status unless the resource already has it. The
        API server being away does not stop the work on the node: the status and
        the events catch up on a later pass."""
        self.unsent += outcome.events
        meta = self._body["metadata"]
        try:
            _post(self._body, self.unsent)
            self.unsent = []
            writer = self._agent.replica_set_status
            status = writer.bound(outcome.status, self.shown)
            written = writer.write(meta["namespace"], meta["name"], status, self.shown)
            if written is not None:
                self.known_version, self.shown = written, status
            self.carried = {}
        except KubeUnavailableError as exc:
            self._logger.warning("status not written (will catch up): %s", exc)
            self.carried = outcome.status

    @property
    def behind(self) -> bool:
        """Something is still to be written or posted."""
        return bool(self.carried or self.unsent)


@kopf.daemon(GROUP, VERSION, GRS, when=_on_this_node, cancellation_timeout=120)
async def run_replica_set(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                          logger: Logger, **_: Any) -> None:
    agent = wiring.of(memo)
    uid = body["metadata"]["uid"]
    wakeup = agent.wakeups.event(uid)
    line = StatusLine(agent, body, logger)
    quiet = 0  # passes in a row that found the resource settled and changed nothing
    try:
        while not stopped:
            wakeup.clear()
            delay = agent.settings.resync_seconds
            calm = False
            try:
                view = await asyncio.to_thread(line.read)
                if not _still_here(agent, line.base) or \
                        await asyncio.to_thread(agent.migrations.give_back, line.base):
                    # Handed back, or given back to a migration's source (docs/migration.md,
                    # "Falling back"): kopf stops this daemon. It must not return by
                    # itself: kopf would never start it again for this resource, here.
                    line.read_afresh()
                    await _sleep(wakeup, stopped, HAND_BACK_RETRY_SECONDS)
                    continue
                await asyncio.to_thread(_drop_legacy_finalizer, agent, body)
                # A changed spec.nodeName: a GpuMigration moves it (made once per change).
                try:
                    await asyncio.to_thread(node_name_moves.request_move, agent.kube, view,
                                            agent.settings.node_name)
                except TransientError as exc:  # the API away, an old ClusterRole
                    logger.warning("the GpuMigration for the changed spec.nodeName is not "
                                   "made yet: %s", exc)
                with metrics.timed(metrics.RECONCILE_SECONDS, gpu_replica_set.KIND):
                    outcome = await asyncio.to_thread(agent.replica_sets.reconcile, view,
                                                      line.show)
                if outcome is not None and outcome.hand_back is not None:
                    await asyncio.to_thread(_hand_back, agent, body, outcome.hand_back, logger)
                    line.read_afresh()
                    await _sleep(wakeup, stopped, HAND_BACK_RETRY_SECONDS)
                    continue  # the scheduler's again (if it was handed back): see above
                if outcome is not None:
                    before = line.known_version
                    await asyncio.to_thread(line.show, outcome)
                    calm = (not outcome.events and outcome.recheck_after is None
                            and line.known_version == before and outcome.settled)
                    agent.wakeups.note(uid, settled=outcome.settled)
                    if outcome.released:
                        agent.wakeups.wake_unsettled()
                    if outcome.released or outcome.events:
                        agent.node_changed.set()
                    delay = min(delay, outcome.recheck_after or delay)
                    _count(agent, uid, outcome.status)
            except ObjectNotFoundError:
                return
            except TransientError as exc:
                logger.warning("will retry in %.0fs: %s", exc.delay, exc)
                agent.wakeups.note(uid, settled=False)
                delay = min(delay, exc.delay)
                metrics.RECONCILE_ERRORS.labels(gpu_replica_set.KIND, exc.reason).inc()
                await asyncio.to_thread(_show_waiting, agent, body, exc)
            if line.behind:
                delay = min(delay, STATUS_RETRY_SECONDS)
                calm = False
            quiet = quiet + 1 if calm and agent.docker.events_followed() else 0
            if quiet:
                delay = agent.settings.resync_seconds * min(2 ** quiet, QUIET_RESYNC_FACTOR)
            await _sleep(wakeup, stopped, delay)
            if wakeup.is_set():
                quiet = 0  # woken by a change: the usual period again
    finally:
        agent.wakeups.forget(uid)
        agent.phases.pop(uid, None)
        metrics.set_phases(gpu_replica_set.KIND, agent.phases)


def _hand_back(agent: NodeAgent, body: kopf.Body, message: str, logger: Logger) -> bool:
    """Give the binding back to the scheduler (docs/fleet.md, NodeRejected): clear
    status.nodeName at the version just read (compare-and-set), note this node for
    the scheduler's backoff, then drop this node's finalizer (the scheduler binds no
    resource that still carries a node's finalizer). False when the resource changed
    meanwhile: the next pass decides again."""
    meta, now = body["metadata"], agent.now()
    node = agent.settings.node_name
    conditions = [{"type": ctype, "status": "False", "reason": Reason.NODE_REJECTED,
                   "message": message, "lastTransitionTime": now}
                  for ctype in (ConditionType.SCHEDULED, ConditionType.READY)]
    try:
        current = agent.kube.get(GRS, meta["namespace"], meta["name"])
        if (current.get("status") or {}).get("nodeName") == node:
            agent.kube.patch_status_at(GRS, meta["namespace"], meta["name"], {
                "nodeName": None, "phase": "Pending", "reason": Reason.NODE_REJECTED,
                "message": message, "rejection": {"nodeName": node, "time": now},
                "conditions": conditions}, str(current["metadata"]["resourceVersion"]))
    except (KubeUnavailableError, ObjectNotFoundError) as exc:
        logger.info("binding not handed back (will decide again): %s", exc)
        return False
    for _ in range(FINALIZER_TRIES):  # (a conflict: the list changed; read it again)
        try:
            agent.kube.remove_finalizer(GRS, meta["namespace"], meta["name"],
                                        ownership.node_finalizer(node))
            break
        except ObjectNotFoundError:
            break
        except KubeUnavailableError as exc:
            logger.info("finalizer not removed yet: %s", exc)
    kopf.event(body, type="Warning", reason=Reason.NODE_REJECTED, message=message)
    logger.info("handed the binding back to the scheduler: %s", message)
    return True


def _count(agent: NodeAgent, uid: str, status: dict[str, Any]) -> None:
    """The resource's phase for the gauge, and its problem for the error counter."""
    agent.phases[uid] = str(status.get("phase"))
    metrics.set_phases(gpu_replica_set.KIND, agent.phases)
    degraded = next((c for c in status.get("conditions") or ()
                     if c.get("type") == "Degraded" and c.get("status") == "True"), None)
    if degraded is not None:
        metrics.RECONCILE_ERRORS.labels(gpu_replica_set.KIND, degraded["reason"]).inc()


async def _sleep(wakeup: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Until the resource is woken (its spec changed, GPUs were freed), kopf stops
    the daemon (the resource is being deleted, the agent exits) or ``delay`` passes."""
    woken = asyncio.ensure_future(wakeup.wait())
    ending = asyncio.ensure_future(stopped.wait(delay))
    try:
        await asyncio.wait((woken, ending), timeout=delay,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        ending.cancel()


def _show_waiting(agent: NodeAgent, body: Mapping[str, Any], exc: TransientError) -> None:
    """Docker or the revision store does not answer: say so in the status (when the
    API server does), keeping the rest of what it says but Ready, which is observed
    (a step may have stopped the container just before the store failed). Written
    only while the resource is this node's, as read now, and at that version: a
    migration may have moved the binding (or given it back) meanwhile."""
    meta, node = body["metadata"], agent.settings.node_name
    try:
        current = agent.kube.get(GRS, meta["namespace"], meta["name"])
    except (KubeUnavailableError, ObjectNotFoundError):
        return
    previous = current.get("status") or {}
    if current["metadata"].get("uid") != meta["uid"] or not _still_here(agent, current) or \
            previous.get("nodeName") not in (None, "", node):  # (also: moved away)
        return
    try:
        own: list[ObservedContainer] | None = [
            c for c in agent.docker.list_containers()
            if c.owner == ResourceKey(meta["namespace"], meta["name"]) and c.uid == meta["uid"]]
    except TransientError:
        own = None  # Docker does not answer: whether it serves is not known
    now = agent.now()
    status = agent.replica_set_status.bound(serving_while_waiting(
        waiting_on(previous, exc.reason, str(exc), now), previous, own, now), previous)
    with contextlib.suppress(KubeUnavailableError, ObjectNotFoundError):  # (a conflict too)
        agent.replica_set_status.write(meta["namespace"], meta["name"], status, previous,
                                       str(current["metadata"]["resourceVersion"]))


@kopf.on.update(GROUP, VERSION, GRS, when=_on_this_node)
def wake_on_change(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The daemon picks the new spec up from the live body; this makes it look now."""
    wiring.of(memo).wakeups.wake(body["metadata"]["uid"])


@kopf.on.delete(GROUP, VERSION, GRS, when=_on_this_node)
async def delete_replica_set(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    agent = wiring.of(memo)
    try:
        events = await asyncio.to_thread(agent.replica_sets.delete, dict(body))
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    _post(body, events)
    with contextlib.suppress(ObjectNotFoundError):
        await asyncio.to_thread(_drop_legacy_finalizer, agent, body)
    agent.wakeups.wake_unsettled()  # its GPUs and ports are free: waiting ones may start
    agent.node_changed.set()
