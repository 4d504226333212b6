"""``gpudock history --retained NAME`` and ``gpudock purge NAME``: the histories that
deleted resources (historyPolicy Retain) left on a node.

They live in the node's revision store and Docker engine, so these commands run on
the node (or anywhere that reaches its store and Docker: ``--store``,
``--docker-host``, with the agent's defaults and GPUDOCK_* variables). The live
resource of the name, if any, is asked of the API server: its own history is never
listed here nor purged.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from gpudock.adapters import overlay_layers
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import KubeApi, ObjectNotFoundError
from gpudock.adapters.revision_store import open_revision_store
from gpudock.api.gpu_replica_set import PLURAL
from gpudock.core.observed import ResourceKey
from gpudock.core.replica_set.saved_disks import retained_repository
from gpudock.core.revision import Revision, RevisionStore, layers_named
from gpudock.errors import GpudockError, NotFoundError


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get("GPUDOCK_STORE", ""),
                        help="the agent's revision store (default: its SQLite file "
                        "under --state-dir)")
    parser.add_argument("--node-name", default=os.environ.get("GPUDOCK_NODE_NAME")
                        or socket.gethostname(),
                        help="the node whose records an etcd --store holds (default: "
                        "$GPUDOCK_NODE_NAME or the host name, as the agent's)")
    parser.add_argument("--state-dir", default=os.environ.get("GPUDOCK_STATE_DIR",
                                                              "/var/lib/gpudock"),
                        help="the agent's state directory (default /var/lib/gpudock)")
    parser.add_argument("--docker-host", default=os.environ.get("GPUDOCK_DOCKER_HOST"),
                        help="the node's Docker (default: $DOCKER_HOST or its socket)")


def add_arguments(commands: Any) -> None:
    purge = commands.add_parser("purge", help="remove the retained history (records "
                                "and saved disks) of deleted resources of a name")
    purge.add_argument("name", help="the GpuReplicaSet name")
    purge.add_argument("--uid", help="only the history of this deleted resource")
    purge.add_argument("-n", "--namespace", help="default: the kubeconfig's")
    purge.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    add_node_arguments(purge)


class NoStoreError(NotFoundError):
    """No revision store where the command looked (it is not run on the node)."""


def _open(args: argparse.Namespace) -> tuple[KubeApi, str, RevisionStore, DockerRuntime]:
    kube = KubeApi(args.kubeconfig, in_cluster=False)
    sqlite = Path(args.state_dir) / "revisions.sqlite3"
    if not args.store and not sqlite.is_file():  # never made here: it would be empty
        raise NoStoreError(
            f"no revision store at {sqlite}: run this on the node (or give --state-dir "
            "or --store); from anywhere, kubectl gpudock history --retained NAME lists "
            "what the live resource of the name reports")
    store_url = args.store or f"sqlite:{sqlite}"
    return (kube, args.namespace or kube.default_namespace,
            open_revision_store(store_url, args.node_name),
            DockerRuntime(args.docker_host))


def retained(kube: KubeApi, store: RevisionStore, namespace: str,
             name: str) -> dict[str, list[Revision]]:
    """UID -> records, for every deleted resource of this name with history left."""
    try:
        live = kube.get(PLURAL, namespace, name)["metadata"]["uid"]
    except ObjectNotFoundError:
        live = None
    found: dict[str, list[Revision]] = defaultdict(list)
    for record in [*store.list(namespace, name), *store.list_retained(namespace, name)]:
        if record.uid != live:
            found[record.uid].append(record)
    return dict(found)


def _on_node(args: argparse.Namespace,
             work: Callable[[KubeApi, str, RevisionStore, DockerRuntime], int]) -> int:
    """Run ``work`` with the API server, the node's revision store and its Docker;
    a gpudock error is printed (exit 1); the store and Docker are closed after."""
    try:
        kube, namespace, store, docker = _open(args)
    except NoStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return work(kube, namespace, store, docker)
    except GpudockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
        docker.close()


def run_history(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    def work(kube: KubeApi, namespace: str, store: RevisionStore,
             docker: DockerRuntime) -> int:
        histories = retained(kube, store, namespace, args.name)
        use = docker.disk_use()
        rows = [("UID", "REVISIONS", "LAST CHANGE", "SAVED DISKS", "UNIQUE BYTES")]
        for uid, records in sorted(histories.items()):
            disks = {r.preserved_image for r in records if r.preserved_image in use}
            layers = {r.saved_layer for r in records
                      if r.saved_layer and Path(r.saved_layer).is_dir()}
            rows.append((uid, ",".join(str(r.revision) for r in records),
                         records[-1].created_at, str(len(disks) + len(layers)),
                         str(sum(use[d] for d in disks if d))))
        table(rows, out)
        if not histories:
            print(f"no retained history for {namespace}/{args.name}", file=out)
        return 0

    return _on_node(args, work)


def run_purge(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    def work(kube: KubeApi, namespace: str, store: RevisionStore,
             docker: DockerRuntime) -> int:
        histories = retained(kube, store, namespace, args.name)
        if args.uid is not None and args.uid not in histories:
            print(f"error: no retained history of {namespace}/{args.name} with uid "
                  f"{args.uid} (retained: {', '.join(sorted(histories)) or 'none'})",
                  file=sys.stderr)
            return 1
        key = ResourceKey(namespace, args.name)
        home = overlay_layers.layer_home(*docker.storage())  # asked of Docker once
        for uid, records in sorted(histories.items()):
            if args.uid is not None and uid != args.uid:
                continue
            images = {image for r in records for image in (r.preserved_image, r.image)
                      if image and (image.startswith(retained_repository(key) + ":")
                                    or image == r.preserved_image)}
            for image in sorted(images, reverse=True):  # later disks build on earlier
                docker.remove_image(image)
            layers = layers_named(records)
            if home is not None:
                for layer in sorted(layers):
                    overlay_layers.remove_saved(Path(layer), home)
            volumes = docker.remove_volumes(namespace, args.name, uid)
            for record in records:
                store.delete(record.namespace, record.name, record.revision)
            print(f"purged uid {uid}: {len(records)} revision(s), "
                  f"{len(images) + len(layers)} saved "
                  f"disk(s), {volumes} volume(s)", file=out)
        return 0

    return _on_node(args, work)


def table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]), file=out)
