"""Fixtures shared by the suites: the real local stack and a namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.localstack import LocalStack

UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test outside tests/unit/ runs against real components: it carries the
    ``stack`` marker, so ``pytest -m "not stack"`` (``make test-unit``) runs the unit
    tests alone, with no real component."""
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.stack)


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
