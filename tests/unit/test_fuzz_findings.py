"""Regression tests of what the fuzz (tests/fuzz, #27 item 4) found, one per finding,
each named after it."""

from __future__ import annotations

import json
from typing import Any, cast

import kubernetes.client
import pytest

from gpudock.adapters import kube_api
from gpudock.adapters.kube_api import KubeApi
from gpudock.agent import migration_targets
from gpudock.api.reasons import Reason
from gpudock.rest import decoding, replica_set_changes, routes
from gpudock.rest.auth import Caller
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.context import ApiContext
from gpudock.rest.settings import ApiSettings
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
    status = migration_targets.replica_set_missing(
        _migration("nosuch"), cast(KubeApi, kube), NOW)
    assert status is not None
    assert status["phase"] == "Failed"
    assert status["reason"] == Reason.REPLICA_SET_NOT_FOUND
    assert "nosuch" in status["message"]
    assert status["completionTime"] == NOW


def test_gpu_migration_of_an_existing_replica_set_is_left_to_its_node() -> None:
    kube = InMemoryKube()
    kube.apply("gpureplicasets", "ns", "there", {"image": "busybox"})
    assert migration_targets.replica_set_missing(
        _migration("there"), cast(KubeApi, kube), NOW) is None


def test_gpu_migration_with_a_status_is_not_failed_again() -> None:
    kube = InMemoryKube()
    assert migration_targets.replica_set_missing(
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


class _RefusingKube:
    """A KubeApi whose API server refuses every patch as its schema would (422)."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace, "generation": 3},
                "spec": {"image": "busybox", "gpuCount": 1, "state": "Running"},
                "status": {"revision": 2}}

    def patch(self, plural: str, namespace: str, name: str,
              body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(body)
        raise kube_api.ObjectInvalidError(
            "spec.gpuCount in body should be less than or equal to 64")


def test_a_rest_patch_the_api_server_refuses_is_1007_invalid_not_an_internal_error(
        ) -> None:
    """Found: PATCH /api/v1/replicaSet/NAME with gpuPatch.gpuCount 5455 (over the CRD's
    maximum) made the API server answer 422, which the service did not expect: a
    traceback in its log and reason InternalError."""
    kube = _RefusingKube()
    ctx = ApiContext(ApiSettings(), cast(KubeApi, kube), cast(Any, None))
    caller = Caller("someone", "ns")
    with pytest.raises(RefusalError) as refused:
        replica_set_changes.patch(ctx, caller, "box", {"gpuPatch": {"gpuCount": 5455},
                                                       "volumePatch": None})
    assert refused.value.code == Code.CONTAINER_PATCH_FAILED
    assert refused.value.why == "Invalid"
    assert "less than or equal to 64" in refused.value.detail
    assert len(kube.patches) == 1  # nothing changed, so nothing to put back


def test_the_api_servers_422_is_an_object_invalid_error_with_its_message() -> None:
    refusal = kubernetes.client.ApiException(status=422, reason="Unprocessable Entity")
    refusal.body = json.dumps({"kind": "Status", "message": "spec.gpuCount: Invalid value"})
    with pytest.raises(kube_api.ObjectInvalidError, match=r"spec\.gpuCount: Invalid value"), \
            kube_api.translated("patch gpureplicasets ns/box"):
        raise refusal
