"""The chaos soak (#27, docs/reliability.md#soak) at a fixed seed for 5 minutes, on
its own local stack (its faults stop that stack's API server and restart its
dockerds): users' operations and every fault kind, no invariant violated, everything
converged and nothing leaked at the end. The API server stays away 20-30 s here
(30-60 s in `make soak`) so that every fault kind comes up within the 5 minutes."""

from __future__ import annotations

import pytest

from tests.soak.faults import KINDS
from tests.soak.run import soak

SEED = 2027
MINUTES = 5


@pytest.mark.timeout(MINUTES * 60 + 900)
def test_a_five_minute_fixed_seed_soak_violates_nothing() -> None:
    figures = soak(MINUTES, SEED, nodes=2, outage=(20, 30), gap=(15, 40))
    assert figures.violations == [], figures.report()
    assert set(figures.faults) == set(KINDS), figures.report()
    done = {kind for (kind, outcome), count in figures.ops.items() if outcome == "ok"}
    assert {"create", "exec_write", "gpu_count"} <= done, figures.report()
    assert figures.convergence["end"], figures.report()
