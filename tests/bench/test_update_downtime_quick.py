"""The update benchmark of #23 item 6 at a tiny size (one round, 10 and 30 MB of
changes), as part of the suite: it runs against its own real stack and prints its
table. Nothing about speed is asserted (docs/performance.md, "Updates with a
pre-copy", has a full run); what is checked is that every method of every row ran
and printed a number."""

from __future__ import annotations

import re

import pytest

from tests.bench import update_downtime

pytestmark = [pytest.mark.stack]


@pytest.mark.timeout(600)  # about 40 s here
def test_tiny_update_benchmark_prints_every_measure(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert update_downtime.main(["--rounds", "1", "--rows", "20:30,20:10"]) == 0
    out = capsys.readouterr().out
    print(out)
    for row in ("20 MB / 30 MB", "20 MB / 10 MB"):
        lines = [line for line in out.splitlines() if line.startswith(row)]
        assert len(lines) == 3, out  # the pre-copy, the way before, the original
        for line in lines:
            assert len(re.findall(r"\d+\.\d\d s \(", line)) >= 2, line
    assert re.search(r"20 MB / 30 MB: gpudock, pre-copy \+ layer moved: \d+\.\d\dx", out), out
