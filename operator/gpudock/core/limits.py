"""What a GpuReplicaSet's container gets of the node's CPUs, memory, /dev/shm and
processes, and what it asks for (docs/fleet.md, "Limits").

Pure. Limits are what Docker enforces (HostConfig NanoCpus, Memory with MemorySwap
equal, ShmSize, PidsLimit); requests are what the node's accounting counts (GpuNode
``status.allocated``) and what a scheduler places by. A resource that sets no limit
gets the node's per-GPU default (``--cpus-per-gpu``, ``--memory-per-gpu``,
``--shm-per-gpu``; 0: none), never below its own request; a request not set is its
limit, as in Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpudock.api.container_limits import IN_PLACE_FIELDS, format_cpu
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.quantity import format_size
from gpudock.api.reasons import Reason
from gpudock.errors import SpecError, UserError

NANO_PER_MILLI = 1_000_000


@dataclass(frozen=True)
class LimitDefaults:
    """The node's per-GPU defaults (0: none)."""

    cpu_per_gpu: int = 0  # millicores
    memory_per_gpu: int = 0  # bytes
    shm_per_gpu: int = 0  # bytes


@dataclass(frozen=True)
class NodeCapacity:
    """The node's CPUs and memory as its Docker engine reports them."""

    cpu: int  # millicores
    memory: int  # bytes

    def to_dict(self) -> dict[str, str]:
        return {"cpu": format_cpu(self.cpu), "memory": format_size(self.memory)}


@dataclass(frozen=True)
class ContainerLimits:
    """A container's limits as Docker holds them; 0 is none (for ``shm_size``:
    Docker's default, 64 MiB)."""

    nano_cpus: int = 0
    memory: int = 0  # MemorySwap is the same: no swap beyond it
    pids_limit: int = 0
    shm_size: int = 0

    def in_place(self) -> tuple[int, int, int]:
        """What Docker's update changes on the running container."""
        return (self.nano_cpus, self.memory, self.pids_limit)

    def describe(self) -> str:
        def show(value: int, text: str) -> str:
            return text if value else "unlimited"
        return (f"cpu {show(self.nano_cpus, format_cpu(self.nano_cpus // NANO_PER_MILLI))}, "
                f"memory {show(self.memory, format_size(self.memory))}, "
                f"pids {show(self.pids_limit, str(self.pids_limit))}")


@dataclass(frozen=True)
class Requests:
    cpu: int = 0  # millicores
    memory: int = 0  # bytes


def _limit(given: int | None, request: int | None, per_gpu: int, gpus: int,
           ceiling: int | None = None) -> int:
    if given is not None:
        return given
    default = per_gpu * gpus
    if ceiling is not None and default > ceiling:
        default = ceiling  # a default never asks for more than the node has
    if default and request is not None and request > default:
        return request
    return default


def limits_for(spec: GpuReplicaSetSpec, defaults: LimitDefaults,
               node: NodeCapacity | None = None) -> ContainerLimits:
    r = spec.resources
    cpu = _limit(r.cpu_limit, r.cpu_request, defaults.cpu_per_gpu, spec.gpu_count,
                 node.cpu if node is not None else None)
    memory = _limit(r.memory_limit, r.memory_request, defaults.memory_per_gpu,
                    spec.gpu_count)
    shm = spec.shm_size if spec.shm_size is not None else \
        defaults.shm_per_gpu * spec.gpu_count
    return ContainerLimits(nano_cpus=cpu * NANO_PER_MILLI, memory=memory,
                           pids_limit=spec.pids_limit or 0, shm_size=shm)


def requests_for(spec: GpuReplicaSetSpec, defaults: LimitDefaults,
                 node: NodeCapacity | None = None) -> Requests:
    limits = limits_for(spec, defaults, node)
    r = spec.resources
    return Requests(
        cpu=r.cpu_request if r.cpu_request is not None else
        limits.nano_cpus // NANO_PER_MILLI,
        memory=r.memory_request if r.memory_request is not None else limits.memory)


def check_on_node(spec: GpuReplicaSetSpec, defaults: LimitDefaults,
                  node: NodeCapacity | None) -> ContainerLimits:
    """The container's limits; UserError ExceedsNodeCapacity when it asks for more
    CPUs, or requests more memory, than the node has in all."""
    limits = limits_for(spec, defaults, node)
    if node is None:
        return limits
    requests = requests_for(spec, defaults, node)
    cpu = max(limits.nano_cpus // NANO_PER_MILLI, requests.cpu)
    if cpu > node.cpu:
        raise UserError(Reason.EXCEEDS_NODE_CAPACITY, (
            f"spec.resources asks for {format_cpu(cpu)} CPUs; node {spec.node_name} has "
            f"{format_cpu(node.cpu)} in all (nothing was changed)"))
    if requests.memory > node.memory:
        raise UserError(Reason.EXCEEDS_NODE_CAPACITY, (
            f"spec.resources.requests.memory {format_size(requests.memory)} is more than "
            f"node {spec.node_name} has in all ({format_size(node.memory)}; nothing was "
            "changed)"))
    return limits


def in_place_fields(shape: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a recorded shape that change in place (absent: not set)."""
    return {k: shape[k] for k in IN_PLACE_FIELDS if shape.get(k)}


def recorded_requests(shape: Mapping[str, Any], defaults: LimitDefaults,
                      node: NodeCapacity | None = None) -> Requests:
    """The requests of a revision from its recorded shape; zero when it cannot be
    read (a record of a newer agent)."""
    try:
        spec = GpuReplicaSetSpec.parse({**shape, "nodeName": "node"})
    except SpecError:
        return Requests()
    return requests_for(spec, defaults, node)


def allocation(requests: list[Requests]) -> dict[str, str]:
    """GpuNode ``status.allocated``: the sum of the requests, as quantities."""
    return {"cpu": format_cpu(sum(r.cpu for r in requests)),
            "memory": format_size(sum(r.memory for r in requests))}


def capacity_from(cpus: int, memory: int) -> NodeCapacity:
    """The node's capacity from its engine's CPU count and memory bytes."""
    return NodeCapacity(cpu=cpus * 1000, memory=memory)

