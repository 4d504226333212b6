"""The fleet as one scheduling pass sees it: a NodeView per GpuNode, and a Demand
per resource waiting for a node, from the raw objects the scheduler listed.

What a node has taken is counted from what is bound to it (every GpuReplicaSet pinned
or bound there that is not Stopped), not only from its last heartbeat: a burst of new
resources bound in the last seconds is counted before their containers exist, so the
scheduler never overfills a node. Containers the heartbeat shows that no bound resource
explains (an orphan being swept, an instance of a namespace this scheduler does not
watch) count too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpudock.api.container_limits import parse_cpu
from gpudock.api.placement import Placement, bound_node, parse_taints
from gpudock.api.quantity import parse_size
from gpudock.core.gpu_node import node_verdict
from gpudock.core.placement import Demand, GpuView, NodeView
from gpudock.errors import SpecError

Key = tuple[str, str]  # namespace, name
NO_NODE_MATCHES = "\0"  # a volume node no node has: mounts bound to different nodes


@dataclass(frozen=True)
class Volume:
    node: str        # "" while unbound
    size_bytes: int


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


def volumes_by_key(volumes: Iterable[Mapping[str, Any]]) -> dict[Key, Volume]:
    return {key_of(body): Volume(bound_node(body), _size(body)) for body in volumes}


def _size(volume: Mapping[str, Any]) -> int:
    """A SizedVolume's spec.size in bytes (0 when unreadable: the agent reports it)."""
    try:
        return parse_size(str((volume.get("spec") or {}).get("size") or ""))
    except SpecError:
        return 0


def holds_gpus(body: Mapping[str, Any]) -> bool:
    """A bound GpuReplicaSet keeps its GPUs on its node unless it is Stopped."""
    return (body.get("spec") or {}).get("state") != "Stopped"


def host_ports(spec: Mapping[str, Any]) -> frozenset[tuple[int, str]]:
    return frozenset((int(p["hostPort"]), str(p.get("protocol") or "TCP"))
                     for p in spec.get("ports") or ()
                     if isinstance(p, Mapping) and p.get("hostPort"))


def demand_of(body: Mapping[str, Any], volumes: Mapping[Key, Volume],
              avoid: frozenset[str] = frozenset()) -> Demand:
    """What a GpuReplicaSet asks of a node; raises SpecError for a spec it cannot
    read (the scheduler says so in its status and leaves it unbound)."""
    spec = body.get("spec") or {}
    namespace = key_of(body)[0]
    volume_nodes, unbound_bytes = set(), 0
    for mount in spec.get("mounts") or ():
        volume = volumes.get((namespace, str(mount.get("volume")))) \
            if isinstance(mount, Mapping) and mount.get("volume") else None
        if volume is None:
            continue  # a hostPath, or a volume not made yet: the agent reports it
        if volume.node:
            volume_nodes.add(volume.node)
        else:
            unbound_bytes += volume.size_bytes
    gpus = spec.get("gpuCount") or 0
    if not isinstance(gpus, int) or gpus < 0:
        raise SpecError(f"spec.gpuCount {gpus!r} is not a whole number of GPUs")
    return Demand(
        gpu_count=gpus, placement=Placement.parse(spec), host_ports=host_ports(spec),
        volume_node=(next(iter(volume_nodes)) if len(volume_nodes) == 1
                     else NO_NODE_MATCHES if volume_nodes else ""),
        volume_bytes=unbound_bytes, avoid=avoid)


def move_demand(body: Mapping[str, Any], volumes: Mapping[Key, Volume],
                moving: Iterable[str], node_selector: Mapping[str, str],
                pinned: Iterable[str] = ()) -> Demand:
    """What a GpuReplicaSet a migration moves asks of its target: what it asks of any
    node, except that the SizedVolumes it mounts (``moving``, by name: they move with
    it) tie it to no node but the one ``pinned`` names (their spec.nodeName), and are
    made there at their size; ``node_selector`` (the GpuMigration's) stands for its
    own when given. SpecError as demand_of."""
    pins = set(pinned)
    demand = demand_of(body, {})  # no volume: none ties it to the node it leaves
    if pins:
        demand = dataclasses.replace(demand, volume_node=next(iter(pins)) if len(pins) == 1
                                     else NO_NODE_MATCHES)
    namespace = key_of(body)[0]
    size = sum(volumes[(namespace, name)].size_bytes for name in moving
               if (namespace, name) in volumes)
    placement = dataclasses.replace(demand.placement, node_selector=dict(node_selector)) \
        if node_selector else demand.placement
    return dataclasses.replace(demand, placement=placement, volume_bytes=size)


