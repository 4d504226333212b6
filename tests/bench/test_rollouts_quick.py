"""The rollout benchmark at its reduced size, as part of the suite: every measure runs
against its own real stack and prints its table. Nothing about speed is asserted
(docs/performance.md has the numbers of a full run); what is checked is that each
measure ran and printed a number in every cell."""

from __future__ import annotations

import re

import pytest

from tests.bench import rollouts

pytestmark = [pytest.mark.stack]


@pytest.mark.timeout(1200)  # about 6 minutes here: one 30 s stop, 30 resources, idle window
def test_quick_benchmark_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert rollouts.main(["--quick"]) == 0
    out = capsys.readouterr().out
    print(out)
    for title in rollouts.MEASURES:
        assert f"## {title}" in out
    tables = out.split("## ")[1:]
    assert len(tables) == len(rollouts.MEASURES)
    for section in tables:
        rows = [line for line in section.splitlines()[2:] if line.strip()]
        assert len(rows) >= 2, section  # a header and at least one measured row
        assert all(re.search(r"\d", row) for row in rows[1:]), section
