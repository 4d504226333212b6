"""Runs one GpuReplicaSet to its spec: observe Docker, plan (pure core), act, repeat
until the plan is empty; returns the status to write and the events to post.

A plain change is one plan: an update saves the disk, starts the new revision on it
and removes the old container, and the next observation confirms it (two
observations; a progress write and the final status). A step that comes out
otherwise than the later steps assume (a save that left no layer where the plan put
it) has the rest planned again from a new observation.

Each resource's reconcile holds that resource's lock (node_locks.py). Observing and
planning take no node-wide lock, so no resource waits for another's slow step (a stop
that waits out its timeout, a disk save). The one step that takes GPUs, host ports or
an address of the instance network, creating a container, runs under the node lock
after the node's containers were looked at again: two resources can never be given
one GPU, host port or address (when the other took it meanwhile, the pass is planned
again).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gpudock.adapters import host_ports
from gpudock.adapters.docker.errors import HostPortBusyError
from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.agent.commit_holds import CommitHolds
from gpudock.agent.disk_saves import DiskSaves
from gpudock.agent.migration_arrivals import Arrivals
from gpudock.agent.node_locks import NodeLocks
from gpudock.agent.replica_set_observer import ReplicaSetObserver
from gpudock.agent.replica_set_outcome import Event, Outcome, problem_of
from gpudock.agent.replica_set_pulls import ImagePulls
from gpudock.agent.replica_set_steps import Contended, Replan, ReplicaSetSteps
from gpudock.api import gpu_replica_set, ownership
from gpudock.api.container_fields import Protocol
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, HistoryPolicy, ImagePullProgress
from gpudock.api.placement import bound_node
from gpudock.api.reasons import Reason
from gpudock.core import gpu_health
from gpudock.core.conditions import with_transition_times
from gpudock.core.gpus import GpuInventory
from gpudock.core.observed import HostPort, ResourceKey
from gpudock.core.ports import ContainerRuntime, KubeClient, VolumeLookup
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set import history
from gpudock.core.replica_set import plan as core
from gpudock.core.replica_set.observation import Observation, Plan
from gpudock.core.replica_set.redeploy import with_redeploy
from gpudock.core.replica_set.status import invalid_spec_status, note_drift
from gpudock.core.revision import Revision, RevisionStore
from gpudock.core.times import utc_now
from gpudock.crash_points import CrashPoints
from gpudock.errors import ImagePullError, InternalError, SpecError, UserError
from gpudock.settings import Settings

logger = logging.getLogger(__name__)
# A rollout takes 4 (save the disk; show the start, then start the new under the node
# lock; remove the old); more means the plan does not converge.
MAX_PASSES = 16
# Deleted UIDs kept, so a reconcile that comes after the delete (an older body) acts
# on nothing: enough for any such race; fewer than one entry per name ever deleted.
DELETED_KEPT = 1024
CHANGE_CAUSE = "kubernetes.io/change-cause"
ADOPT_HISTORY = "gpudock.dev/adopt-history"  # annotation: the deleted resource's UID
# Docker's refusals of a new revision's container: it never ran; the revision is
# marked failed and the previous one runs again (not retried until the spec changes).
REFUSED_REVISION = frozenset({Reason.CONTAINER_CREATE_FAILED, Reason.CONTAINER_START_FAILED,
                              Reason.COMMAND_NOT_FOUND, Reason.HOST_PATH_MISSING,
                              Reason.IMAGE_NOT_PRESENT, Reason.HOST_PORT_IN_USE,
                              Reason.DISK_RESTORE_FAILED})
MAX_BUSY_PORTS = 64  # ports found held outside Docker in one reconcile


def _step_of(status: gpu_replica_set.GpuReplicaSetStatus) -> tuple[object, ...]:
    """What a progress write says: the phase and the conditions (no times)."""
    return (status.phase, *((c.type, c.status, c.reason, c.message)
                            for c in status.conditions))


# What makes a node hand a binding back to the scheduler (docs/fleet.md): the node
# cannot run the resource now, for a reason the scheduler did not see, and another
# node may; only while it holds nothing of the resource (no container, no revision).
HAND_BACK = frozenset({Reason.INSUFFICIENT_GPUS, Reason.EXCEEDS_NODE_CAPACITY,
                       Reason.ADDRESSES_EXHAUSTED, Reason.IMAGE_NOT_PRESENT})


class ReplicaSetReconciler:
    def __init__(self, settings: Settings, docker: ContainerRuntime,
                 inventory: GpuInventory, kube: KubeClient, store: RevisionStore,
                 clock: Callable[[], str] = utc_now,
                 volumes: VolumeLookup | None = None,
                 commit_holds: CommitHolds | None = None) -> None:
        self._settings = settings
        # The containers ImageCommits hold paused (shared with image_committer.py).
        self.commit_holds = commit_holds or CommitHolds()
        self._docker = docker
        self._inventory = inventory
        self._kube = kube
        self._store = store
        self._clock = clock
        self._locks = NodeLocks(settings.state_dir)
        # Migrations (migration_*.py): resources moving off this node, which no pass
        # acts on; the GPUs held for instances moving here.
        self.migrating: set[ResourceKey] = set()
        self.arrivals = Arrivals()
        self._deleted: dict[str, None] = {}  # UIDs, the last DELETED_KEPT, oldest first
        self._busy_ports: set[HostPort] = set()  # held outside Docker's view
        # Container ID -> why it lost its GPUs: the access probe's (agent/gpu_access.py).
        self.access_lost: dict[str, str] = {}
        self._crash = CrashPoints(settings.crash_at)
        self._host_paths = HostPathPolicy(settings.allowed_host_paths,
                                          settings.read_only_host_paths)
        self.disks = DiskSaves(settings, docker, store, self._crash)
        pulls = ImagePulls(docker, kube, settings.state_dir)
        self._steps = ReplicaSetSteps(docker, kube, store, self.disks, self._locks,
                                      self._crash, self._host_paths, pulls, self.arrivals)
        self._observer = ReplicaSetObserver(settings, docker, kube, store, self.disks,
                                            self._host_paths, clock, volumes,
                                            self._busy_ports, pulls, self.commit_holds,
                                            self.arrivals, self._steps.stale_tasks)

    def now(self) -> str:
        return self._clock()

    # ------------------------------------------------------------------------ reconcile
    def reconcile(self, body: Mapping[str, Any],
                  progress: Callable[[Outcome], None] | None = None) -> Outcome | None:
        """Converge one resource; None when it is being deleted (nothing to do).

        ``progress`` is shown each pass's status (Progressing, with what is being done)
        and the events so far before the pass's steps run, so a long rollout (a stop
        timeout, a commit of a big disk) is visible while it happens."""
        meta, previous = body["metadata"], dict(body.get("status") or {})
        key = ResourceKey(meta["namespace"], meta["name"])
        if key in self.migrating or ownership.moved_away(body, self._settings.node_name):
            return None  # a migration moves it: its runner acts (docs/migration.md)
        generation = meta.get("generation")
        try:
            spec = with_redeploy(GpuReplicaSetSpec.parse(body.get("spec") or {}),
                                 meta.get("annotations") or {})
        except SpecError as exc:  # nothing is changed; what serves is observed
            own = tuple(c for c in self._docker.list_containers()
                        if c.owner == key and c.uid == meta["uid"])
            status = invalid_spec_status(generation, previous, exc, own)
            return self._outcome(status, previous, [Event("Warning", exc.reason, exc.message)])
        events: list[Event] = []
        drift: str | None = None
        released = False
        shown = previous  # the status last shown (for the conditions' transition times)
        with self._locks.resource(key):
            if meta.get("deletionTimestamp") or meta["uid"] in self._deleted:
                return None
            passes = busy_ports_found = 0
            announced: tuple[object, ...] = ()  # the step last shown
            devices = self._inventory.list_gpus()  # once per call
            inventory = tuple(g.uuid for g in devices)
            annotations = meta.get("annotations") or {}
            ensured: set[str] = set()  # images pulled (or checked) by this reconcile
            observe_with = functools.partial(self._observer.observe, key, meta["uid"], generation,
                                             spec, previous, inventory,
                                             annotations.get(CHANGE_CAUSE, ""),
                                             annotations.get(ADOPT_HISTORY, ""),
                                             unhealthy=gpu_health.unhealthy(devices),
                                             access_lost=self.access_lost)
            while True:
                # The SizedVolumes it mounts are asked of the API server and observed
                # before the node lock is taken: no API I/O holds it.
                observe = functools.partial(observe_with, volume_names={
                    m.volume: self._observer.volume_name(key.namespace, m.volume)
                    for m in spec.mounts if m.volume is not None},
                    ensured=frozenset(ensured))
                observation = observe()
                plan = core.plan_replica_set(observation)
                if plan.drift and not drift:
                    drift = plan.drift
                    events.append(Event("Warning", Reason.DRIFT_DETECTED, drift))
                if not plan.actions:
                    break
                passes += 1
                if passes > MAX_PASSES:
                    raise InternalError(f"{key}: no convergence after {MAX_PASSES} passes")
                if progress is not None and _step_of(plan.status) != announced:
                    now = self._outcome(plan.status, shown, events)
                    progress(now)  # shown before the steps run
                    shown, events, announced = now.status, [], _step_of(plan.status)
                action: act.Action | None = None
                try:
                    self._preflight(key, meta["uid"], observation, plan)
                    for action in plan.actions:
                        events += self._steps.execute(key, action, report=self._pull_report(
                            plan, progress, shown))
                        released = released or isinstance(action, act.RELEASING)
                        if isinstance(action, act.PullImage):
                            ensured.add(action.image)
                    if any(isinstance(a, act.WriteSpec) for a in plan.actions):
                        break  # the spec changes: the next reconcile takes it from there
                    if all(isinstance(a, act.PruneRevision) for a in plan.actions):
                        # Report the history as it is now; a prune that could not be
                        # done (an image still in use) is tried again next time.
                        plan = core.plan_replica_set(observe())
                        break
                except Contended:
                    continue  # another resource took a GPU or port meanwhile: plan again
                except Replan as replan:
                    events += replan.events
                    continue
                except HostPortBusyError as exc:
                    busy_ports_found += 1
                    # Another port helps only a container still to be made: an existing
                    # one keeps its ports, and starting it again at once fails again
                    # (the soak found 64 starts in a second, at every retry).
                    if busy_ports_found <= MAX_BUSY_PORTS and \
                            not isinstance(action, act.StartContainer) and \
                            self._auto_port_busy(exc, spec):
                        events.append(Event("Normal", Reason.HOST_PORT_SKIPPED, (
                            f"host port {exc.port} is held by another process on the "
                            "node; another one from the range is used")))
                        passes -= 1  # not a pass: plan again, skipping that port
                        continue
                    if self._revision_refused(action, exc):
                        continue  # plan again: the previous revision runs again
                    plan = core.blocked_plan(observe(), exc)
                    break
                except UserError as exc:
                    if self._revision_refused(action, exc):
                        continue
                    plan = core.blocked_plan(observe(), exc)
                    if isinstance(exc, ImagePullError):  # look again when it is retried
                        plan = replace(plan, recheck_after=exc.retry_after)
                    break
        status = note_drift(plan.status, drift, previous)
        problem = problem_of((c.type, c.status, c.reason, c.message) for c in status.conditions)
        before = problem_of((str(c.get("type")), c.get("status") in ("True", True),
                             str(c.get("reason")), str(c.get("message")))
                            for c in previous.get("conditions") or () if isinstance(c, Mapping))
        if problem is not None and problem[0] != (before or ("",))[0]:
            events.append(Event("Warning", Reason(problem[0]), problem[1]))  # once each
        outcome = self._outcome(status, shown, events, released)
        outcome.status["retainedHistories"] = self._retained(key)
        outcome.recheck_after = plan.recheck_after
        found = {c.type: c for c in status.conditions}
        progressing, degraded = found.get("Progressing"), found.get("Degraded")
        outcome.settled = (progressing is not None and not progressing.status
                           and progressing.reason == Reason.RECONCILE_COMPLETE
                           and degraded is not None and not degraded.status)
        if progressing is not None and progressing.reason in HAND_BACK and \
                not spec.node_name and not observation.own_records and not any(
                    c.owner == key and c.uid == meta["uid"] for c in observation.containers):
            outcome.hand_back = (f"node {self._settings.node_name} cannot run it: "
                                 f"{progressing.message}")
        return outcome

    def _pull_report(self, plan: Plan, progress: Callable[[Outcome], None] | None,
                     shown: Mapping[str, Any]) -> Callable[[ImagePullProgress], None] | None:
        """What shows a pull's progress: the pass's status with ``status.imagePull``."""
        if progress is None:
            return None
        return lambda pulled: progress(self._outcome(replace(plan.status, image_pull=pulled),
                                                     shown, []))

    def _retained(self, key: ResourceKey) -> list[dict[str, Any]] | None:
        """The histories deleted resources of this name left on the node (set apart,
        not adopted): what ``kubectl gpudock history --retained`` lists; None: none."""
        found: dict[str, list[Revision]] = {}
        for record in self._store.list_retained(key.namespace, key.name):
            found.setdefault(record.uid, []).append(record)
        return [{"uid": uid, "revisions": [r.revision for r in records],
                 "lastChange": records[-1].created_at}
                for uid, records in sorted(found.items())] or None

    def lock(self, key: ResourceKey) -> contextlib.AbstractContextManager[None]:
        """The resource's lock, which every pass holds (for the migration runner)."""
        return self._locks.resource(key)

    def node_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._locks.node()  # allocation's (for a migration's hold on GPUs)

    def _revision_refused(self, action: act.Action | None, exc: UserError) -> bool:
        """Docker refused the container of a revision that never ran: mark the
        revision failed (history shows it so, and the same change is not tried again
        until the spec changes); True when it was, so the previous revision can run
        again. A revision that ran before (a resume) is not marked."""
        if not isinstance(action, act.StartRevision) or exc.reason not in REFUSED_REVISION:
            return False
        if action.record.container_id is not None:
            return False
        self._store.put(replace(action.record, failed_reason=exc.reason,
                                failed_message=exc.message))
        return True

    def _preflight(self, key: ResourceKey, uid: str, observation: Observation,
                   plan: Plan) -> None:
        """What can be known of a new container before anything is stopped for it:
        its host ports are free on the node, and its command exists where the disk
        carries over (asked of the running container). Raises UserError."""
        configs = [a.config for a in plan.actions if isinstance(a, act.StartRevision)]
        if plan.next_config is not None:
            configs.append(plan.next_config)
        held = {p for c in observation.containers for p in c.host_ports}
        for config in configs:
            for port in config.ports:
                if HostPort(port.host_port, port.protocol) not in held and \
                        host_ports.is_busy(port.host_port, port.protocol):
                    raise HostPortBusyError(
                        f"host port {port.host_port}/{port.protocol} is held by another "
                        "process on the node; nothing was changed", port.host_port)
        current = core.current_container(observation)
        new = plan.next_config
        if new is None or current is None or not current.running or not new.command:
            return
        if not plan.next_carries_disk:
            return  # another disk: its files cannot be looked at before it runs
        if self._docker.command_missing(
                current.id, new.command[0], [f"{k}={v}" for k, v in new.env.items()]):
            raise UserError(Reason.COMMAND_NOT_FOUND, f"command {new.command[0]!r} is not in "
                            f"the container's filesystem (checked in {current.name} "
                            "before stopping it); nothing was changed")

    def _auto_port_busy(self, exc: HostPortBusyError, spec: GpuReplicaSetSpec) -> bool:
        """Remember a port Docker could not bind; True when the allocator chose it (so
        another one will do), False when the user asked for it explicitly."""
        if exc.port is None or any(p.host_port == exc.port for p in spec.ports):
            return False
        self._busy_ports.update(HostPort(exc.port, proto) for proto in Protocol)
        return True

    def _outcome(self, status: gpu_replica_set.GpuReplicaSetStatus,
                 previous: Mapping[str, Any], events: list[Event],
                 released: bool = False) -> Outcome:
        timed = with_transition_times(status.conditions, previous.get("conditions") or (),
                                      self._clock(), status.observed_generation)
        raw = status.to_dict()
        raw["conditions"] = [c.to_dict() for c in timed]
        return Outcome(raw, events, released)

    # --------------------------------------------------------------------------- delete
    def delete(self, body: Mapping[str, Any]) -> list[Event]:
        """Remove every container of the resource (fine when already gone); Retain saves
        their disks first, Purge also removes the saved disks and records."""
        meta = body["metadata"]
        key = ResourceKey(meta["namespace"], meta["name"])
        policy = HistoryPolicy.RETAIN
        with contextlib.suppress(SpecError):
            policy = GpuReplicaSetSpec.parse(body.get("spec") or {}).history_policy
        events: list[Event] = []
        with self._locks.resource(key):
            self._deleted[meta["uid"]] = None
            for uid in list(self._deleted)[:-DELETED_KEPT]:
                del self._deleted[uid]
            self._steps.pulls.forget(key)
            records = tuple(self._store.list(key.namespace, key.name))
            actions = history.plan_delete(key, tuple(self._docker.list_containers()), records,
                                       self.disks.saved(key, records), policy)
            for action in actions:
                events += self._steps.execute(key, action)
        return events

    # ---------------------------------------------------------------------- orphans
    def sweep_orphans(self, lookup: Callable[[str, str], Mapping[str, Any] | None],
                      running: frozenset[str] = frozenset()) -> list[str]:
        """Containers of this node whose resource is gone (deleted while no agent of
        this node handled it) or was replaced by a resource another node handles:
        their disks are saved (as historyPolicy Retain does) and they are removed, so
        their GPUs and ports come back. ``lookup`` returns the resource or None; it is
        not asked about the UIDs in ``running`` (resources this agent runs a daemon
        for: they exist and are handled here), so an idle node asks the API server
        nothing. Only containers labelled with this node, in the watched namespaces."""
        node, watched = self._settings.node_name, self._settings.namespaces
        found = {(c.owner, c.uid) for c in self._docker.list_containers()
                 if c.owner is not None and c.node == node
                 and (not watched or c.owner.namespace in watched)}
        orphans = []
        for owner, uid in sorted(found, key=str):
            assert owner is not None
            if uid in running:
                continue
            body = lookup(owner.namespace, owner.name)  # outside the lock: API I/O
            meta = (body or {}).get("metadata") or {}
            if body is None or (meta.get("uid") != uid and not ownership.handled_here(
                    bound_node(body), meta.get("finalizers") or (), node)):
                orphans.append((owner, uid))
        done = []
        for key, uid in orphans:
            with self._locks.resource(key):
                containers = tuple(c for c in self._docker.list_containers()
                                   if c.owner == key and c.uid == uid)
                records = tuple(self._store.list(key.namespace, key.name))
                actions = history.plan_delete(key, containers, records,
                                           self.disks.saved(key, records), HistoryPolicy.RETAIN)
                for action in actions:
                    self._steps.execute(key, action)
            done.append(f"{key} (uid {uid}): resource gone; {len(containers)} container(s) "
                        "saved and removed")
        return done
