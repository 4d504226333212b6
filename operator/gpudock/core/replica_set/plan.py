"""The GpuReplicaSet decision: (desired, observed) -> actions + status.

Pure: it reads an :class:`Observation` (Docker's containers, the revision records, the
saved disks) and returns a :class:`Plan`. The reconciler runs the actions, observes
again and plans again until nothing is left to do. Every step is chosen from what is
observed, never from memory, so an agent killed at any step picks up where it died:

1. containers of an earlier resource of this name, or of an older revision: stop,
   save the disk if not saved yet, remove;
2. a spec change (or spec.rollbackTo): check GPUs/ports/image first, then stop the
   container and save its disk, then record revision N+1 and create its container
   from that disk (the old one is removed by 1). On overlay2 a saved disk is a copy of
   the container's writable layer (a directory under the layer root) and the new
   container is made from the same image with that copy put in before it first
   starts; elsewhere it is ``docker commit`` to ``gpudock-preserved/<ns>_<name>:rev-N``
   and the new container is made from that image;
3. a finished rollback: write the revision's spec back and clear spec.rollbackTo;
4. state Stopped: save the disk and remove the container (GPUs and ports free);
   Paused: stop it, keep it (GPUs and ports stay reserved); Running: keep it running.

This module is the flow; admission.py checks a new container against the node,
saved_disks.py names and finds saved disks, history.py keeps the revision records.
"""

from __future__ import annotations

from dataclasses import replace

from gpudock.api.gpu_replica_set import DesiredState
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.container_config import RESTART_POLICY
from gpudock.core.observed import ObservedContainer, current_of
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set import status
from gpudock.core.replica_set.admission import container_for, image_id_for
from gpudock.core.replica_set.gpu_failure import degraded, replacement_cause
from gpudock.core.replica_set.history import (
    adopt,
    adopted_record,
    failed_attempt,
    failure,
    new_record,
    next_revision,
    prune,
    retire,
    retire_all,
    set_aside,
)
from gpudock.core.replica_set.observation import Observation, Plan, Target
from gpudock.core.replica_set.pulls import pull_first
from gpudock.core.replica_set.redeploy import only_redeploy, redeploy_cause, spec_fields
from gpudock.core.replica_set.resize import resize
from gpudock.core.replica_set.saved_disks import (
    disk_of,
    is_preserved,
    save,
    save_target,
    saved_disk_of,
)
from gpudock.core.replica_set.status import Seen, bindings_of
from gpudock.core.revision import Revision
from gpudock.errors import UserError

# The phase a step under way shows (by its Progressing reason); any other: Reconciling.
_PHASES = {Reason.ROLLING_OUT: "Updating", Reason.ROLLING_BACK: "Updating",
           Reason.STOPPING: "Stopping", Reason.RECORDING: "Updating",
           Reason.CREATING: "Creating", Reason.PULLING: "Creating"}


# --------------------------------------------------------------------------- the flow
def plan_replica_set(obs: Observation) -> Plan:
    plan = _plan(obs)
    return replace(plan, status=degraded(obs, current_container(obs), plan.status))


