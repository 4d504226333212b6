"""Regression tests of what the fuzz (tests/fuzz, #27 item 4) found, one per finding,
each named after it."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gpudock.adapters.kube_api import KubeApi
from gpudock.agent import migration_runner
from gpudock.api.reasons import Reason
from gpudock.rest import decoding, routes
from tests.unit.fakes.kube import InMemoryKube

NOW = "2026-12-06T02:00:00Z"


def _migration(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "move", "uid": "u1"},
            "spec": {"replicaSetName": name}, **({"status": status} if status else {})}


def test_gpu_migration_of_a_missing_replica_set_is_failed_not_left_without_status(
        ) -> None:
    """Found: a GpuMigration naming a GpuReplicaSet that does not exist stayed with no
    status at all (no node holds it, so no source agent took it up)."""
    kube = InMemoryKube()
    status = migration_runner.replica_set_missing(
        _migration("nosuch"), cast(KubeApi, kube), NOW)
    assert status is not None
    assert status["phase"] == "Failed"
    assert status["reason"] == Reason.REPLICA_SET_NOT_FOUND
    assert "nosuch" in status["message"]
    assert status["completionTime"] == NOW


def test_gpu_migration_of_an_existing_replica_set_is_left_to_its_node() -> None:
    kube = InMemoryKube()
    kube.apply("gpureplicasets", "ns", "there", {"image": "busybox"})
    assert migration_runner.replica_set_missing(
        _migration("there"), cast(KubeApi, kube), NOW) is None


def test_gpu_migration_with_a_status_is_not_failed_again() -> None:
    kube = InMemoryKube()
    assert migration_runner.replica_set_missing(
        _migration("nosuch", phase="Failed", reason="NotMigratable"),
        cast(KubeApi, kube), NOW) is None


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000,
                                 b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_a_rest_body_nested_too_deep_is_refused_as_a_body_error_not_a_traceback(
        raw: bytes) -> None:
    """Found: a deeply nested JSON body raised RecursionError in the REST API's decoder,
    logged with a traceback (answered as the endpoint's failure, not 1000)."""
    with pytest.raises(decoding.BodyError, match="nests too deep"):
        decoding.decode_body(raw, routes.ROLLBACK)
