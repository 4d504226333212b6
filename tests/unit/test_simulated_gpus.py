from __future__ import annotations

from gpudock.adapters.simulated_gpus import SimulatedGpuInventory


def test_simulated_inventory_reports_n_stable_node_unique_gpus() -> None:
    gpus = SimulatedGpuInventory("node-a", 8).list_gpus()
    assert [g.index for g in gpus] == list(range(8))
    assert len({g.uuid for g in gpus}) == 8
    assert all(g.uuid.startswith("GPU-") for g in gpus)
    assert SimulatedGpuInventory("node-a", 8).list_gpus() == gpus  # stable across restarts
    other = {g.uuid for g in SimulatedGpuInventory("node-b", 8).list_gpus()}
    assert other.isdisjoint(g.uuid for g in gpus)
    assert SimulatedGpuInventory("node-a", 0).list_gpus() == []