def _plan(obs: Observation) -> Plan:
    mine = [c for c in obs.containers if c.owner == obs.key]
    stale = [c for c in mine if c.uid != obs.uid]  # an earlier resource of this name
    if stale:
        steps = retire_all(obs.key, obs.records, obs.saved, stale,
                           Reason.REMOVED_STALE)
        return _progress(obs, None, None, steps, Reason.CLEANING,
                         "saving and removing an earlier resource's containers")
    if len(obs.own_records) < len(obs.records):
        return _progress(obs, None, None, (set_aside(obs),), Reason.CLEANING,
                         "keeping the history of an earlier resource of this name apart")
    if obs.adoptable and not obs.records:
        return _progress(obs, None, None, (adopt(obs),), Reason.ADOPTING,
                         "adopting the retained history of the deleted resource")
    if obs.node_name and obs.spec.node_name and obs.spec.node_name != obs.node_name:
        return blocked_plan(obs, UserError(Reason.NODE_NAME_CHANGED, (
            f"spec.nodeName was changed to {obs.spec.node_name}; this resource's "
            f"container and disk are on node {obs.node_name}, where it serves until a "
            "GpuMigration has moved it with its disk (kubectl get gmig shows it and why "
            f"it could not move). Set spec.nodeName back to {obs.node_name} to keep it "
            "here (nothing was changed meanwhile)")))
    current = current_container(obs)
    older = [c for c in mine if current is not None and c.id != current.id]
    record = _record_of(obs, current)
    if older:  # a rollout whose new container exists: the old one goes
        return _progress(obs, current, record,
                         retire_all(obs.key, obs.records, obs.saved, older,
                                    Reason.PREVIOUS_REVISION_REMOVED),
                         Reason.ROLLING_OUT, "removing the previous revision's container")
    try:
        target = _target(obs, record)
        if target is None:
            assert record is not None
            assert record.rollback_of is not None
            return _progress(obs, current, record,
                             (act.WriteSpec(spec_fields(record.spec), record.rollback_of),),
                             Reason.ROLLING_BACK,
                             f"writing revision {record.rollback_of}'s spec back")
        if current is not None:
            return _with_container(obs, current, record, target)
        return _without_container(obs, record, target)
    except UserError as exc:
        return blocked_plan(obs, exc)


def blocked_plan(obs: Observation, error: UserError) -> Plan:
    """Nothing can be done until the user (or the node) changes something."""
    current = current_container(obs)
    seen = _seen(obs, current, _record_of(obs, current))
    return Plan((), status.blocked(seen, error), recheck_after=_recheck(obs, current))


def _seen(obs: Observation, current: ObservedContainer | None,
          record: Revision | None) -> Seen:
    return Seen(obs.records, obs.generation, current, record, obs.previous_status, obs.now)


def _recheck(obs: Observation, current: ObservedContainer | None) -> float | None:
    """A container restarted by Docker counts as serving once it has run a while:
    look again then."""
    return status.unsettled_for(current, obs.now) if current is not None else None


def current_container(obs: Observation) -> ObservedContainer | None:
    return current_of(obs.containers, obs.key, obs.uid)


def _record_of(obs: Observation, current: ObservedContainer | None) -> Revision | None:
    """The record of the current revision: the container's, else the latest one this
    resource made (a Stopped resource has no container). Failed revisions never ran:
    they are nobody's current record."""
    mine = [r for r in obs.own_records if not r.failed]
    if current is not None:
        return next((r for r in mine if r.revision == current.revision), None)
    return mine[-1] if mine else None


def _target(obs: Observation, record: Revision | None) -> Target | None:
    """None when the rollback asked for is done (only the spec is left to write)."""
    wanted = obs.spec.rollback_to
    if wanted is None:  # a new value of gpudock.dev/redeploy alone: a redeploy
        redeploy = record is not None and only_redeploy(obs.spec, record.spec)
        return Target(obs.spec, redeploy_cause(obs.spec) if redeploy else obs.change_cause)
    if record is not None and record.rollback_of == wanted and \
            record.generation == obs.generation:
        return None
    source = next((r for r in obs.records if r.revision == wanted), None)
    if source is None or source.failed:
        known = ", ".join(str(r.revision) for r in obs.records if not r.failed) or "none"
        never = " (it never ran)" if source is not None else ""
        raise UserError(Reason.REVISION_NOT_FOUND, f"spec.rollbackTo.revision {wanted} cannot be "
                        f"restored{never}; revisions that can: {known}. Remove "
                        "spec.rollbackTo or pick one of them; nothing was changed")
    if record is not None and wanted == record.revision:
        raise UserError(Reason.ROLLBACK_TO_CURRENT, f"revision {wanted} is the current revision; "
                        "remove spec.rollbackTo")
    disk = saved_disk_of(obs.saved, obs.images_present, source)
    if disk is None:
        raise UserError(Reason.REVISION_DISK_GONE, f"the saved disk of revision {wanted} no "
                        "longer exists; it cannot be restored")
    return Target(obs.spec.with_shape(source.spec), f"rolled back to revision {wanted}",
                  rollback_of=wanted, source=disk)


