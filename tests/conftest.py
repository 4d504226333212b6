"""Fixtures shared by the suites: the real local stack and a namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.stack.localstack import LocalStack


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
