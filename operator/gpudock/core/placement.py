"""Placing a resource on a node: filters, then a score, as kube-scheduler does.

Pure: the scheduler (gpudock/scheduler/) builds a ``NodeView`` per GpuNode from the
GpuNodes and the resources already bound (core/fleet_view.py), asks ``place`` for each
resource waiting, and binds it. Each filter that turns a node down gives one reason;
a resource no node takes gets kube-scheduler's message, e.g.
``0/3 nodes are available: 2 Insufficient GPUs, 1 node(s) didn't match node
selector.`` (reasons by count, most first, then by text).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gpudock.api.placement import Placement, SchedulingPolicy, Taint

NOT_READY = "node(s) were not ready"
UNSCHEDULABLE = "node(s) were unschedulable"
REJECTED = "node(s) handed it back recently"
VOLUME_NODE = "node(s) had volume node affinity conflict"
NODE_SELECTOR = "node(s) didn't match node selector"
GPU_SELECTOR = "node(s) didn't match GPU selector"
INSUFFICIENT_GPUS = "Insufficient GPUs"
INSUFFICIENT_CPU = "Insufficient cpu"
INSUFFICIENT_MEMORY = "Insufficient memory"
PORTS = "node(s) didn't have free ports for the requested host ports"
STORAGE = "node(s) did not have enough free storage"
NO_ENDPOINT = "node(s) had no migration endpoint (with TLS)"


@dataclass(frozen=True)
class GpuView:
    model: str
    memory_mib: int
    healthy: bool = True


@dataclass
class NodeView:
    """A node as the scheduler sees it in one pass; ``claim`` updates what is taken
    when the pass binds something to it, so a burst never overfills a node."""

    name: str
    ready: bool = True
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[GpuView, ...] = ()
    gpus_taken: int = 0          # by what is bound here (or held, if more)
    cpu_millis: int | None = None       # allocatable; None: not reported (no limit)
    memory_bytes: int | None = None
    cpu_taken: int = 0
    memory_taken: int = 0
    ports_taken: set[tuple[int, str]] = field(default_factory=set)
    # Where an explicit hostPort may lie on the node (--allowed-host-ports, else its
    # --port-range); None: not reported (no check).
    explicit_ports: tuple[int, int] | None = None
    volume_free_bytes: int | None = None  # None: not reported (no check)

    @property
    def healthy_gpus(self) -> int:
        return sum(1 for g in self.gpus if g.healthy)

    @property
    def gpus_free(self) -> int:
        return max(0, self.healthy_gpus - self.gpus_taken)

    def claim(self, demand: Demand) -> None:
        self.gpus_taken += demand.gpu_count
        self.cpu_taken += demand.placement.cpu_millis
        self.memory_taken += demand.placement.memory_bytes
        self.ports_taken |= demand.host_ports
        if self.volume_free_bytes is not None:
            self.volume_free_bytes -= demand.volume_bytes


@dataclass(frozen=True)
class Demand:
    """What one resource asks of a node."""

    gpu_count: int = 0
    placement: Placement = field(default_factory=Placement)
    host_ports: frozenset[tuple[int, str]] = frozenset()
    volume_node: str = ""    # the node of a mounted SizedVolume that is bound already
    volume_bytes: int = 0    # SizedVolumes to make on the node with it (unbound ones)
    avoid: frozenset[str] = frozenset()  # nodes that handed it back (in backoff)


@dataclass(frozen=True)
class Placed:
    node: str


@dataclass(frozen=True)
class Unplaceable:
    message: str


def place(demand: Demand, nodes: Sequence[NodeView],
          default_policy: SchedulingPolicy = SchedulingPolicy.BINPACK,
          also: Callable[[NodeView], str | None] = lambda node: None) -> Placed | Unplaceable:
    """The node for ``demand`` (Binpack: the one left with the fewest free GPUs;
    Spread: the most; ties by name), or why none fits. ``also`` is one more filter
    after the others (a migration's target must have a transfer endpoint)."""
    fitting: list[NodeView] = []
    reasons: Counter[str] = Counter()
    for node in nodes:
        reason = first_misfit(demand, node) or also(node)
        if reason is None:
            fitting.append(node)
        else:
            reasons[reason] += 1
    if not fitting:
        return Unplaceable(unplaceable_message(len(nodes), reasons))
    policy = demand.placement.policy or default_policy
    sign = 1 if policy == SchedulingPolicy.BINPACK else -1
    best = min(fitting, key=lambda n: (sign * (n.gpus_free - demand.gpu_count), n.name))
    return Placed(best.name)


def unplaceable_message(node_count: int, reasons: Mapping[str, int]) -> str:
    if node_count == 0:
        return "0/0 nodes are available: no GpuNode exists (no gpudock agent runs)."
    parts = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return (f"0/{node_count} nodes are available: "
            + ", ".join(f"{count} {reason}" for reason, count in parts) + ".")


def first_misfit(demand: Demand, node: NodeView) -> str | None:
    """The first filter that turns ``node`` down, or None when it fits."""
    for check in _FILTERS:
        reason = check(demand, node)
        if reason is not None:
            return reason
    return None


def _ready(demand: Demand, node: NodeView) -> str | None:
    return None if node.ready else NOT_READY


def _schedulable(demand: Demand, node: NodeView) -> str | None:
    return UNSCHEDULABLE if node.unschedulable else None


def _taints(demand: Demand, node: NodeView) -> str | None:
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not any(
                t.tolerates(taint) for t in demand.placement.tolerations):
            return f"node(s) had untolerated taint {taint}"
    return None


def _backoff(demand: Demand, node: NodeView) -> str | None:
    return REJECTED if node.name in demand.avoid else None


def _volume_node(demand: Demand, node: NodeView) -> str | None:
    return VOLUME_NODE if demand.volume_node and demand.volume_node != node.name else None


def _node_selector(demand: Demand, node: NodeView) -> str | None:
    wanted = demand.placement.node_selector
    return None if all(node.labels.get(k) == v for k, v in wanted.items()) else NODE_SELECTOR


def _gpu_selector(demand: Demand, node: NodeView) -> str | None:
    placement = demand.placement
    if demand.gpu_count == 0 or not (placement.gpu_models or placement.gpu_min_memory_mib):
        return None
    matching = [g for g in node.gpus if _gpu_matches(placement, g)]
    return None if len(matching) >= demand.gpu_count else GPU_SELECTOR


def _gpu_matches(placement: Placement, gpu: GpuView) -> bool:
    if placement.gpu_models and not any(m.lower() in gpu.model.lower()
                                        for m in placement.gpu_models):
        return False
    return gpu.memory_mib >= placement.gpu_min_memory_mib


def _gpus(demand: Demand, node: NodeView) -> str | None:
    return INSUFFICIENT_GPUS if demand.gpu_count > node.gpus_free else None


def _cpu(demand: Demand, node: NodeView) -> str | None:
    wanted = demand.placement.cpu_millis
    if node.cpu_millis is None or not wanted:
        return None
    return INSUFFICIENT_CPU if node.cpu_taken + wanted > node.cpu_millis else None


def _memory(demand: Demand, node: NodeView) -> str | None:
    wanted = demand.placement.memory_bytes
    if node.memory_bytes is None or not wanted:
        return None
    return INSUFFICIENT_MEMORY if node.memory_taken + wanted > node.memory_bytes else None


def _ports(demand: Demand, node: NodeView) -> str | None:
    if node.explicit_ports is not None:
        first, last = node.explicit_ports
        if any(not first <= port <= last for port, _ in demand.host_ports):
            return PORTS  # the node's agent would refuse it (HostPortNotAllowed)
    return PORTS if demand.host_ports & node.ports_taken else None


def _storage(demand: Demand, node: NodeView) -> str | None:
    if not demand.volume_bytes or node.volume_free_bytes is None:
        return None
    return STORAGE if demand.volume_bytes > node.volume_free_bytes else None


# In kube-scheduler's spirit: what the node is (ready, cordoned, tainted, rejected),
# then what the resource asks (its volume's node, labels, GPU models), then room.
_FILTERS: tuple[Callable[[Demand, NodeView], str | None], ...] = (
    _ready, _schedulable, _taints, _backoff, _volume_node, _node_selector, _gpu_selector,
    _gpus, _cpu, _memory, _ports, _storage,
)
