"""Which node's agent owns a resource: its finalizer says so.

Every agent watches every resource, so the finalizer cannot be one name shared by all:
kopf removes its finalizer from any resource that none of its handlers match, and each
agent would strip the finalizer of every other node's resources. Each agent uses its
own, ``node.gpudock.dev/<node>``, and that finalizer is also the record of which node
holds the resource's container: an agent keeps handling a resource that carries its
finalizer even after ``spec.nodeName`` changed (it refuses the move with a condition
and still handles the delete), and an agent leaves alone a resource that another
node's agent has bound (docs/gpu-replica-set.md, "Moving to another node").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

FINALIZER_PREFIX = "node.gpudock.dev/"
LEGACY_FINALIZER = "gpudock.dev/finalizer"  # one name for every agent, before 0.2
_MAX_NAME = 63  # the part after "/" of a qualified name


# On an ImageCommit, while the image it made is on that node (deletionPolicy Delete
# removes it first). Not the node finalizer: kopf, whose finalizer that is, takes it
# off objects of a kind it has no delete handler for.
COMMIT_FINALIZER_PREFIX = "commit.gpudock.dev/"


def node_finalizer(node_name: str) -> str:
    return _qualified(FINALIZER_PREFIX, node_name)


def commit_finalizer(node_name: str) -> str:
    return _qualified(COMMIT_FINALIZER_PREFIX, node_name)


def _qualified(prefix: str, node_name: str) -> str:
    if len(node_name) <= _MAX_NAME:
        return prefix + node_name
    digest = hashlib.sha256(node_name.encode()).hexdigest()[:10]
    return f"{prefix}{node_name[:_MAX_NAME - 11].rstrip('-.')}-{digest}"


def handled_here(spec_node: object, finalizers: Iterable[str], node_name: str) -> bool:
    """This node's agent handles the resource: it carries this node's finalizer, or it
    names this node and no other node's agent has bound it yet."""
    mine = node_finalizer(node_name)
    held = [f for f in finalizers if f.startswith(FINALIZER_PREFIX)]
    if mine in held:
        return True
    return spec_node == node_name and not held


def bound_elsewhere(finalizers: Iterable[str], node_name: str) -> list[str]:
    """The finalizers of other nodes' agents on the resource."""
    mine = node_finalizer(node_name)
    return [f for f in finalizers if f.startswith(FINALIZER_PREFIX) and f != mine]


def held_here(body: Mapping[str, Any], node_name: str) -> bool:
    """Bound to the node (status.nodeName) or carrying its finalizer: that node's,
    whatever its spec says (a changed spec.nodeName names a move's target from the
    start)."""
    return (body.get("status") or {}).get("nodeName") == node_name or \
        node_finalizer(node_name) in ((body.get("metadata") or {}).get("finalizers") or ())


def holds(status_node: object, finalizers: Iterable[str], node_name: str) -> bool:
    """This node holds the resource's container and disk: its finalizer is on the
    resource and no migration has moved the binding (status.nodeName) to another node.
    After a changed spec.nodeName this is still the old node: the one a move starts
    from (docs/migration.md)."""
    return node_finalizer(node_name) in finalizers and status_node in (None, "", node_name)


def moved_away(body: Mapping[str, Any], node_name: str) -> bool:
    """A migration moved the binding (status.nodeName) to another node, which the
    spec does not contradict, while this node may still hold the finalizer: the
    migration's runner cleans this node once the target serves it; nothing here may
    start the instance again (also after an agent restart)."""
    bound = (body.get("status") or {}).get("nodeName")
    pinned = (body.get("spec") or {}).get("nodeName")
    return isinstance(bound, str) and bool(bound) and bound != node_name and \
        pinned in (None, "", bound)
