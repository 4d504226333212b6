"""The pull benchmark at a tiny size (one 1 MiB layer, one round), as part of the
suite: against its own real stack and registry, it prints its table. Nothing about
speed is asserted (docs/performance.md, "Image pulls", has a full run's numbers);
what is checked is that each kind of pull ran and printed its time and the ratios."""

from __future__ import annotations

import re

import pytest

from tests.bench import pulls

pytestmark = [pytest.mark.stack]


@pytest.mark.timeout(600)
def test_tiny_pull_benchmark_prints_every_measure(
        capsys: pytest.CaptureFixture[str]) -> None:
    pulls.main(["--layers", "1", "--layer-mib", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    print(out)
    for label in ("docker pull", "docker-py pull + inspect", "agent apply -> Ready",
                  "the agent's pull step", "agent apply -> Ready, image present"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        assert re.search(r"\s\d+\.\d\d\s", row[len(label):]), row
    for ratio in ("ratio the agent's pull step / docker pull",
                  "ratio of the pull's own part"):
        assert re.search(re.escape(ratio) + r".*: \d+\.\d\dx", out), out