def _with_container(obs: Observation, current: ObservedContainer, record: Revision | None,
                    target: Target) -> Plan:
    if record is None:  # made before revisions were recorded: adopt it first
        return _progress(obs, current, None, (act.RecordRevision(
            adopted_record(obs, current), Reason.REVISION_ADOPTED),), Reason.RECORDING,
            f"recording {current.name} as revision {current.revision}")
    if obs.spec.state is DesiredState.STOPPED:
        return _progress(obs, current, record, retire(obs.key, obs.saved, current,
                                                      record, Reason.STOPPED),
                         Reason.STOPPING, f"saving the disk of {current.name} and releasing "
                         "its GPUs and ports")
    moved = _moved_volume(obs, current) or replacement_cause(obs, current)
    if target.rollback_of is None and target.spec.matches(record.spec):
        if moved is None:  # cpu, memory, pids change in place (resize.py)
            resized = resize(obs, current, record, target.spec)
            if isinstance(resized, act.UpdateLimits):
                return _progress(obs, current, record, (resized,), Reason.RECONCILING,
                                 f"updating the limits of {current.name} in place: "
                                 f"{resized.limits.describe()}", drift=None
                                 if resized.note else f"limits of {current.name} were "
                                 "changed behind the agent's back")
            if resized is None:
                return _keep(obs, current, record)
            moved = resized
        target = replace(target, cause=moved)
    failed = failed_attempt(obs, record, target)
    if failed is not None:  # the change was tried and Docker refused it
        return _keep(obs, current, record, failed)
    revision = next_revision(obs, current.revision)
    carries = target.source is None and current.base_image == target.spec.image
    preserved = is_preserved(obs.saved, current, record)
    disk = target.source
    if carries:  # the disk its save makes, or made
        disk = saved_disk_of(obs.saved, obs.images_present, record) if preserved \
            else save_target(obs.key, obs.saved, current, record)
        if disk is None:  # saved over an image that is gone since: never start bare
            raise UserError(Reason.REVISION_DISK_GONE, f"the saved disk of {current.name} is "
                            f"over image {record.image}, which is no longer on the node; "
                            "load it again (nothing was changed)")
    pull = pull_first(obs, target.spec, disk)
    if pull is not None and pull.pull:  # while the old container still serves
        return _progress(obs, current, record, (pull,), Reason.ROLLING_OUT,
                         f"rolling out revision {revision}: pulling image {pull.image}")
    # Everything the new revision needs is checked before the old container stops.
    config = container_for(obs, target.spec, revision, disk, current.gpus,
                           bindings_of(current), carried_volumes=current.volumes,
                           held_address=current.address)
    # The whole rollout is one plan: save the disk (unless a pass cut short saved it
    # already), start the new revision on it, remove the old container. Each step is
    # also where a resumed rollout picks up: the next observation shows what was done.
    saving = () if preserved else save(obs.key, obs.saved, current, record)
    new = new_record(obs, target, revision, config.image, config.gpus, config.ports,
                     disk.layer if disk else None, disk.image_id if disk else None,
                     config.address)
    steps = (*((pull,) if pull else ()), *saving,
             act.StartRevision(new, config, start=obs.spec.state is DesiredState.RUNNING,
                               layer=new.layer, saved_from=current.id if carries and
                               new.layer else None),
             act.RemoveContainer(current.id, current.name, Reason.PREVIOUS_REVISION_REMOVED))
    what = f"saving the disk of {current.name}, then " if saving else ""
    plan = _progress(obs, current, record, steps, Reason.ROLLING_OUT,
                     f"rolling out revision {revision}: {what}starting it and removing "
                     "the previous revision's container")
    return replace(plan, next_config=config, next_carries_disk=carries)


