"""GPU devices as the core sees them, and the seam every inventory backend fills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GpuDevice:
    index: int
    uuid: str  # "GPU-xxxxxxxx-...": the identity used everywhere (labels, allocation)
    name: str = ""
    memory_bytes: int = 0
    # What the inventory could tell at listing: Healthy (it answered), Unhealthy or
    # Lost (NVML's queries for it failed, GPU_IS_LOST for the latter).
    health: str = "Healthy"
    # Why it is not Healthy (XID79, ECCUncorrectable, Lost) and since when
    # (core/gpu_health.py lays the agent's marks over the listing).
    health_reason: str = ""
    since: str = ""
    # Usage now (None: the backend cannot tell): percent of time a kernel ran, memory
    # used, and the processes on it (docs/gpu-health.md, "Usage").
    utilization: int | None = None
    memory_used_bytes: int | None = None
    processes: int | None = None


class GpuInventory(Protocol):
    """Lists the node's GPUs. Implementations raise gpudock.errors on failure."""

    def list_gpus(self) -> list[GpuDevice]: ...
