"""The steps of a GpuReplicaSet's plan, run against Docker, the revision store, the
disk saves and the API server. Each step reaches its crash points (crash_points.py)
before and after; the one step that takes GPUs, host ports or an address, creating a
container, runs under the node lock after the node was looked at again.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from typing import NoReturn

from gpudock import metrics
from gpudock.adapters import host_paths
from gpudock.adapters.docker.errors import HostPortBusyError, StaleTaskError
from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.agent.disk_saves import DiskSaves
from gpudock.agent.migration_arrivals import Arrivals
from gpudock.agent.node_locks import NodeLocks
from gpudock.agent.replica_set_outcome import Event
from gpudock.agent.replica_set_pulls import ImagePulls, Report
from gpudock.api import gpu_replica_set
from gpudock.api.container_limits import LIMIT_FIELDS
from gpudock.api.reasons import Reason
from gpudock.core.allocation import Ledger
from gpudock.core.container_config import ContainerConfig
from gpudock.core.observed import HostPort, ResourceKey
from gpudock.core.ports import ContainerRuntime, KubeClient
from gpudock.core.replica_set import actions as act
from gpudock.core.revision import RevisionStore, layer_let_go
from gpudock.crash_points import CrashPoints
from gpudock.errors import InternalError


class Contended(InternalError):  # noqa: N818 - a signal to plan again, never shown
    """What a pass planned to take was taken by another resource meanwhile (caught in
    reconcile; one that escaped it would be a bug)."""


class Replan(InternalError):  # noqa: N818 - a signal to plan again, never shown
    """A step came out otherwise than the plan's later steps assume: plan again from
    what is observed now (the events of the step done are kept)."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__("planned again")
        self.events = events


