"""The target's side of a migration: the endpoint on ``--transfer-port`` that takes
an instance's image, disks and history from the source agent (docs/migration.md).

A session is authenticated by the migration's one-time token (migration_wire.py):
the GpuMigration must name this node as its target and carry the token's digest.
What arrives is built beside where it will live and checked against the source's
manifest before it is kept; the revision records are stored last. Nothing here
starts a container: the instance runs here only once the binding names this node
and this node's finalizer is on it (the source's runner moves both), and then the
ordinary reconcile resumes it from the received disk, as after state Stopped.
An abort (a session of the same token saying "abort") removes what was received,
unless the instance is bound here by then.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpudock.adapters import (
    file_data,
    host_ports,
    migration_wire,
    stream_tls,
    tree_stream,
)
from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.adapters.migration_wire import Channel, RefusedError, WireError
from gpudock.adapters.user_trees import remove_tree
from gpudock.agent import migration_leftovers, migration_volumes
from gpudock.agent.migration_arrivals import Arrival
from gpudock.agent.migration_context import MIGRATED_PREFIX, PRECOPY_SUFFIX, MigrationContext
from gpudock.api import gpu_migration, gpu_replica_set
from gpudock.api.container_fields import Protocol
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.observed import ImageInfo, ResourceKey
from gpudock.core.revision import Revision
from gpudock.crash_points import CrashPoints
from gpudock.errors import GpudockError, UserError

logger = logging.getLogger(__name__)


class MigrationReceiver:
    def __init__(self, agent: MigrationContext) -> None:
        self._agent = agent
        self._used: set[str] = set()  # token digests that had their transfer session
        self._lock = threading.Lock()
        self._arrivals_lock = threading.Lock()  # a hold made, or an ended one cleared
        self._crash = CrashPoints(agent.settings.crash_at)
        self._server: socket.socket | None = None
        self._tls: stream_tls.ServingCertificate | None = None
        self._address = ""
        self.port = 0

    # ---------------------------------------------------------------------- serving
    def start(self) -> None:
        """Serve; raises OSError (the port taken) or CertificateError (no openssl)."""
        settings = self._agent.settings
        self._address = _advertised_address(settings.transfer_address)  # the cert's too
        self._tls = stream_tls.make(settings.state_dir / "transfer", self._address,
                                    "transfer")
        server = socket.create_server((settings.transfer_address or "0.0.0.0",
                                       settings.transfer_port), reuse_port=False)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, name="gpudock-migration-in",
                         daemon=True).start()
        logger.info("migration endpoint on %s:%d", settings.transfer_address or "*",
                    self.port)

    def advertised(self) -> dict[str, Any]:
        """What the GpuNode says of the endpoint (status.transfer): where, and the
        certificate the source trusts alone."""
        return {"address": self._address, "port": self.port,
                "caBundle": self._tls.pem if self._tls is not None else None}

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, peer = self._server.accept()
            except OSError:
                return  # closed: the agent stops
            threading.Thread(target=self._session, args=(conn, peer), daemon=True,
                             name="gpudock-migration-session").start()

    def _session(self, conn: socket.socket, peer: Any) -> None:
        assert self._tls is not None
        try:
            secured = migration_wire.serve(conn, self._tls.context)
        except WireError as exc:
            logger.warning("migration from %s: %s", peer, exc)
            return
        channel = Channel(secured, self._agent.settings.migration_bandwidth)
        received: list[Path] = []
        try:
            hello = channel.receive()
            migration = self._authenticate(hello)
            channel.keyed(str(hello["token"]))
            channel.send({"op": "welcome"})
            if hello.get("purpose") == "abort":
                migration_leftovers.remove(self._agent, migration)
                channel.send({"op": "aborted"})
                return
            self._transfer(channel, migration, received)
        except RefusedError as exc:
            logger.warning("migration from %s: refused: %s", peer, exc)
        except _RefusalError as exc:
            logger.warning("migration from %s refused: %s", peer, exc.message)
            with contextlib.suppress(WireError):
                channel.refuse(exc.reason, exc.message)
        except (WireError, GpudockError, OSError, KeyError, ValueError) as exc:
            logger.warning("migration from %s failed: %s", peer, exc)
            with contextlib.suppress(WireError):
                channel.refuse(exc.reason if isinstance(exc, WireError)
                               else Reason.TRANSFER_FAILED, str(exc))
        finally:
            channel.close()
            # A session that ended before its records were kept:
            migration_leftovers.drop_received(received)

    def _authenticate(self, hello: dict[str, Any]) -> dict[str, Any]:
        if hello.get("op") != "hello":
            raise _RefusalError(Reason.TRANSFER_FAILED, "a session starts with hello")
        token = str(hello.get("token") or "")
        where = hello.get("migration") or {}
        try:
            migration = self._agent.kube.get(gpu_migration.PLURAL, str(where["namespace"]),
                                             str(where["name"]))
        except (KeyError, ObjectNotFoundError, KubeUnavailableError) as exc:
            raise _RefusalError(Reason.TRANSFER_FAILED, f"no such migration: {exc}") from exc
        status = migration.get("status") or {}
        digest = migration_wire.token_digest(token)
        if status.get("targetNode") != self._agent.settings.node_name or \
                not token or status.get("transferTokenSha256") != digest:
            raise _RefusalError(Reason.TRANSFER_FAILED, "not authenticated")
        if hello.get("purpose") != "abort":
            if gpu_migration.phase_of(migration) not in gpu_migration.UNDOABLE:
                raise _RefusalError(Reason.TRANSFER_FAILED, "the migration is not transferring")
            with self._lock:
                if digest in self._used:
                    raise _RefusalError(Reason.TRANSFER_FAILED, "the token was used already")
                self._used.add(digest)
        return migration

    # --------------------------------------------------------------------- transfer
    def _transfer(self, channel: Channel, migration: dict[str, Any],
                  received: list[Path]) -> None:
        prepare = channel.receive()
        namespace = migration["metadata"]["namespace"]
        name, uid = str(prepare["name"]), str(prepare["uid"])
        if name != migration["spec"]["replicaSetName"]:
            raise _RefusalError(Reason.TRANSFER_FAILED, "the session is for another instance")
        home = self._agent.replica_sets.disks.layers_home()
        if home is None:
            raise _RefusalError(Reason.NOT_MIGRATABLE, f"node {self._agent.settings.node_name} "
                           "cannot keep writable layers (Docker is not on overlay2 here)")
        arrivals = self._agent.replica_sets.arrivals
        this = (namespace, str(migration["metadata"]["name"]))
        with self._arrivals_lock:
            self._hold_room(Arrival(ResourceKey(namespace, name), uid, this, (), tuple(
                v.to_json() for v in migration_volumes.listed(prepare))),
                int(prepare["gpuCount"]), prepare.get("hostPorts") or [])
        try:
            self._receive(channel, prepare, namespace, name, uid, home, received)
        except BaseException:
            arrivals.drop(uid, this)  # the session failed: nothing comes here
            if not any(c.uid == uid for c in self._agent.docker.list_containers()):
                self._agent.docker.remove_volumes(namespace, name, uid)
                migration_volumes.discard_here(self._agent, namespace,
                                               migration_volumes.listed(prepare))
            raise

    def _receive(self, channel: Channel, prepare: dict[str, Any], namespace: str,
                 name: str, uid: str, home: Path, received: list[Path]) -> None:
        missing = [i for i in prepare.get("images") or ()
                   if not self._has_image(str(i["image"]), str(i["id"]))]
        moved = tags_it_would_move(missing, self._agent.docker.image_info)
        if moved:
            raise _RefusalError(Reason.NOT_MIGRATABLE, (
                f"on node {self._agent.settings.node_name} {'; '.join(moved)}: loading the "
                "instance's image would move the tag from under what runs here (nothing "
                "was changed; make the tag name the same image on both nodes)"))
        try:  # the SizedVolumes that move with it, made here (their room checked)
            volumes = migration_volumes.make_here(
                self._agent, namespace, migration_volumes.listed(prepare))
        except UserError as exc:
            raise _RefusalError(exc.reason, exc.message) from exc
        channel.send({"op": "prepared", "needImages": missing})
        passes: dict[str, tree_stream.Digests] = {}  # a pre pass's digests, by tree
        while True:
            message = channel.receive()
            op = message.get("op")
            if op == "image":
                self._load_image(channel, str(message["image"]), str(message["id"]))
                channel.send({"op": "imageLoaded"})
            elif op == "tree":
                what = str(message["what"])
                if "/" in what or not what.startswith(MIGRATED_PREFIX):
                    raise _RefusalError(Reason.TRANSFER_FAILED, f"a tree named {what!r}")
                volume = volumes.get(what)  # a SizedVolume's files: built inside it
                final = volume or home / uid / what
                inside = migration_volumes.staging(volume) if volume else None
                precopy = inside.precopy if inside else final.with_name(what + PRECOPY_SUFFIX)
                incoming = inside.incoming if inside else final.with_name(
                    what + ".gpudock-incoming")
                pre = message.get("pass") == "pre"
                into = precopy if pre else incoming
                for path in (into, *(() if pre or volume else (final,))):
                    remove_tree(path, ignore_errors=True)
                into.mkdir(parents=True)
                received.extend(() if volume else (final, precopy))
                digests = passes.setdefault(what, tree_stream.Digests())
                try:
                    count = tree_stream.receive_tree(channel, message, into, precopy,
                                                     digests)
                    if pre:  # on disk while the source still serves: else its
                        # writeback falls in the downtime (Docker's start waits for it)
                        file_data.sync_filesystem(into)
                    elif volume:
                        migration_volumes.place(volume, into)
                    else:
                        into.rename(final)
                finally:
                    if not pre:
                        remove_tree(into, ignore_errors=True)
                        remove_tree(precopy, ignore_errors=True)
                channel.send({"op": "treeDone", "path": str(final), "bytes": count})
            elif op == "records":
                for volume in message.get("volumes") or ():
                    self._fill_volume(namespace, name, uid, str(volume["name"]),
                                      home / uid / str(volume["tree"]))
                for text in message["records"]:
                    record = Revision.from_json(str(text))
                    if (record.namespace, record.name, record.uid) != (namespace, name, uid):
                        raise _RefusalError(Reason.TRANSFER_FAILED, "a record of another instance")
                    self._agent.store.put(record)
                received.clear()  # the records name them now: kept
                self._crash.reach("Migrate.received")
                channel.send({"op": "stored"})
                return
            else:
                raise _RefusalError(Reason.TRANSFER_FAILED, f"unknown step {op!r}")

    def _hold_room(self, arrival: Arrival, gpu_count: int, wanted_ports: list[Any]) -> None:
        """The GPUs and explicit host ports the instance needs are free here now; the
        GPUs are held for it from now on (migration_arrivals.py), under the node's
        allocation lock, so another migration or instance cannot take them."""
        node = self._agent.settings.node_name
        devices = self._agent.inventory.list_gpus()
        with self._agent.replica_sets.node_lock():
            containers = self._agent.docker.list_containers()
            arrivals = self._agent.replica_sets.arrivals
            held = {g for c in containers for g in c.gpus} | \
                arrivals.gpus_for_others(arrival.key, arrival.uid)
            free = [g.uuid for g in devices if g.health == "Healthy" and g.uuid not in held]
            if len(free) < gpu_count:
                raise _RefusalError(Reason.TARGET_UNSCHEDULABLE, f"node {node} has "
                                    f"{len(free)} free GPUs; the instance needs {gpu_count}")
            taken = {(p.port, str(p.protocol)) for c in containers for p in c.host_ports}
            for port, protocol in wanted_ports:
                if (int(port), str(protocol)) in taken or \
                        host_ports.is_busy(int(port), Protocol(str(protocol))):
                    raise _RefusalError(Reason.HOST_PORT_IN_USE, f"host port {port}/{protocol} "
                                        f"is taken on node {node}")
            arrivals.hold(replace(arrival, gpus=tuple(free[:gpu_count])))

    def _fill_volume(self, namespace: str, name: str, uid: str, volume: str,
                     tree: Path) -> None:
        """The Docker volume of one of the image's VOLUMEs (named as on the source: by
        the instance, its UID and the path), made here with the received tree as its
        content (a rename: one filesystem with the received layers)."""
        if tree.parent.name != uid or not tree.name.startswith(MIGRATED_PREFIX) or \
                not tree.is_dir() or not volume.startswith(
                    labels.base_name(namespace, name) + "-vol-") or "/" in volume:
            raise _RefusalError(Reason.TRANSFER_FAILED, f"no received tree for the volume "
                                f"{volume}, or not a volume of this instance")
        docker = self._agent.docker
        if docker.volume_info(volume) is not None:  # from an earlier stay of it here
            if any(c.uid == uid for c in docker.list_containers()):
                raise _RefusalError(Reason.TRANSFER_FAILED, f"the volume {volume} is in use")
            docker.remove_volume(volume)
        docker.create_volume(volume, {}, {
            labels.KIND: gpu_replica_set.KIND, labels.NAMESPACE: namespace,
            labels.NAME: name, labels.UID: uid, labels.NODE: self._agent.settings.node_name})
        mountpoint = (docker.volume_info(volume) or {}).get("Mountpoint")
        if not mountpoint or not Path(str(mountpoint)).is_dir():
            raise _RefusalError(Reason.TRANSFER_FAILED, f"the volume {volume} made here "
                                "cannot be reached from the agent")
        try:
            tree.rename(str(mountpoint))  # over the empty directory Docker made
        except OSError as exc:
            raise _RefusalError(Reason.TRANSFER_FAILED, f"the volume {volume} could not "
                                f"be put in place: {exc}") from exc

    def _has_image(self, image: str, image_id: str) -> bool:
        info = self._agent.docker.image_info(image)
        return info is not None and info.id == image_id

    def _load_image(self, channel: Channel, image: str, image_id: str) -> None:
        def chunks() -> Iterator[bytes]:
            while True:
                data = channel.receive_data()
                if not data:
                    return  # an empty frame ends the image
                yield bytes(data)  # the channel's frames are bytearrays

        self._agent.docker.load_image(chunks(), f"the migrated image {image}")
        if not self._has_image(image, image_id):
            raise _RefusalError(Reason.TRANSFER_FAILED, f"the image {image} loaded here is not "
                           f"{image_id}")

    # ------------------------------------------------------------------------ abort
    def clear_ended(self, ended: list[Arrival]) -> None:
        """Holds whose migration ended (the heartbeat settles them): what a migration
        that did not bring the instance here received goes, as its abort would have
        done (a source agent restarted mid-transfer cannot send the abort: its token
        was in its memory). Not while a newer session holds room for the instance:
        holds are made under the same lock."""
        for arrival in ended:
            namespace, name = arrival.migration
            with self._arrivals_lock:
                if any(a.uid == arrival.uid for a in self._agent.replica_sets.arrivals.held()):
                    continue  # a newer migration brings it here: its files stay
                try:
                    migration_leftovers.remove(self._agent, {
                        "metadata": {"namespace": namespace, "name": name},
                        "spec": {"replicaSetName": arrival.key.name},
                        "status": {"replicaSetUID": arrival.uid,
                                   migration_volumes.STATUS_FIELD: list(arrival.volumes)}})
                except (GpudockError, OSError) as exc:  # best effort, as an abort
                    logger.warning("what migration %s/%s brought here was not all "
                                   "removed: %s", namespace, name, exc)


def tags_it_would_move(images: list[Any],
                       lookup: Callable[[str], ImageInfo | None]) -> list[str]:
    """Of the images a migration would load here (``image``, ``id``), those whose tag
    names another image on this node: a load would move the tag, and every instance
    here whose saved disk is over the old image would stop with ImageChanged (the
    soak found it with the nodes' test images imported apart)."""
    moved = []
    for wanted in images:
        here = lookup(str(wanted["image"]))
        if here is not None and here.id != str(wanted["id"]):
            moved.append(f"{wanted['image']} names {here.id[:19]}, not {str(wanted['id'])[:19]}")
    return moved


def _advertised_address(configured: str) -> str:
    """--transfer-address, or for every address the host name's address."""
    if configured and configured != "0.0.0.0":
        return configured
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return configured


class _RefusalError(UserError):
    """What the target says no to: sent to the source as its refusal."""
