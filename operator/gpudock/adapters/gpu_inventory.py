"""Picks the GPU inventory backend the settings ask for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from gpudock.adapters.nvml_gpus import NvmlGpuInventory
from gpudock.adapters.simulated_gpus import SimulatedFaults, SimulatedGpuInventory
from gpudock.core.gpu_health import Fault
from gpudock.core.gpus import GpuInventory
from gpudock.settings import GpuBackend, Settings


def inventory_from_settings(settings: Settings) -> GpuInventory:
    if settings.gpu_backend is GpuBackend.SIMULATED:
        return SimulatedGpuInventory(settings.node_name, settings.simulated_gpus,
                                     settings.simulated_usage)
    return NvmlGpuInventory(settings.nvml_library)


class FaultSource(Protocol):
    """Where the GPUs' faults come from (agent/gpu_health.py runs it on a thread)."""

    def watch_events(self, report: Callable[[Fault], None], stop: threading.Event,
                     tick: Callable[[], None]) -> None: ...


def faults_from_settings(settings: Settings, inventory: GpuInventory,
                         offset: int = 0) -> FaultSource | None:
    """NVML's event loop for the nvml backend; the --simulated-faults file for the
    simulated one (None without it). ``offset``: of the file, what was read before."""
    if isinstance(inventory, NvmlGpuInventory):
        return inventory
    if settings.simulated_faults:
        return SimulatedFaults(settings.simulated_faults, offset)
    return None
