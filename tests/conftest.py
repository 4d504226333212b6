"""Fixtures shared by the suites: the real local stack and a namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.localstack import LocalStack

TESTS = Path(__file__).resolve().parent
UNIT = TESTS / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test outside tests/unit/ runs against real components: it carries the
    ``stack`` marker, so ``pytest -m "not stack"`` (``make test-unit``) runs the unit
    tests alone, with no real component."""
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.stack)
    # The longest first, so that make test's two workers (pytest-xdist, a file at a
    # time each in this order with --no-loadscope-reorder, two files given to each at
    # the start) finish together rather than one
    # waiting on the soak at the end; the two files with a kubelet (one at a time on a
    # machine, tests/stack/node.py) go to the same worker, one after the other. The
    # sort keeps the order within each rank.
    items.sort(key=_rank)


LONGEST_FIRST = ("integration/test_soak.py", "cluster/test_helm_chart.py",
                 "integration/test_fuzz.py", "cluster/test_node_side_effects.py",
                 "integration/test_migration.py")


def _rank(item: pytest.Item) -> int:
    where = item.path.relative_to(TESTS).as_posix()
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if where.startswith(prefix)),
                len(LONGEST_FIRST))


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """One real etcd + kube-apiserver + dockerd for the whole session."""
    with LocalStack() as running:
        yield running


@pytest.fixture
def namespace(stack: LocalStack) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)
