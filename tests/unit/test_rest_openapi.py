"""#25 item 6: the REST service's own /openapi.json against the Go service's file
(gpu-docker-api v0.0.3, tests/data/): the same paths and methods, and every body
field the Go file names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from gpudock.rest.app import create_app
from gpudock.rest.context import ApiContext
from gpudock.rest.settings import ApiSettings

GO_FILE = Path(__file__).resolve().parents[1] / "data" / "gpu-docker-api-v0.0.3.openapi.json"


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, methods in document["paths"].items()
            for method, op in methods.items()}


def _body_fields(op: dict[str, Any]) -> set[str]:
    content = (op.get("requestBody") or {}).get("content") or {}
    schema = (content.get("application/json") or {}).get("schema") or {}
    return set(schema.get("properties") or {})


def _ours() -> dict[str, Any]:
    ctx = ApiContext(ApiSettings(), cast(Any, None), cast(Any, None))
    return create_app(ctx).openapi()


def test_25_6_openapi_has_the_go_services_paths_methods_and_body_fields() -> None:
    go = _operations(json.loads(GO_FILE.read_text()))
    ours = _operations(_ours())
    assert set(ours) == set(go)
    assert len(ours) == 19
    for key, op in go.items():
        assert _body_fields(op) <= _body_fields(ours[key]), key
        go_params = {p["name"] for p in op.get("parameters") or ()}
        assert go_params == {p["name"] for p in ours[key].get("parameters") or ()}, key


def test_25_6_openapi_bodies_also_name_the_fields_the_go_code_reads() -> None:
    """The Go file leaves out fields its handlers read (cmd of a create, workDir)."""
    ours = _operations(_ours())
    assert "cmd" in _body_fields(ours[("POST", "/api/v1/replicaSet")])
    assert "workDir" in _body_fields(ours[("POST", "/api/v1/replicaSet/{name}/execute")])
    patch = ours[("PATCH", "/api/v1/replicaSet/{name}")]["requestBody"]["content"]
    volume_patch = patch["application/json"]["schema"]["properties"]["volumePatch"]
    assert set(volume_patch["properties"]["oldBind"]["properties"]) == {"src", "dest"}
