"""What a migration that did not bring its instance here left on the target, removed:
the trees a failed session received, or everything a transfer brought for a
migration that ended otherwise (its abort, or its end seen by the heartbeat:
migration_receiver.py). Never what the instance has here once it is bound here or
ran here."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from gpudock.adapters.kube_api import ObjectNotFoundError
from gpudock.adapters.user_trees import remove_tree
from gpudock.agent import migration_volumes
from gpudock.agent.migration_context import MIGRATED_PREFIX, MigrationContext
from gpudock.api import gpu_replica_set, ownership


def remove(agent: MigrationContext, migration: dict[str, Any],
           giving_back: bool = False) -> None:
    """Remove what sessions of this migration received, unless the instance is bound
    here now (then it is this node's disk; ``giving_back``: it goes back to the
    source, migration_fallback.py) or has a container here."""
    namespace, name = migration["metadata"]["namespace"], \
        migration["spec"]["replicaSetName"]
    node = agent.settings.node_name
    with contextlib.suppress(ObjectNotFoundError):
        if not giving_back and ownership.held_here(
                agent.kube.get(gpu_replica_set.PLURAL, namespace, name), node):
            return  # bound here by the switch: this node's disk now
    uid = str((migration.get("status") or {}).get("replicaSetUID") or "")
    agent.replica_sets.arrivals.drop(uid, (namespace, migration["metadata"]["name"]))
    records = [r for r in agent.store.list(namespace, name) if r.uid == uid]
    containers = [c for c in agent.docker.list_containers()
                  if c.uid == uid and uid]
    if containers:
        return  # it ran here: not what a transfer left
    for record in records:  # (not a record from before the node layout: the source's)
        agent.store.delete_own(namespace, name, record.revision)
    if uid:
        agent.docker.remove_volumes(namespace, name, uid)
    migration_volumes.discard_here(agent, namespace, migration_volumes.listed(
        migration.get("status") or {}))
    home = agent.replica_sets.disks.layers_home()
    if home is not None and uid:
        for path in sorted((home / uid).glob(MIGRATED_PREFIX + "*")):
            remove_tree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            (home / uid).rmdir()


def drop_received(received: list[Path]) -> None:
    """Remove the trees a session received, then the instance's directory of saved
    layers each was in once nothing else is in it (the soak found an empty
    ``layers/<uid>`` left after a migration whose records the target's store, stopped,
    could not keep)."""
    for path in received:
        remove_tree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when empty: this node's own saved layers stay
