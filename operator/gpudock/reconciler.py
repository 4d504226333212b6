"""Runs one GpuReplicaSet to its spec: observe Docker, plan (pure core), act, repeat
until the plan is empty; returns the status to write and the events to post.

A plain change is one plan: an update saves the disk, starts the new revision on it
and removes the old container, and the next observation confirms it (two
observations; a progress write and the final status). A step that comes out
otherwise than the later steps assume (a save that had to commit instead of copying
the layer) has the rest planned again from a new observation.

Each resource's reconcile holds that resource's lock (node_locks.py). Observing and
planning take no node-wide lock, so no resource waits for another's slow step (a stop
that waits out its timeout, a disk save). The one step that takes GPUs or host ports,
creating a container, runs under the node lock after the node's containers were
looked at again: two resources can never be given one GPU or one host port (when the
other took them meanwhile, the pass is planned again).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gpudock import metrics
from gpudock.adapters import host_paths, host_ports
from gpudock.adapters.docker.errors import HostPortBusyError
from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.adapters.kube_api import ObjectNotFoundError
from gpudock.api import gpu_replica_set, ownership, sized_volume
from gpudock.api.container_fields import Protocol
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, HistoryPolicy
from gpudock.api.reasons import Reason
from gpudock.core.allocation import Ledger
from gpudock.core.conditions import with_transition_times
from gpudock.core.container_config import ContainerConfig
from gpudock.core.gpus import GpuInventory
from gpudock.core.observed import HostPort, ResourceKey
from gpudock.core.ports import ContainerRuntime, KubeClient, VolumeLookup
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set import history, saved_disks
from gpudock.core.replica_set import plan as core
from gpudock.core.replica_set.observation import Observation, Plan
from gpudock.core.replica_set.status import invalid_spec_status, note_drift
from gpudock.core.revision import Revision, RevisionStore
from gpudock.crash_points import CrashPoints
from gpudock.disk_saves import DiskSaves
from gpudock.errors import InternalError, SpecError, UserError
from gpudock.node_locks import NodeLocks
from gpudock.settings import Settings

logger = logging.getLogger(__name__)
# A rollout takes 4 (save the disk; show the start, then start the new under the node
# lock; remove the old); more means the plan does not converge.
MAX_PASSES = 16
CHANGE_CAUSE = "kubernetes.io/change-cause"
ADOPT_HISTORY = "gpudock.dev/adopt-history"  # annotation: the deleted resource's UID
# Docker's refusals of a new revision's container: it never ran; the revision is
# marked failed and the previous one runs again (not retried until the spec changes).
REFUSED_REVISION = frozenset({Reason.CONTAINER_CREATE_FAILED, Reason.CONTAINER_START_FAILED,
                              Reason.COMMAND_NOT_FOUND, Reason.HOST_PATH_MISSING,
                              Reason.IMAGE_NOT_PRESENT, Reason.HOST_PORT_IN_USE,
                              Reason.DISK_RESTORE_FAILED})
MAX_BUSY_PORTS = 64  # ports found held outside Docker in one reconcile
# A save refused for these on delete: the container is removed unsaved (a Warning).
UNSAVED_ON_DELETE = frozenset({Reason.DISK_FULL, Reason.DISK_SAVE_FAILED})


class _Contended(InternalError):  # noqa: N818 - a signal to plan again, never shown
    """What a pass planned to take was taken by another resource meanwhile (caught in
    reconcile; one that escaped it would be a bug)."""


class _Replan(InternalError):  # noqa: N818 - a signal to plan again, never shown
    """A step came out otherwise than the plan's later steps assume: plan again from
    what is observed now (the events of the step done are kept)."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__("planned again")
        self.events = events


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: Reason
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    released: bool = False  # GPUs or ports may be free now: wake waiting resources
    recheck_after: float | None = None  # reconcile again this soon, whatever happens
    settled: bool = False  # nothing in progress, nothing wrong, nothing waited for


