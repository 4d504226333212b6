"""The local stack with a real node (kubelet, controller-manager, scheduler) and the
agent image built into its dockerd: the ground the chart's tests install on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack.helm_chart import build_image
from tests.stack.localstack import LocalStack


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalStack]:
    with LocalStack(node=True) as running:
        build_image(running)
        yield running