def _without_container(obs: Observation, record: Revision | None, target: Target) -> Plan:
    running = obs.spec.state is DesiredState.RUNNING
    if record is not None and record.migrated_from and target.rollback_of is None and \
            target.spec.matches(record.spec):  # brought here: a new revision says so
        target = replace(target, cause=f"migrated from {record.migrated_from} to "
                         f"{obs.node_name}")
    elif record is not None and target.spec.matches(record.spec) and \
            target.rollback_of is None:
        if obs.spec.state is DesiredState.STOPPED:
            return Plan(prune(obs, record), status.settled(_seen(obs, None, record),
                                                           "Stopped"))
        disk = disk_of(obs.saved, obs.images_present, record)
        pull = pull_first(obs, target.spec, disk)
        if pull is not None and pull.pull:
            return _pulling(obs, record, pull)
        config = container_for(obs, target.spec, record.revision, disk, record.gpus,
                               record.ports, held_address=record.address)
        # The record says what the new container is made from, as for a new revision.
        again = replace(record, spec=target.spec.shape(),  # limits changed meanwhile
                        container_name=config.name, gpus=config.gpus,
                        ports=config.ports, image=config.image,
                        layer=disk.layer if disk else None,
                        image_id=image_id_for(obs, disk, config.image),
                        address=config.address)
        # Whether its container went behind the agent's back is in the record: one
        # that ran and was not saved and removed by the agent (state Stopped).
        ran = record.container_id is not None
        retired = ran and record.preserved_from == record.container_id
        reason = Reason.RESUMED if retired else Reason.RECREATED if ran \
            else Reason.REVISION_STARTED
        return _progress(obs, None, record, (*((pull,) if pull else ()), act.StartRevision(
            again, config, start=running, reason=reason, layer=again.layer)),
            Reason.CREATING, f"creating container {config.name}",
            drift="container was removed" if ran and not retired else None)
    failed = failed_attempt(obs, record, target)
    if failed is not None:
        return blocked_plan(obs, failure(failed, None))
    revision = next_revision(obs, record.revision if record else 0)
    source = target.source
    if source is None and record is not None and record.spec.get("image") == target.spec.image:
        source = disk_of(obs.saved, obs.images_present, record)
    layer = source.layer if source else None
    if obs.spec.state is DesiredState.STOPPED:  # applied now, started when Running
        image = source.image if source else target.spec.image
        new = new_record(obs, target, revision, image, record.gpus if record else (),
                         record.ports if record else (), layer,
                         source.image_id if source else None,
                         record.address if record else "")
        return _progress(obs, None, record, (act.RecordRevision(new),), Reason.RECORDING,
                         f"recording revision {revision} (not started: state Stopped)")
    pull = pull_first(obs, target.spec, source)
    if pull is not None and pull.pull:
        return _pulling(obs, record, pull)
    config = container_for(obs, target.spec, revision, source, record.gpus if record
                           else (), record.ports if record else (),
                           held_address=record.address if record else "")
    return _progress(obs, None, record, (*((pull,) if pull else ()), act.StartRevision(
        new_record(obs, target, revision, config.image, config.gpus, config.ports, layer,
                   source.image_id if source else None, config.address),
        config, start=running,
        reason=Reason.CREATED if record is None else Reason.REVISION_STARTED, layer=layer),),
        Reason.CREATING, f"creating container {config.name}")


def _pulling(obs: Observation, record: Revision | None, pull: act.PullImage) -> Plan:
    return _progress(obs, None, record, (pull,), Reason.PULLING,
                     f"pulling image {pull.image}")


