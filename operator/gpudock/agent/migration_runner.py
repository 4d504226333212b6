"""The source's side of a migration: choose and ask the target, stop the instance,
send its image, disks and history, move the binding, then clean the source
(docs/migration.md). Runs in the source agent, one thread per GpuMigration.

Never lose the user's data: until the binding and this node's finalizer have moved
to the target, the source keeps its container, disks and records, and every failure
or cancel starts the same container again. The binding is a compare-and-set of
status.nodeName; the target's finalizer is added before the source's is removed, so
the resource is never held by nobody.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpudock.adapters import migration_wire, overlay_layers
from gpudock.adapters.kube_api import ObjectNotFoundError
from gpudock.adapters.migration_wire import Channel, RefusedError, WireError
from gpudock.adapters.tree_stream import TreeSender
from gpudock.adapters.user_trees import tree_usage
from gpudock.agent import migration_targets, migration_volumes
from gpudock.agent.migration_context import (
    MIGRATED_PREFIX,
    MigrationContext,
    MigrationError,
    Show,
    SwitchRefusedError,
    precise_now,
    stopped_for_the_move,
    volume_tree,
)
from gpudock.agent.migration_switch import Switch
from gpudock.agent.migration_targets import choose_target
from gpudock.api import gpu_migration, gpu_replica_set, ownership
from gpudock.api.gpu_migration import GpuMigrationSpec, Phase
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.placement import bound_node
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.revision import Revision, layers_named
from gpudock.crash_points import CrashPoints
from gpudock.errors import GpudockError, SpecError

logger = logging.getLogger(__name__)
GRS = gpu_replica_set.PLURAL
GPU_NODES = migration_targets.GPU_NODES


class MigrationRunner:
    def __init__(self, agent: MigrationContext) -> None:
        self._agent = agent
        # Wakes a GpuReplicaSet's daemon by UID, from any thread (set at start-up).
        self.wake: Callable[[str], None] = lambda uid: None
        self._tokens: dict[str, str] = {}  # by GpuMigration UID: for an abort
        self._crash = CrashPoints(agent.settings.crash_at)
        self._switch = Switch(agent, self._crash, lambda uid: self.wake(uid))
        # On a target: give back an instance whose source asks for it (a fallback).
        self.give_back = self._switch.fallback.give_back
        self.slots = threading.BoundedSemaphore(agent.settings.max_outbound_migrations)

    @property
    def _node(self) -> str:
        return self._agent.settings.node_name

    # ------------------------------------------------------------------------- entry
    def run(self, body: dict[str, Any], cancelled: Callable[[], bool],
            show: Show) -> bool:
        """Drive one GpuMigration to its end; False when it must wait (no outbound
        slot), to be called again."""
        status = dict(body.get("status") or {})
        phase = gpu_migration.phase_of(body)
        if phase is Phase.SWITCHING:
            try:
                self._switch.finish(body, status, show)
            except SwitchRefusedError as exc:
                self._resume_here(body, status)
                self._end(show, status, exc)
            return True
        if phase in (Phase.RESERVING, Phase.TRANSFERRING):  # the agent died meanwhile
            self._resume_here(body, status)
            self._end(show, status, MigrationError(Reason.MIGRATION_FAILED, (
                "the source agent restarted during the transfer; the instance runs on "
                f"node {self._node} as before")))
            return True
        if not self.slots.acquire(blocking=False):
            show({**status, "phase": Phase.PENDING, "reason": Reason.MIGRATING,
                  "message": f"waiting: {self._agent.settings.max_outbound_migrations} "
                  f"migrations are leaving node {self._node} already"})
            return False
        try:
            return self._migrate(body, status, cancelled, show)
        finally:
            self.slots.release()

    def _end(self, show: Show, status: dict[str, Any], error: MigrationError) -> None:
        show({**status, "phase": error.phase, "reason": error.reason,
              "message": error.message, "completionTime": self._agent.now()})

    # ---------------------------------------------------------------- before switching
    def _migrate(self, body: dict[str, Any], status: dict[str, Any],
                 cancelled: Callable[[], bool], show: Show) -> bool:
        """Drive it to its end (True), or to a wait for room (False)."""
        meta = body["metadata"]
        namespace = meta["namespace"]
        try:
            spec = GpuMigrationSpec.parse(body.get("spec") or {})
            grs, rs_spec, records = self._check(body, spec)
            volumes = migration_volumes.exclusive(self._agent, namespace,
                                                  spec.replica_set_name, rs_spec)
            target, endpoint = choose_target(self._agent, spec, grs, volumes)
            migration_volumes.check_pins(volumes, target)
        except SpecError as exc:
            self._end(show, status, MigrationError(Reason.INVALID_SPEC, exc.message))
            return True
        except MigrationError as exc:
            if migration_targets.waits_for_room(self._agent, body, status, exc, show):
                return False
            self._end(show, status, exc)
            return True
        token = migration_wire.new_token()
        self._tokens[meta["uid"]] = token
        status.update({"phase": Phase.RESERVING, "reason": Reason.MIGRATING,
                       "message": f"asking node {target}", "sourceNode": self._node,
                       "targetNode": target, "replicaSetUID": grs["metadata"]["uid"],
                       "startTime": self._agent.now(), "bytesDone": 0, "bytesTotal": 0,
                       "transferTokenSha256": migration_wire.token_digest(token),
                       migration_volumes.STATUS_FIELD: [v.to_json() for v in volumes]})
        show(status)
        key = ResourceKey(namespace, spec.replica_set_name)
        halted: list[ObservedContainer] = []  # the container stopped for the move
        channel: Channel | None = None
        try:
            channel = migration_wire.connect(endpoint["address"], int(endpoint["port"]),
                                             self._agent.settings.migration_bandwidth,
                                             cancelled, str(endpoint["caBundle"]))
            channel.send({"op": "hello", "token": token, "purpose": "transfer",
                          "migration": {"namespace": namespace, "name": meta["name"]}})
            channel.keyed(token)
            channel.receive()  # welcome
            self._transfer(channel, key, grs, rs_spec, records, status, show, halted)
        except Exception as exc:  # whatever broke before Switching: the source runs on
            if channel is not None:
                channel.close()
            error = exc if isinstance(exc, MigrationError) else MigrationError(
                Reason(exc.code) if isinstance(exc, RefusedError) and exc.code in tuple(Reason)
                else exc.reason if isinstance(exc, WireError) else Reason.TRANSFER_FAILED,
                str(exc))
            if cancelled():
                error = MigrationError(Reason.MIGRATION_CANCELLED, "the GpuMigration was "
                                       "deleted before Switching", Phase.CANCELLED)
            if not isinstance(exc, WireError | GpudockError | OSError):
                logger.exception("%s: migration failed", key)
            self._undo(key, halted[0] if halted else None, body, status)
            if not halted and not cancelled() and migration_targets.waits_for_room(
                    self._agent, body, status, error, show):
                self._switch.show_instance(key, status, down=False)
                return False  # the target refused for room before anything stopped
            error.message += f"; the instance runs on node {self._node} as before"
            self._switch.show_instance(key, {**status, "phase": error.phase}, down=False)
            self._end(show, status, error)
            return True
        channel.close()
        self._crash.reach("Migrate.transferred")
        status.update({"phase": Phase.SWITCHING, "message": f"moving the binding to {target}"})
        show(status)
        try:
            self._switch.finish(body, status, show)
        except SwitchRefusedError as exc:
            self._undo(key, halted[0] if halted else None, body, status)
            exc.message += f"; the instance runs on node {self._node} as before"
            self._switch.show_instance(key, {**status, "phase": exc.phase}, down=False)
            self._end(show, status, exc)
        return True

    def _check(self, body: dict[str, Any], spec: GpuMigrationSpec,
               ) -> tuple[dict[str, Any], GpuReplicaSetSpec, list[Revision]]:
        namespace = body["metadata"]["namespace"]
        try:
            grs = self._agent.kube.get(GRS, namespace, spec.replica_set_name)
        except ObjectNotFoundError as exc:
            raise MigrationError(Reason.REPLICA_SET_NOT_FOUND, f"GpuReplicaSet "
                                 f"{spec.replica_set_name} does not exist") from exc
        rs_spec = GpuReplicaSetSpec.parse(grs.get("spec") or {})
        if rs_spec.node_name and rs_spec.node_name != spec.target_node:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"it is pinned to node "
                                 f"{rs_spec.node_name} by spec.nodeName; change "
                                 "spec.nodeName to move it there")
        meta = grs["metadata"]
        held = ownership.holds((grs.get("status") or {}).get("nodeName"),
                               meta.get("finalizers") or (), self._node)
        if not (held or bound_node(grs) == self._node) or meta.get("deletionTimestamp"):
            raise MigrationError(Reason.NOT_MIGRATABLE, "it is not bound to node "
                                 f"{self._node} (or it is being deleted)")
        uid = grs["metadata"]["uid"]
        for other in self._agent.kube.list_objects(gpu_migration.PLURAL, (namespace,)):
            if (other.get("spec") or {}).get("replicaSetName") == spec.replica_set_name \
                    and other["metadata"]["uid"] != body["metadata"]["uid"] and \
                    gpu_migration.phase_of(other) in gpu_migration.ACTIVE and \
                    (gpu_migration.source_of(other) or gpu_migration.made_before(other, body)):
                raise MigrationError(Reason.MIGRATION_IN_PROGRESS, "GpuMigration "
                                     f"{other['metadata']['name']} moves it already")
        records = [r for r in self._agent.store.list(namespace, spec.replica_set_name)
                   if r.uid == uid]
        if not records:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"it has not run on {self._node}")
        return grs, rs_spec, records

    def _transfer(self, channel: Channel, key: ResourceKey, grs: dict[str, Any],
                  rs_spec: GpuReplicaSetSpec, records: list[Revision],
                  status: dict[str, Any], show: Show,
                  halted: list[ObservedContainer]) -> None:
        """Everything the target needs, sent; the container stopped for it is put in
        ``halted`` (so a failure starts it again)."""
        uid = grs["metadata"]["uid"]
        images = {(r.image, r.image_id) for r in records if r.image_id and not r.failed}
        channel.send({"op": "prepare", "name": key.name, "uid": uid,
                      "gpuCount": rs_spec.gpu_count,
                      "hostPorts": [[p.host_port, str(p.protocol)] for p in rs_spec.ports
                                    if p.host_port],
                      "images": [{"image": i, "id": d} for i, d in sorted(images)],
                      migration_volumes.STATUS_FIELD: status[migration_volumes.STATUS_FIELD]})
        need = channel.receive()["needImages"]
        mine = [c for c in self._agent.docker.list_containers()
                if c.owner == key and c.uid == uid]
        current = max(mine, key=lambda c: c.revision) if mine else None
        live = [r for r in records if not r.failed]
        if current is None and not (live and live[-1].saved_layer
                                    and Path(live[-1].saved_layer).is_dir()):
            raise MigrationError(Reason.NOT_MIGRATABLE, "its disk is not a saved writable "
                                 "layer here (a committed disk is not migrated yet)")
        upper: Path | None = None
        if current is not None:
            upper = overlay_layers.reachable(
                self._agent.docker.writable_layer_dir(current.id))
            if upper is None:
                raise MigrationError(Reason.NOT_MIGRATABLE, f"the writable layer of "
                                     f"{current.name} cannot be reached")
        history = {f"{MIGRATED_PREFIX}{Path(p).name}": Path(p)
                   for p in sorted(layers_named(records)) if Path(p).is_dir()}
        volumes = self._image_volumes(key, uid, current, {
            m.mount_path for m in rs_spec.mounts if m.volume is not None})
        with self._agent.replica_sets.lock(key):  # no reconcile acts on it from here
            self._agent.replica_sets.migrating.add(key)
        sized = migration_volumes.listed(status)
        for moving in sized:  # nor on its SizedVolumes
            self._agent.volumes.start_moving(ResourceKey(key.namespace, moving.name))
        trees = {volume_tree(name): tree for name, tree in volumes.items()} | \
            migration_volumes.source_trees(self._agent, key.namespace, sized)
        status.update({"phase": Phase.TRANSFERRING, "message": "copying the disk",
                       "bytesTotal": sum(tree_usage(t)[0] for t in (
                           *history.values(), *trees.values(),
                           *((upper,) if upper else ())))})
        show(status)
        self._switch.show_instance(key, status, down=False)  # it still serves
        for wanted in need:
            self._send_image(channel, str(wanted["image"]), str(wanted["id"]))
        moved: dict[str, str] = {}
        layer = None if current is None or upper is None else TreeSender(
            upper, channel, f"{MIGRATED_PREFIX}rev-{current.revision}-{current.id[:12]}")
        # The image's VOLUMEs: written while it runs too, so sent like the layer.
        senders = [TreeSender(tree, channel, what) for what, tree in trees.items()]
        if current is not None and current.running:
            # While it runs: the stop sends only what changed since.
            for sender in (*((layer,) if layer is not None else ()), *senders):
                sender.send(final=False)
                self._sent(channel, status, show)
        for what, tree in history.items():  # saved disks: nothing writes them
            TreeSender(tree, channel, what).send()
            moved[str(tree)] = self._sent(channel, status, show)
        with self._agent.replica_sets.lock(key):
            if current is not None and current.running:
                status["stoppedAt"] = precise_now()  # downtimeSeconds counts from it
                halted.append(current)
                self._agent.docker.stop(current.id, current.name)
        status["message"] = "stopped: sending what changed since the first pass"
        show(status)
        self._switch.show_instance(key, status)
        self._crash.reach("Migrate.stopped")
        if layer is not None:
            layer.send()
            moved[str(upper)] = self._sent(channel, status, show)
        for sender in senders:
            sender.send()
            self._sent(channel, status, show)
        latest = current.revision if current is not None else live[-1].revision
        channel.send({"op": "records", "records": [
            self._moved_record(r, moved, current, upper, r.revision == latest).to_json()
            for r in records],
            "volumes": [{"name": name, "tree": volume_tree(name)} for name in volumes]})
        channel.receive()  # stored

    def _image_volumes(self, key: ResourceKey, uid: str, current: ObservedContainer | None,
                       sized: set[str]) -> dict[str, Path]:
        """The Docker volumes of the image's VOLUMEs that hold the instance's files
        here, by the name they get on the target: every one made for it (every
        revision's, by its labels), and the current container's (one it carried from
        before gpudock named them goes by the name it would have now; not the
        SizedVolumes it mounts at the paths ``sized``: they move as such). Every one
        is sent or the migration is refused: the source's are removed after the move."""
        docker = self._agent.docker
        named = docker.instance_volumes(key.namespace, key.name, uid)
        for path, volume in (current.volumes if current is not None else {}).items():
            if volume not in named and path not in sized:  # not a SizedVolume's
                named[labels.volume_name(key.namespace, key.name, uid, path)] = str(
                    (docker.volume_info(volume) or {}).get("Mountpoint") or "")
        found: dict[str, Path] = {}
        for volume, mountpoint in sorted(named.items()):
            where = overlay_layers.reachable(mountpoint or None)
            if where is None:
                raise MigrationError(Reason.NOT_MIGRATABLE, f"the volume {volume} cannot "
                                     "be reached from the agent")
            found[volume] = where
        return found

    def _sent(self, channel: Channel, status: dict[str, Any], show: Show) -> str:
        """The target's answer to a tree: where it keeps it."""
        done = channel.receive()
        status["bytesDone"] = channel.sent
        show(status)
        return str(done["path"])

    def _moved_record(self, record: Revision, moved: dict[str, str],
                      current: ObservedContainer | None, upper: Path | None,
                      latest: bool) -> Revision:
        """The record as the target keeps it: its layers where they landed there, no
        GPUs, host ports or address of this node (the target picks its own); the
        current container's layer as its saved disk. The ``latest`` one notes where
        it came from: the target starts a new revision from it, "migrated from"."""
        def there(path: str | None) -> str | None:
            return moved.get(path) if path else None
        kept = replace(record, saved_layer=there(record.saved_layer), layer=there(record.layer),
                       gpus=(), ports=(), address="", paused_container=None,
                       migrated_from=self._node if latest else None)
        if current is not None and upper is not None and record.revision == current.revision:
            kept = replace(kept, saved_layer=moved[str(upper)],
                           preserved_from=current.id, container_id=current.id,
                           preserved_image=None)
        return kept

    def _send_image(self, channel: Channel, image: str, image_id: str) -> None:
        info = self._agent.docker.image_info(image)
        if info is None or info.id != image_id:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"the image {image} ({image_id}) "
                                 "is neither on the target nor here")
        channel.send({"op": "image", "image": image, "id": image_id})
        for chunk in self._agent.docker.save_image(image, 1 << 20):
            if chunk:
                channel.send_data(chunk)
        channel.send_data(b"")
        channel.receive()  # imageLoaded

    def _undo(self, key: ResourceKey, stopped: ObservedContainer | None,
              body: dict[str, Any], status: dict[str, Any]) -> None:
        """Before Switching: what the target received goes, the source runs again
        (the same container, the same disk)."""
        migration_targets.abort_target(self._agent, body, status,
                                       self._tokens.get(body["metadata"]["uid"], ""))
        try:
            if stopped is not None:
                self._agent.docker.start(stopped.id, stopped.name)
        finally:
            self._agent.replica_sets.migrating.discard(key)
            migration_volumes.release(self._agent, key.namespace,
                                      migration_volumes.listed(status))
            self.wake(str(status.get("replicaSetUID") or ""))

    def _resume_here(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """After an agent restart (the container stopped for the move is not known):
        the instance's stopped container starts again when its spec wants it
        running; what the target received goes when this agent still can say so."""
        key = ResourceKey(body["metadata"]["namespace"], str(body["spec"]["replicaSetName"]))
        uid = str(status.get("replicaSetUID") or "")
        halted = stopped_for_the_move(self._agent, key, uid)
        self._undo(key, halted, body, status)
