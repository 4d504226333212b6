"""The migration benchmark at a tiny size (10 MiB in the layer and 10 MiB in a
SizedVolume, one round), as part of the suite: it runs against its own real stack
and prints its table. Nothing about speed is asserted (docs/migration.md,
"Benchmark", has the numbers of a full run); what is checked is that every measure
ran and printed a number."""

from __future__ import annotations

import re

import pytest

from tests.bench import migration
from tests.bench.migration_report import COLUMNS, RATIOS

pytestmark = [pytest.mark.stack]


@pytest.mark.timeout(600)  # about 1 minute here
def test_tiny_migration_benchmark_prints_every_measure(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert migration.main(["--gib", "0.01", "--volume-gib", "0.01",
                           "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    print(out)
    for label in (*COLUMNS, *RATIOS):
        row = next(line for line in out.splitlines() if line.startswith(label))
        assert re.search(r"\d+\.\d\d[sx]", row[len(label):]), row
        assert "nan" not in row, row
    assert re.search(r"10 MiB written before the stop\s+yes", out), out