class ReplicaSetSteps:
    def __init__(self, docker: ContainerRuntime, kube: KubeClient, store: RevisionStore,
                 disks: DiskSaves, locks: NodeLocks, crash: CrashPoints,
                 host_paths: HostPathPolicy, pulls: ImagePulls,
                 arrivals: Arrivals | None = None) -> None:
        self._docker = docker
        self._arrivals = arrivals or Arrivals()
        self.pulls = pulls
        self._kube = kube
        self._store = store
        self._crash = crash
        self._locks = locks
        self._host_paths = host_paths
        self.disks = disks
        # Containers that ran and whose start containerd refuses (a stale task): the
        # next plan saves and makes them again (plan.py).
        self.stale_tasks: set[str] = set()

    def execute(self, key: ResourceKey, action: act.Action,
                report: Report | None = None) -> list[Event]:
        """Run one step; ``report`` is told a pull's progress (PullImage)."""
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
                    events = (self.pulls.ensure(key, action, report)
                              if isinstance(action, act.PullImage)
                              else self._run_step(key, action))
                except Replan:
                    self._crash.reach(f"{step}.after")  # the step is done all the same
                    raise
        self._crash.reach(f"{step}.after")
        return events

    def _check_still_free(self, key: ResourceKey, config: ContainerConfig) -> None:
        """Raises Contended when another resource's container holds one of the GPUs,
        host ports or the address ``config`` takes (the rule of core/allocation.py's
        Ledger), or a migration holds one of the GPUs for another instance."""
        ledger = Ledger.from_containers(self._docker.list_containers())
        gpus = set(config.gpus) & (ledger.gpus_held_by_others(key)
                                   | self._arrivals.gpus_for_others(key))
        ports = {HostPort(p.host_port, p.protocol) for p in config.ports} & \
            ledger.ports_held_by_others(key)
        address = config.address in ledger.addresses_held_by_others(key)
        if gpus or ports or address:
            raise Contended(f"{key}: taken meanwhile: GPUs {sorted(gpus)}, "
                             f"ports {sorted(str(p) for p in ports)}"
                             + (f", address {config.address}" if address else ""))

    def _make_anew(self, key: ResourceKey, container_id: str, name: str,
                   exc: StaleTaskError | HostPortBusyError) -> NoReturn:
        """A container Docker cannot start because containerd kept a task of it from a
        start cut short (a restart of Docker or containerd), or because Docker says its
        host port is allocated (a start cut short by a restart of Docker leaves
        Docker's own allocation of it behind, and every later start of that container
        fails: found by the soak): one that never ran holds nothing of the user's (its
        disk is the saved one it was made from), so it is removed and the next plan
        makes it again. One that ran is never removed unsaved: for a stale task the
        next plan saves its disk, removes it and makes it again from that disk (the
        soak found such a container down for good); for a port the error stands,
        with its message, until the port is free."""
        found = next((c for c in self._docker.list_containers() if c.id == container_id),
                     None)
        if found is not None and found.status != "created" and \
                isinstance(exc, StaleTaskError) and container_id not in self.stale_tasks:
            self.stale_tasks.add(container_id)
            raise Replan([Event("Warning", Reason.RECREATED, (
                f"container {name} could not be started ({exc}); its disk is saved and "
                "it is made again from it"))])
        if found is None or found.status != "created":
            raise exc
        self._docker.remove(container_id, name)
        for record in self._store.list(key.namespace, key.name):
            if record.container_id == container_id:  # made again: not drift
                self._store.put(replace(record, container_id=None))
        raise Replan([Event("Warning", Reason.RECREATED, (
            f"container {name} could not be started ({exc}); it never ran, so it was "
            "removed and is made again"))])

    def _run_step(self, key: ResourceKey, action: act.Action) -> list[Event]:
        docker, store = self._docker, self._store
        match action:
            case act.StartRevision(record=record, config=config, start=start, reason=reason,
                                   layer=layer, saved_from=saved_from):
                checked = self._checked_again(key, config)  # refused: no record is left
                before = store.get(record.namespace, record.name, record.revision)
                store.put(record)  # first: a crash after it leaves a record, no orphan
                self._crash.reach("StartRevision.recorded")
                container_id = docker.create_and_start(checked, start=start, prepare=(
                    functools.partial(self.disks.put_layer, layer, config.name,
                                      saved_from=saved_from)
                    if layer is not None else None))
                # Made by the agent: a later disappearance is drift, not a new start.
                store.put(replace(record, container_id=container_id))
                self.disks.remove_saved([layer_let_go(
                    before, record, store.list(record.namespace, record.name))])
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
                    # Saved otherwise than planned (no layer where the plan put it):
                    # the steps after it were made for that layer.
                    raise Replan(events)
                return events
            case act.StartContainer(container_id=cid, name=name, reason=reason, note=note,
                                    layer=layer):
                if layer is not None:  # unless a start cut short by a crash put it in
                    self.disks.put_layer(layer, name, cid, unless_there=True)
                try:
                    docker.start(cid, name)
                except (StaleTaskError, HostPortBusyError) as exc:
                    self._make_anew(key, cid, name, exc)
                if note is not None:
                    store.put(note)
                return [Event("Normal", reason, f"container {name} started")]
            case act.StopContainer(container_id=cid, name=name, reason=reason, saving=saving,
                                   note=note, layer=layer, previous=previous):
                if saving:
                    self.disks.check_room(cid, name)
                    if layer is not None:  # while it serves: the save copies what changes
                        self.disks.pre_copy(cid, name, layer, previous)
                        self._crash.reach("StopContainer.preCopied")
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
            case act.UpdateLimits(container_id=cid, name=name, limits=limits, note=note):
                docker.update_limits(cid, name, limits)
                if note is not None:  # after: a crash between is seen and done again
                    store.put(note)
                return [Event("Normal", Reason.LIMITS_UPDATED, f"limits of {name} updated "
                              f"in place: {limits.describe()}")]
            case act.WriteSpec(shape=shape, revision=revision):
                # A limit the revision did not set is removed from the spec (a merge
                # patch keeps what it does not name): the spec then is the revision's.
                self._kube.patch_spec(gpu_replica_set.PLURAL, key.namespace, key.name,
                                      {**dict.fromkeys(LIMIT_FIELDS), **shape,
                                       "rollbackTo": None})
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

    def _checked_again(self, key: ResourceKey, config: ContainerConfig) -> ContainerConfig:
        """Resolve every bind source once more just before Docker mounts it (the
        plan's check may be a pass old), against the roots of the resource's
        namespace, and note what it is, for the check after start; raises UserError
        when it no longer passes."""
        mounts = []
        for mount in config.mounts:
            if not mount.is_volume:
                real = self._host_paths.resolve(mount.source, namespace=key.namespace,
                                                read_only=mount.read_only)
                mount = replace(mount, source=real, identity=host_paths.identity(real))
            mounts.append(mount)
        return replace(config, mounts=tuple(mounts))

