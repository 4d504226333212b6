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
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.adapters.migration_wire import Channel, RefusedError, WireError
from gpudock.adapters.tree_stream import TreeSender
from gpudock.adapters.user_trees import tree_usage
from gpudock.agent.migration_switch import (
    MIGRATED_PREFIX,
    TRANSFER_FIELD,
    MigrationContext,
    MigrationError,
    Show,
    Switch,
    seconds,
)
from gpudock.api import gpu_migration, gpu_replica_set, ownership
from gpudock.api.gpu_migration import GpuMigrationSpec, Phase
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.placement import bound_node
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.revision import Revision, layers_named
from gpudock.crash_points import CrashPoints
from gpudock.errors import GpudockError, SpecError

logger = logging.getLogger(__name__)
GRS = gpu_replica_set.PLURAL


def replica_set_missing(body: dict[str, Any], kube: KubeApi, now: str,
                        ) -> dict[str, Any] | None:
    """The Failed status of a GpuMigration, with no status yet, whose GpuReplicaSet
    does not exist; None when it does (its node's agent runs the migration). No node
    holds such a GpuReplicaSet, so no source would ever answer: any agent writes this,
    every one the same (as an ExecRequest of a missing GpuReplicaSet is failed)."""
    if gpu_migration.phase_of(body) is not Phase.PENDING or body.get("status"):
        return None
    name = (body.get("spec") or {}).get("replicaSetName")
    try:
        kube.get(GRS, body["metadata"]["namespace"], str(name))
    except ObjectNotFoundError:
        return {"phase": Phase.FAILED, "reason": Reason.REPLICA_SET_NOT_FOUND,
                "message": f"GpuReplicaSet {name} does not exist", "completionTime": now}
    return None
GPU_NODES = "gpunodes"