def _keep(obs: Observation, current: ObservedContainer, record: Revision,
          failed: Revision | None = None) -> Plan:
    """The container already is the revision to run (or, after a failed change, the
    one to run again): repair what drifted, bring it to spec.state."""
    expected = labels.object_name(obs.key.namespace, obs.key.name, current.revision)
    actions: list[act.Action] = []
    drift: list[str] = []
    if current.name != expected:
        actions.append(act.RenameContainer(current.id, current.name, expected))
        drift.append(f"container was renamed to {current.name}")
    if current.restart_policy != RESTART_POLICY:
        actions.append(act.SetRestartPolicy(current.id, expected, RESTART_POLICY))
        drift.append(f"restart policy was changed to {current.restart_policy or 'none'}")
    waiting = [m.volume for m in obs.spec.mounts
               if m.volume is not None and not obs.volume_names.get(m.volume)]
    if obs.spec.state is DesiredState.RUNNING and waiting and not current.running:
        # A volume it mounts is being resized (its agent stopped it) or not there.
        return blocked_plan(obs, UserError(Reason.VOLUME_NOT_READY, f"SizedVolume {waiting[0]} "
                                           "is not ready (being resized?); the container "
                                           "starts when it is"))
    if obs.spec.state is DesiredState.RUNNING and current.id in obs.stale_tasks \
            and not current.running:
        # containerd refuses every start of it (a task kept from a start cut short by
        # a restart of Docker): its disk is saved and the container removed, and the
        # next pass makes it again from that disk, as after state Stopped (found by
        # the soak: it stayed down for good).
        return _progress(obs, current, record, retire(obs.key, obs.saved, current, record,
                                                      Reason.RECREATED),
                         Reason.RECONCILING, f"saving the disk of {current.name} to make it "
                         "again: containerd kept a task of it from a start cut short")
    if obs.spec.state is DesiredState.RUNNING:
        if current.status == "paused":
            actions.append(act.UnpauseContainer(current.id, expected))
            drift.append("container was paused")
        elif current.status == "created":  # never started: its saved layer goes in first
            actions.append(act.StartContainer(current.id, expected, layer=record.layer))
        elif not current.running:
            # Stopped by the agent (state Paused, or for a save) or behind its back:
            # the record says which.
            paused = record.paused_container == current.id
            saved = record.preserved_from == current.id
            reason = (Reason.RESUMED if paused else Reason.PREVIOUS_REVISION_RESTORED
                      if failed else Reason.RESTARTED)
            actions.append(act.StartContainer(current.id, expected, reason, note=replace(
                record, paused_container=None) if paused else None))
            if not (paused or saved):
                drift.append(f"container had {current.status} (exit code "
                             f"{current.exit_code})")
    elif current.running or current.status == "paused":  # Paused
        actions.append(act.StopContainer(current.id, expected, Reason.PAUSED,
                                         note=replace(record, paused_container=current.id)))
    note = "; ".join(drift) or None
    if failed is not None:
        error = failure(failed, record)
        if actions:
            return replace(_progress(obs, current, record, tuple(actions), Reason.RECONCILING,
                                     error.message), drift=note)
        return blocked_plan(obs, error)
    if actions:
        return _progress(obs, current, record, tuple(actions), Reason.RECONCILING,
                         f"bringing {expected} to state {obs.spec.state}", drift=note)
    return Plan(prune(obs, record), status.settled(_seen(obs, current, record),
                                                   str(obs.spec.state)),
                recheck_after=_recheck(obs, current))


def _moved_volume(obs: Observation, current: ObservedContainer) -> str | None:
    """Why the container must move to a new revision although its spec is the same:
    a SizedVolume it mounts now lives in another Docker volume (the copy backend
    resized it). None when every volume it mounts is where the volume is now."""
    for mount in obs.spec.mounts:
        now = obs.volume_names.get(mount.volume or "")
        mounted = current.volumes.get(mount.mount_path)
        if mount.volume is not None and now and mounted and mounted != now:
            return f"SizedVolume {mount.volume} moved to Docker volume {now}"
    return None


def _progress(obs: Observation, current: ObservedContainer | None, record: Revision | None,
              actions: tuple[act.Action, ...], reason: Reason, message: str,
              drift: str | None = None) -> Plan:
    phase = _PHASES.get(reason, "Reconciling")
    return Plan(actions, status.progressing(_seen(obs, current, record), phase, reason,
                                            message), drift)
