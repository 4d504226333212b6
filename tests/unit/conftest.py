"""Fixtures of the unit suite: a node of fakes (tests/unit/fakes) for the tests that
run the real reconcilers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fakes.node import Node


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A node with 4 simulated GPUs, an agent of the real reconcilers over the fakes."""
    made = Node(tmp_path, monkeypatch)
    yield made
    made.close()