class MigrationRunner:
    def __init__(self, agent: MigrationContext) -> None:
        self._agent = agent
        # Wakes a GpuReplicaSet's daemon by UID, from any thread (set at start-up).
        self.wake: Callable[[str], None] = lambda uid: None
        self._tokens: dict[str, str] = {}  # by GpuMigration UID: for an abort
        self._crash = CrashPoints(agent.settings.crash_at)
        self._switch = Switch(agent, self._crash)
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
            self._switch.finish(body, status, show)
            return True
        if phase in (Phase.RESERVING, Phase.TRANSFERRING):  # the agent died meanwhile
            self._abort_target(body, status)
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
            self._migrate(body, status, cancelled, show)
        finally:
            self.slots.release()
        return True

    def _end(self, show: Show, status: dict[str, Any], error: MigrationError) -> None:
        show({**status, "phase": error.phase, "reason": error.reason,
              "message": error.message, "completionTime": self._agent.now()})

    # ---------------------------------------------------------------- before switching
    def _migrate(self, body: dict[str, Any], status: dict[str, Any],
                 cancelled: Callable[[], bool], show: Show) -> None:
        meta = body["metadata"]
        namespace = meta["namespace"]
        try:
            spec = GpuMigrationSpec.parse(body.get("spec") or {})
            grs, rs_spec, records = self._check(body, spec)
            target, endpoint = self._choose(spec, rs_spec, grs)
        except SpecError as exc:
            return self._end(show, status, MigrationError(Reason.INVALID_SPEC, exc.message))
        except MigrationError as exc:
            return self._end(show, status, exc)
        token = migration_wire.new_token()
        self._tokens[meta["uid"]] = token
        status.update({"phase": Phase.RESERVING, "reason": Reason.MIGRATING,
                       "message": f"asking node {target}", "sourceNode": self._node,
                       "targetNode": target, "replicaSetUID": grs["metadata"]["uid"],
                       "startTime": self._agent.now(), "bytesDone": 0, "bytesTotal": 0,
                       "transferTokenSha256": migration_wire.token_digest(token)})
        show(status)
        key = ResourceKey(namespace, spec.replica_set_name)
        halted: list[ObservedContainer] = []  # the container stopped for the move
        channel: Channel | None = None
        try:
            channel = migration_wire.connect(endpoint["address"], int(endpoint["port"]),
                                             self._agent.settings.migration_bandwidth,
                                             cancelled)
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
                else Reason.TRANSFER_FAILED, str(exc))
            if cancelled():
                error = MigrationError(Reason.MIGRATION_CANCELLED, "the GpuMigration was "
                                       "deleted before Switching", Phase.CANCELLED)
            if not isinstance(exc, WireError | GpudockError | OSError):
                logger.exception("%s: migration failed", key)
            self._undo(key, halted[0] if halted else None, body, status)
            error.message += f"; the instance runs on node {self._node} as before"
            self._switch.show_instance(key, {**status, "phase": error.phase}, down=False)
            return self._end(show, status, error)
        channel.close()
        self._crash.reach("Migrate.transferred")
        status.update({"phase": Phase.SWITCHING, "message": f"moving the binding to {target}"})
        show(status)
        self._switch.finish(body, status, show)

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
        if any(m.volume is not None for m in rs_spec.mounts):
            raise MigrationError(Reason.NOT_MIGRATABLE, "it mounts a SizedVolume; volumes "
                                 "are not migrated yet")
        uid = grs["metadata"]["uid"]
        for other in self._agent.kube.list_objects(gpu_migration.PLURAL, (namespace,)):
            if (other.get("spec") or {}).get("replicaSetName") == spec.replica_set_name \
                    and other["metadata"]["uid"] != body["metadata"]["uid"] and \
                    gpu_migration.phase_of(other) in gpu_migration.ACTIVE and \
                    gpu_migration.source_of(other):
                raise MigrationError(Reason.MIGRATION_IN_PROGRESS, "GpuMigration "
                                     f"{other['metadata']['name']} moves it already")
        records = [r for r in self._agent.store.list(namespace, spec.replica_set_name)
                   if r.uid == uid]
        if not records:
            raise MigrationError(Reason.NOT_MIGRATABLE, f"it has not run on {self._node}")
        return grs, rs_spec, records

    def _choose(self, spec: GpuMigrationSpec, rs_spec: GpuReplicaSetSpec,
                grs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The target (spec.targetNode, else the ready, schedulable node matching the
        selectors with the most free GPUs) and its transfer endpoint."""
        selector = dict(spec.node_selector or (grs.get("spec") or {}).get("nodeSelector") or {})
        nodes = self._agent.kube.list_cluster(GPU_NODES)
        fits: list[tuple[int, str, dict[str, Any]]] = []
        why: list[str] = []
        now = seconds(self._agent.now())
        for node in nodes:
            name = node["metadata"]["name"]
            status = node.get("status") or {}
            labels = node["metadata"].get("labels") or {}
            if name == self._node or (spec.target_node and name != spec.target_node):
                continue
            beat = str(status.get("heartbeatTime") or "")
            if not beat or now - seconds(beat) > 3 * self._agent.settings.heartbeat_seconds \
                    + 5:
                why.append(f"{name}: not ready")
            elif (node.get("spec") or {}).get("unschedulable"):
                why.append(f"{name}: unschedulable")
            elif any(labels.get(k) != v for k, v in selector.items()):
                why.append(f"{name}: does not match the node selector")
            elif int(status.get("gpusFree") or 0) < rs_spec.gpu_count:
                why.append(f"{name}: {status.get('gpusFree')} free GPUs")
            elif not (status.get(TRANSFER_FIELD) or {}).get("port"):
                why.append(f"{name}: no migration endpoint")
            else:
                fits.append((-int(status.get("gpusFree") or 0), name, status[TRANSFER_FIELD]))
        if not fits:
            wanted = f"node {spec.target_node}" if spec.target_node else "no other node"
            raise MigrationError(Reason.TARGET_UNSCHEDULABLE, f"{wanted} can take it: "
                                 + ("; ".join(why) or "no such node"))
        _, name, endpoint = min(fits)
        return name, endpoint

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
                      "images": [{"image": i, "id": d} for i, d in sorted(images)]})
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
        with self._agent.replica_sets.lock(key):  # no reconcile acts on it from here
            self._agent.replica_sets.migrating.add(key)
        status.update({"phase": Phase.TRANSFERRING, "message": "copying the disk",
                       "bytesTotal": sum(tree_usage(t)[0] for t in (
                           *history.values(), *((upper,) if upper else ())))})
        show(status)
        self._switch.show_instance(key, status, down=False)  # it still serves
        for wanted in need:
            self._send_image(channel, str(wanted["image"]), str(wanted["id"]))
        moved: dict[str, str] = {}
        layer = None if current is None or upper is None else TreeSender(
            upper, channel, f"{MIGRATED_PREFIX}rev-{current.revision}-{current.id[:12]}")
        if layer is not None and current is not None and current.running:
            layer.send(final=False)  # while it runs: the stop sends what changed since
            self._sent(channel, status, show)
        for what, tree in history.items():  # saved disks: nothing writes them
            TreeSender(tree, channel, what).send()
            moved[str(tree)] = self._sent(channel, status, show)
        with self._agent.replica_sets.lock(key):
            if current is not None and current.running:
                status["stoppedAt"] = self._agent.now()
                halted.append(current)
                self._agent.docker.stop(current.id, current.name)
        status["message"] = "stopped: sending what changed since the first pass"
        show(status)
        self._switch.show_instance(key, status)
        self._crash.reach("Migrate.stopped")
        if layer is not None:
            layer.send()
            moved[str(upper)] = self._sent(channel, status, show)
        channel.send({"op": "records", "records": [
            self._moved_record(r, moved, current, upper).to_json() for r in records]})
        channel.receive()  # stored

    def _sent(self, channel: Channel, status: dict[str, Any], show: Show) -> str:
        """The target's answer to a tree: where it keeps it."""
        done = channel.receive()
        status["bytesDone"] = channel.sent
        show(status)
        return str(done["path"])

    def _moved_record(self, record: Revision, moved: dict[str, str],
                      current: ObservedContainer | None, upper: Path | None) -> Revision:
        """The record as the target keeps it: its layers where they landed there, no
        GPUs, host ports or address of this node (the target picks its own); the
        current container's layer as its saved disk, resumed there."""
        def there(path: str | None) -> str | None:
            return moved.get(path) if path else None
        kept = replace(record, saved_layer=there(record.saved_layer), layer=there(record.layer),
                       gpus=(), ports=(), address="", paused_container=None)
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
        self._abort_target(body, status)
        try:
            if stopped is not None:
                self._agent.docker.start(stopped.id, stopped.name)
        finally:
            self._agent.replica_sets.migrating.discard(key)
            self.wake(str(status.get("replicaSetUID") or ""))

    def _abort_target(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """Best effort: the source's disk and records are untouched either way."""
        target = status.get("targetNode")
        if not target:
            return
        try:
            node = self._agent.kube.get_cluster(GPU_NODES, str(target))
            endpoint = (node.get("status") or {}).get(TRANSFER_FIELD) or {}
            # Abort sessions are accepted with the migration's token, which only this
            # agent knows (in memory: after a restart, the target keeps what it got).
            token = self._tokens.get(body["metadata"]["uid"], "")
            if not token or not endpoint.get("port"):
                return
            channel = migration_wire.connect(endpoint["address"], int(endpoint["port"]),
                                             0, lambda: False)
        except (GpudockError, WireError) as exc:
            logger.warning("could not tell node %s to drop what it received: %s", target,
                           exc)
            return
        try:
            channel.send({"op": "hello", "token": token, "purpose": "abort",
                          "migration": {"namespace": body["metadata"]["namespace"],
                                        "name": body["metadata"]["name"]}})
            channel.keyed(token)
            channel.receive()
            channel.receive()
        except WireError as exc:
            logger.warning("node %s did not drop what it received: %s", target, exc)
        finally:
            channel.close()
