"""The chaos soak (#27, docs/reliability.md#soak) at a fixed seed for 5 minutes, on
its own local stack (its faults stop that stack's API server and its store's etcd,
restart its dockerds and fill its agents' state directories): users' operations
(SizedVolumes made, resized and deleted among them) and every fault kind, no
invariant violated, everything converged and nothing leaked at the end. The faults
come 10-30 s apart, the API server stays away 20-30 s, the store's etcd and the room
in the state directories 20-30 s (20-60, 30-60 and 20-40 s in `make soak`), so that
every fault kind comes up within the 5 minutes."""

from __future__ import annotations

import pytest

from tests.soak.faults import KINDS
from tests.soak.run import soak

SEED = 2027
MINUTES = 5


@pytest.mark.timeout(MINUTES * 60 + 900)
def test_a_five_minute_fixed_seed_soak_violates_nothing() -> None:
    figures = soak(MINUTES, SEED, nodes=2, outage=(20, 30), gap=(10, 30), down=(20, 30))
    assert figures.violations == [], figures.report()
    assert set(figures.faults) == set(KINDS), figures.report()
    done = {kind for (kind, outcome), count in figures.ops.items() if outcome == "ok"}
    assert {"create", "exec_write", "gpu_count", "volume_create"} <= done, figures.report()
    assert any(kind == "volume_resize" for kind, _ in figures.ops), figures.report()
    assert figures.convergence["end"], figures.report()