def node_views(gpu_nodes: Sequence[Mapping[str, Any]],
               replica_sets: Iterable[Mapping[str, Any]],
               volumes: Iterable[Mapping[str, Any]], now: str,
               heartbeat_seconds: float) -> list[NodeView]:
    """A NodeView per GpuNode, with what is bound to it counted as taken."""
    views = {}
    for body in gpu_nodes:
        name = str((body.get("metadata") or {}).get("name"))
        views[name] = _view(body, node_verdict(name, body, now, heartbeat_seconds) is None)
    bound_here: dict[str, set[Key]] = {name: set() for name in views}
    for body in replica_sets:
        view = views.get(bound_node(body))
        if view is None or not holds_gpus(body):
            continue
        bound_here[view.name].add(key_of(body))
        try:
            view.claim(demand_of(body, {}))
        except SpecError:
            continue  # an unreadable spec holds nothing the scheduler can count
    for body in volumes:
        view = views.get(bound_node(body))
        if view is not None and view.volume_free_bytes is not None and \
                not (body.get("status") or {}).get("volumeName"):
            view.volume_free_bytes -= _size(body)
    for body in gpu_nodes:
        view = views[str((body.get("metadata") or {}).get("name"))]
        _count_unexplained(view, body.get("status") or {}, bound_here[view.name])
    return sorted(views.values(), key=lambda v: v.name)


def _view(body: Mapping[str, Any], ready: bool) -> NodeView:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    labels = (body.get("metadata") or {}).get("labels") or {}
    # A held Unhealthy GPU (gpuFailurePolicy Keep) still counts as capacity: its
    # holder is counted in gpus_taken, so leaving it out here would take it twice.
    gpus = tuple(GpuView(str(g.get("model") or ""), int(g.get("memoryMiB") or 0),
                         g.get("health", "Healthy") == "Healthy" or bool(g.get("holder")))
                 for g in status.get("gpus") or () if isinstance(g, Mapping))
    allocatable = status.get("allocatable") or {}
    volumes = status.get("volumes") or {}
    free = volumes.get("freeBytes")
    return NodeView(
        name=str((body.get("metadata") or {}).get("name")), ready=ready,
        unschedulable=bool(spec.get("unschedulable")), taints=parse_taints(spec.get("taints")),
        labels={str(k): str(v) for k, v in labels.items()}, gpus=gpus,
        cpu_millis=_quantity(allocatable.get("cpu"), parse_cpu),
        memory_bytes=_quantity(allocatable.get("memory"), parse_size),
        volume_free_bytes=int(free) if isinstance(free, int) else None,
        explicit_ports=_range((status.get("ports") or {}).get("explicitRange")
                              or (status.get("ports") or {}).get("range")))


def _range(text: Any) -> tuple[int, int] | None:
    """``first-last`` as numbers; None when absent or malformed."""
    first, _, last = str(text or "").partition("-")
    return (int(first), int(last)) if first.isdigit() and last.isdigit() else None


def _quantity(value: Any, parse: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(parse(str(value)))
    except SpecError:
        return None


def _count_unexplained(view: NodeView, status: Mapping[str, Any], bound: set[Key]) -> None:
    """GPUs and ports the heartbeat shows held by no resource bound here (a hidden
    holder, --hide-holder-names, is taken as bound: the larger count wins)."""
    held, hidden = 0, 0
    for gpu in status.get("gpus") or ():
        holder = gpu.get("holder") if isinstance(gpu, Mapping) else None
        if not isinstance(holder, Mapping):
            continue
        if "name" not in holder:
            hidden += 1
        elif (str(holder.get("namespace")), str(holder["name"])) not in bound:
            held += 1
    view.gpus_taken = max(view.gpus_taken + held, hidden)
    for binding in (status.get("ports") or {}).get("bindings") or ():
        if isinstance(binding, Mapping) and binding.get("hostPort"):
            view.ports_taken.add((int(binding["hostPort"]), str(binding.get("protocol")
                                                               or "TCP")))