def _progressing_reason(status: Mapping[str, Any]) -> str | None:
    """The Progressing reason of a status written earlier (read back: a string)."""
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == "Progressing":
            return str(cond.get("reason"))
    return None


def _step_of(status: gpu_replica_set.GpuReplicaSetStatus) -> tuple[object, ...]:
    """What a progress write says: the phase and the conditions (no times)."""
    return (status.phase, *((c.type, c.status, c.reason, c.message)
                            for c in status.conditions))


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ReplicaSetReconciler:
    def __init__(self, settings: Settings, docker: ContainerRuntime,
                 inventory: GpuInventory, kube: KubeClient, store: RevisionStore,
                 clock: Callable[[], str] = _utc_now,
                 volumes: VolumeLookup | None = None) -> None:
        self._settings = settings
        self._docker = docker
        self._inventory = inventory
        self._kube = kube
        self._store = store
        self._clock = clock
        self._volumes = volumes  # None: no SizedVolume can be mounted
        self._locks = NodeLocks(settings.state_dir)
        self._deleted: set[str] = set()
        self._busy_ports: set[HostPort] = set()  # held outside Docker's view
        self._crash = CrashPoints(settings.crash_at)
        self._host_paths = HostPathPolicy(settings.allowed_host_paths,
                                          settings.read_only_host_paths)
        self.disks = DiskSaves(settings, docker, store, self._crash)

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
        generation = meta.get("generation")
        try:
            spec = GpuReplicaSetSpec.parse(body.get("spec") or {})
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
            inventory = tuple(g.uuid for g in self._inventory.list_gpus())  # once per call
            annotations = meta.get("annotations") or {}
            observe_with = functools.partial(self._observe, key, meta["uid"], generation,
                                             spec, previous, inventory,
                                             annotations.get(CHANGE_CAUSE, ""),
                                             annotations.get(ADOPT_HISTORY, ""))
            while True:
                # The SizedVolumes it mounts are asked of the API server and observed
                # before the node lock is taken: no API I/O holds it.
                observe = functools.partial(observe_with, volume_names={
                    m.volume: self._volume_name(key.namespace, m.volume)
                    for m in spec.mounts if m.volume is not None})
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
                        events += self._execute(key, action)
                        released = released or isinstance(action, act.RELEASING)
                    if any(isinstance(a, act.WriteSpec) for a in plan.actions):
                        break  # the spec changes: the next reconcile takes it from there
                    if all(isinstance(a, act.PruneRevision) for a in plan.actions):
                        # Report the history as it is now; a prune that could not be
                        # done (an image still in use) is tried again next time.
                        plan = core.plan_replica_set(observe())
                        break
                except _Contended:
                    continue  # another resource took a GPU or port meanwhile: plan again
                except _Replan as replan:
                    events += replan.events
                    continue
                except HostPortBusyError as exc:
                    busy_ports_found += 1
                    if busy_ports_found <= MAX_BUSY_PORTS and \
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
                    break
        status = note_drift(plan.status, drift, previous)
        problem = next((c for c in status.conditions if c.type == "Progressing"
                        and not c.status and c.reason != Reason.RECONCILE_COMPLETE), None)
        if problem is not None and problem.reason != _progressing_reason(previous):
            events.append(Event("Warning", problem.reason, problem.message))
        outcome = self._outcome(status, shown, events, released)
        outcome.recheck_after = plan.recheck_after
        found = {c.type: c for c in status.conditions}
        progressing, degraded = found.get("Progressing"), found.get("Degraded")
        outcome.settled = (progressing is not None and not progressing.status
                           and progressing.reason == Reason.RECONCILE_COMPLETE
                           and degraded is not None and not degraded.status)
        return outcome

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

    def _observe(self, key: ResourceKey, uid: str, generation: int | None,
                 spec: GpuReplicaSetSpec, previous: Mapping[str, Any],
                 inventory: tuple[str, ...], change_cause: str,
                 adopt_uid: str, volume_names: Mapping[str, str | None]) -> Observation:
        metrics.OBSERVATIONS.labels(gpu_replica_set.KIND).inc()
        records = tuple(self._store.list(key.namespace, key.name))
        adoptable: tuple[Revision, ...] = ()
        if adopt_uid and adopt_uid != uid and not any(r.uid == uid for r in records):
            adoptable = tuple(self._store.list(key.namespace,
                                               saved_disks.retained_name(key.name, adopt_uid)))
        saved = self.disks.saved(key, (*records, *adoptable))
        base_images = {spec.image} | {str(r.spec.get("image")) for r in records
                                      if r.spec.get("image")}
        image = self._docker.image_info(spec.image)
        explicit = self._settings.explicit_port_range
        return Observation(
            key=key, uid=uid, generation=generation, spec=spec, previous_status=previous,
            containers=tuple(self._docker.list_containers()),
            inventory=inventory,
            port_range=(self._settings.port_range.first, self._settings.port_range.last),
            allowed_host_paths=(*self._settings.allowed_host_paths,
                                *self._settings.read_only_host_paths),
            host_paths={(m.host_path, m.read_only): self._resolve(m.host_path, m.read_only)
                        for m in spec.mounts if m.host_path is not None},
            images={spec.image: image} if image is not None else {},
            explicit_port_range=(explicit.first, explicit.last),
            node_name=self._settings.node_name,
            # The spec's image was inspected above; the records' images only here.
            images_present=frozenset({spec.image} if image is not None else ()) | {
                i for i in base_images - {spec.image} if self._docker.image_exists(i)},
            records=records,
            preserved_tags=saved.tags,
            change_cause=change_cause,
            now=self._clock(),
            volume_names=dict(volume_names),
            gpu_attach=self._settings.gpu_attach,
            busy_host_ports=frozenset(self._busy_ports),
            adoptable=adoptable,
            retained_tags=self._docker.preserved_tags(saved_disks.retained_repository(key))
            if adoptable else frozenset(),
            saved_layers=saved.layers,
            layer_root=saved.layer_root,
        )

    def _resolve(self, path: str, read_only: bool) -> str | UserError:
        try:
            return self._host_paths.resolve(path, read_only=read_only)
        except UserError as exc:
            return exc

    def _checked_again(self, config: ContainerConfig) -> ContainerConfig:
        """Resolve every bind source once more just before Docker mounts it (the
        plan's check may be a pass old) and note what it is, for the check after
        start; raises UserError when it no longer passes."""
        mounts = []
        for mount in config.mounts:
            if not mount.is_volume:
                real = self._host_paths.resolve(mount.source, read_only=mount.read_only)
                mount = replace(mount, source=real, identity=host_paths.identity(real))
            mounts.append(mount)
        return replace(config, mounts=tuple(mounts))

    def _volume_name(self, namespace: str, name: str) -> str | None:
        """The Docker volume of a mounted SizedVolume, when it can be mounted now: the
        volume is observed (VolumeReconciler.serving), not taken from its status."""
        try:
            body = self._kube.get(sized_volume.PLURAL, namespace, name)
        except ObjectNotFoundError:
            return None
        volume = self._volumes.serving(body) if self._volumes is not None else None
        return volume if volume is not None and self._docker.volume_mounted(volume) else None

    def _execute(self, key: ResourceKey, action: act.Action) -> list[Event]:
        step = type(action).__name__
        self._crash.reach(f"{step}.before")
        with metrics.timed(metrics.STEP_SECONDS, step):
            if isinstance(action, act.ALLOCATING):
                # The GPUs and ports were chosen from an observation made without the
                # node lock: under it, the node is looked at again and the container
                # made only if nobody else holds them (else the pass is planned again).
                with self._locks.node():
                    self._check_still_free(key, action.config)
                    events = self._run_step(key, action)
            else:
                try:
                    events = self._run_step(key, action)
                except _Replan:
                    self._crash.reach(f"{step}.after")  # the step is done all the same
                    raise
        self._crash.reach(f"{step}.after")
        return events

    def _check_still_free(self, key: ResourceKey, config: ContainerConfig) -> None:
        """Raises _Contended when another resource's container holds one of the GPUs
        or host ports ``config`` takes (the rule of core/allocation.py's Ledger)."""
        ledger = Ledger.from_containers(self._docker.list_containers())
        gpus = set(config.gpus) & ledger.gpus_held_by_others(key)
        ports = {HostPort(p.host_port, p.protocol) for p in config.ports} & \
            ledger.ports_held_by_others(key)
        if gpus or ports:
            raise _Contended(f"{key}: taken meanwhile: GPUs {sorted(gpus)}, "
                             f"ports {sorted(str(p) for p in ports)}")

    def _run_step(self, key: ResourceKey, action: act.Action) -> list[Event]:
        docker, store = self._docker, self._store
        match action:
            case act.StartRevision(record=record, config=config, start=start, reason=reason,
                                   layer=layer):
                checked = self._checked_again(config)  # refused: no record is left
                store.put(record)  # first: a crash after it leaves a record, no orphan
                self._crash.reach("StartRevision.recorded")
                container_id = docker.create_and_start(checked, start=start, prepare=(
                    functools.partial(self.disks.put_layer, layer, config.name)
                    if layer is not None else None))
                # Made by the agent: a later disappearance is drift, not a new start.
                store.put(replace(record, container_id=container_id))
                gpus = ",".join(config.gpus) or "no GPU"
                how = "started" if start else "created (not started: Paused)"
                return [Event("Normal", reason, f"revision {record.revision}: container "
                              f"{config.name} {how} with {gpus}")]
            case act.RecordRevision(record=record, reason=reason):
                store.put(record)
                return [Event("Normal", reason, f"revision {record.revision} recorded")]
            case act.PreserveDisk(container_id=cid, name=name, image=image, record=record,
                                  layer=layer, previous=previous):
                done = self.disks.save(key, cid, name, image, record, layer, previous)
                events = [Event("Normal", reason, message) for reason, message in done]
                if layer is not None and record is not None and not os.path.isdir(layer):
                    # Saved another way than planned (committed: the layer could not
                    # be copied): the steps after it were made for the layer.
                    raise _Replan(events)
                return events
            case act.StartContainer(container_id=cid, name=name, reason=reason, note=note,
                                    layer=layer):
                if layer is not None:  # unless a start cut short by a crash put it in
                    self.disks.put_layer(layer, name, cid, unless_there=True)
                docker.start(cid, name)
                if note is not None:
                    store.put(note)
                return [Event("Normal", reason, f"container {name} started")]
            case act.StopContainer(container_id=cid, name=name, reason=reason, saving=saving,
                                   note=note):
                if saving:
                    self.disks.check_room(cid, name)
                if note is not None:  # first: a stop the record does not know is drift
                    store.put(note)
                docker.stop(cid, name)
                return [Event("Normal", reason, f"container {name} stopped")]
            case act.RemoveContainer(container_id=cid, name=name, reason=reason):
                docker.remove(cid, name)
                return [Event("Normal", reason, f"container {name} removed")]
            case act.RenameContainer(container_id=cid, old_name=old, new_name=new):
                docker.rename(cid, new)
                return [Event("Normal", Reason.RENAMED,
                              f"container {old} renamed back to {new}")]
            case act.UnpauseContainer(container_id=cid, name=name):
                docker.unpause(cid, name)
                return [Event("Normal", Reason.UNPAUSED, f"container {name} unpaused")]
            case act.SetRestartPolicy(container_id=cid, name=name, policy=policy):
                docker.set_restart_policy(cid, name, policy)
                return [Event("Normal", Reason.RESTART_POLICY_RESTORED,
                              f"restart policy of {name} set back to {policy}")]
            case act.WriteSpec(shape=shape, revision=revision):
                self._kube.patch_spec(gpu_replica_set.PLURAL, key.namespace, key.name,
                                      {**shape, "rollbackTo": None})
                return [Event("Normal", Reason.ROLLED_BACK, f"spec of revision {revision} "
                              "written back; spec.rollbackTo cleared")]
            case act.PruneRevision(record=record):
                if record.preserved_image and not docker.remove_image(record.preserved_image):
                    return []  # still in use; pruned on a later pass
                self.disks.remove_layers(record)
                self._crash.reach("PruneRevision.diskRemoved")
                store.delete(record.namespace, record.name, record.revision)
                return [Event("Normal", Reason.REVISION_PRUNED, f"revision {record.revision} "
                              "pruned (revisionHistoryLimit)")]
            case act.MoveHistory(retags=retags, records=records, removed=removed,
                                 reason=reason, message=message):
                for source, target in retags:
                    docker.tag_image(source, target)
                for record in records:
                    store.put(record)
                for record in removed:
                    store.delete(record.namespace, record.name, record.revision)
                for source, _ in retags:
                    docker.remove_image(source)  # only the tag: the image has its new one
                return [Event("Normal", reason, message)]
            case act.PurgeHistory(namespace=namespace, name=name, images=images,
                                  layers=layers):
                for image in sorted(images, reverse=True):
                    docker.remove_image(image)
                self.disks.remove_saved(layers)
                volumes = docker.remove_volumes(namespace, name)
                store.delete_all(namespace, name)
                return [Event("Normal", Reason.HISTORY_PURGED, f"{len(images) + len(layers)} "
                              "saved disks, "
                              f"{volumes} image volumes and every revision record removed "
                              "(historyPolicy Purge)")]
        raise AssertionError(f"unknown action {action!r}")  # pragma: no cover

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
            self._deleted.add(meta["uid"])
            records = tuple(self._store.list(key.namespace, key.name))
            actions = history.plan_delete(key, tuple(self._docker.list_containers()), records,
                                       self.disks.saved(key, records), policy)
            events += self._retire(key, actions)
        return events

    def _retire(self, key: ResourceKey, actions: tuple[act.Action, ...]) -> list[Event]:
        """A delete's steps; a disk that cannot be saved (UNSAVED_ON_DELETE) is not,
        and its container removed all the same: a delete never waits on a save."""
        events: list[Event] = []
        unsaved: set[str] = set()
        for action in actions:
            saving = getattr(action, "container_id", None) if isinstance(
                action, act.PreserveDisk | act.StopContainer) else None
            if saving in unsaved and isinstance(action, act.PreserveDisk):
                continue
            try:
                events += self._execute(key, action)
            except UserError as exc:
                if saving is None or exc.reason not in UNSAVED_ON_DELETE:
                    raise
                unsaved.add(saving)
                events.append(Event("Warning", Reason.DISK_NOT_SAVED, (
                    f"{getattr(action, 'name', saving)} removed without its disk saved, as "
                    f"its resource is deleted ({exc.reason}: {exc.message})")))
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
                    (body.get("spec") or {}).get("nodeName"), meta.get("finalizers") or (),
                    node)):
                orphans.append((owner, uid))
        done = []
        for key, uid in orphans:
            with self._locks.resource(key):
                containers = tuple(c for c in self._docker.list_containers()
                                   if c.owner == key and c.uid == uid)
                records = tuple(self._store.list(key.namespace, key.name))
                actions = history.plan_delete(key, containers, records,
                                           self.disks.saved(key, records), HistoryPolicy.RETAIN)
                self._retire(key, actions)
            done.append(f"{key} (uid {uid}): resource gone; {len(containers)} container(s) "
                        "saved and removed")
        return done
