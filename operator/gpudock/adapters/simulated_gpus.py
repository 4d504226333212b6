"""A simulated GPU inventory for hosts without GPUs (development, tests)."""

from __future__ import annotations

import uuid

from gpudock.core.gpus import GpuDevice

# A fixed namespace, so a node's simulated UUIDs are the same across agent restarts.
_SIMULATED_NAMESPACE = uuid.UUID("6f1c3a52-7d1e-4a8e-9a43-5b3d2f0c9e11")


class SimulatedGpuInventory:
    """``count`` GPUs with UUIDs derived from the node name: stable and node-unique."""

    def __init__(self, node_name: str, count: int) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        self._devices = [
            GpuDevice(
                index=i,
                uuid=f"GPU-{uuid.uuid5(_SIMULATED_NAMESPACE, f'{node_name}/{i}')}",
                name="Simulated GPU",
                memory_bytes=80 * 1024**3,
            )
            for i in range(count)
        ]

    def list_gpus(self) -> list[GpuDevice]:
        return list(self._devices)
