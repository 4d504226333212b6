"""Picks the GPU inventory backend the settings ask for."""

from __future__ import annotations

from gpudock.adapters.nvml_gpus import NvmlGpuInventory
from gpudock.adapters.simulated_gpus import SimulatedGpuInventory
from gpudock.core.gpus import GpuInventory
from gpudock.settings import GpuBackend, Settings


def inventory_from_settings(settings: Settings) -> GpuInventory:
    if settings.gpu_backend is GpuBackend.SIMULATED:
        return SimulatedGpuInventory(settings.node_name, settings.simulated_gpus)
    return NvmlGpuInventory(settings.nvml_library)
