"""#25 item 2: every error code of gpu-docker-api's table, in the order its handlers
check them, with nothing changed by a refusal; gin's lenient decoding, CORS and 404."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.test_rest_api import IMAGE, ok, run_body
from tests.stack.api_process import ApiProcess, api_service_kubeconfig
from tests.stack.localstack import LocalStack
from tests.stack.processes import free_port_range
from tests.stack.resources import containers


@pytest.fixture
def api(stack: LocalStack, namespace: str) -> Iterator[ApiProcess]:
    stack.kubectl("get", "grs", "-n", namespace, check=False)  # see test_rest_api.api
    process = ApiProcess(stack, namespace,
                         kubeconfig=api_service_kubeconfig(stack, namespace)).start()
    yield process
    process.stop()
    stack.kubectl("delete", "clusterrolebinding", f"gpudock-api-{namespace}", check=False)


def refused(api: ApiProcess, method: str, path: str, body: object = None, *,
            raw: bytes | None = None) -> tuple[int, str | None]:
    answer = api.call(method, path, body, raw=raw)
    assert answer.data is None
    assert answer.body["msg"] != "Success"
    return answer.code, answer.reason


def test_25_2_every_error_code_in_checking_order(
        stack: LocalStack, namespace: str, start_agent: AgentFactory, api: ApiProcess) -> None:
    first = free_port_range(2)
    start_agent(extra_args=["--port-range", f"{first}-{first + 1}"])
    rs = "/replicaSet"
    # POST /replicaSet: 1000, 1001, 1002, 1012 (before 1003), 1003, 1008, 1013, 1014, 1004
    assert refused(api, "POST", rs, raw=b"{")[0] == 1000
    assert refused(api, "POST", rs, raw=b"")[0] == 1000
    assert refused(api, "POST", rs, {"gpuCount": "1"})[0] == 1000
    assert refused(api, "POST", rs, {})[0] == 1001
    assert refused(api, "POST", rs, {"imageName": IMAGE})[0] == 1002
    assert refused(api, "POST", rs, run_body("a-b", gpuCount=-1))[0] == 1012
    assert refused(api, "POST", rs, run_body("a-b"))[0] == 1003
    ok(api.call("POST", rs, run_body("foo")))
    assert refused(api, "POST", rs, run_body("foo", gpuCount=-1))[0] == 1012
    assert refused(api, "POST", rs, run_body("foo"))[0] == 1008
    assert refused(api, "POST", rs, run_body("big", gpuCount=9)) == \
        (1013, "ExceedsNodeCapacity")
    assert refused(api, "POST", rs, run_body("big", gpuCount=8)) == (1013, "InsufficientGPUs")
    assert refused(api, "POST", rs, run_body("many", gpuCount=0,
                                             containerPorts=["1", "2", "3"])) == \
        (1014, "NoFreeHostPort")
    assert refused(api, "POST", rs, run_body("none", imageName="no/such:1"))[0] == 1004
    assert refused(api, "POST", rs, run_body("vol", binds=[{"src": "bar-1", "dest": "/d"}])) \
        == (1004, "VolumeNotFound")
    for name in ("big", "many", "none", "vol"):  # a refused create leaves nothing
        assert api.call("GET", f"{rs}/{name}").code == 1016
    assert len(containers(stack, namespace)) == 1

    # commit, execute: 1000 then the endpoint's code
    assert refused(api, "POST", f"{rs}/foo/commit", raw=b"[]")[0] == 1000
    assert refused(api, "POST", f"{rs}/nope/commit", {"newImageName": "x:1"})[0] == 1015
    assert refused(api, "POST", f"{rs}/foo/execute", {"cmd": "ls"})[0] == 1000
    assert refused(api, "POST", f"{rs}/nope/execute", {"cmd": ["ls"]})[0] == 1006

    # PATCH: 1000, 1012, 1000 (a volumePatch without src or oldBind), 1007
    assert refused(api, "PATCH", f"{rs}/foo", raw=b"x")[0] == 1000
    assert refused(api, "PATCH", f"{rs}/foo", {"gpuPatch": {"gpuCount": -1}})[0] == 1012
    assert refused(api, "PATCH", f"{rs}/foo", {"volumePatch": {
        "oldBind": {"src": "", "dest": "/a"}, "newBind": {"src": "/b", "dest": "/a"}}})[0] \
        == 1000
    assert refused(api, "PATCH", f"{rs}/foo", {"volumePatch": {
        "newBind": {"src": "/b", "dest": "/a"}}})[0] == 1000
    assert refused(api, "PATCH", f"{rs}/nope", {})[0] == 1007
    assert refused(api, "PATCH", f"{rs}/foo", {"gpuPatch": {"gpuCount": 9}}) == \
        (1007, "ExceedsNodeCapacity")
    ok(api.call("POST", rs, run_body("hold", gpuCount=6)))  # 1 of 8 left free
    assert refused(api, "PATCH", f"{rs}/foo", {"gpuPatch": {"gpuCount": 3}}) == \
        (1007, "InsufficientGPUs")
    info = ok(api.call("GET", f"{rs}/foo"))["Info"]  # the previous spec is back
    assert len(info["hostConfig"]["DeviceRequests"][0]["DeviceIDs"]) == 1
    assert info["containerName"] == "foo-1"
    # ... and the new version it asked for is not made after all (#25 item 4).
    grs: Any = stack.kubectl_json("get", "grs", "foo", "-n", namespace)
    assert "gpudock.dev/redeploy" not in (grs["metadata"].get("annotations") or {})

    # rollback: 1000, 1020, 1021 (unknown name), 1022, 1021 (unknown version)
    assert refused(api, "PATCH", f"{rs}/foo/rollback", {"version": "1"})[0] == 1000
    assert refused(api, "PATCH", f"{rs}/foo/rollback", {"version": -1})[0] == 1020
    assert refused(api, "PATCH", f"{rs}/nope/rollback", {"version": 1})[0] == 1021
    assert refused(api, "PATCH", f"{rs}/foo/rollback", {"version": 1})[0] == 1022
    assert refused(api, "PATCH", f"{rs}/foo/rollback", {"version": 0})[0] == 1021

    # the endpoints without a body: their one code for an unknown name
    for method, path, code in (("PATCH", "stop", 1010), ("PATCH", "restart", 1011),
                               ("PATCH", "pause", 1018), ("PATCH", "continue", 1011),
                               ("GET", "history", 1017)):
        assert refused(api, method, f"{rs}/nope/{path}") == (code, "NotFound")
    assert refused(api, "GET", f"{rs}/nope")[0] == 1016
    assert refused(api, "DELETE", f"{rs}/nope")[0] == 1005

    # volumes: 1000, 1031, 1032, 1026, 1023; size 1000, 1029, 1035, 1028; 1025, 1033, 1034
    assert refused(api, "POST", "/volumes", raw=b"1")[0] == 1000
    assert refused(api, "POST", "/volumes", {"name": "a-b", "size": "1GB"})[0] == 1031
    assert refused(api, "POST", "/volumes", {"name": "/ab", "size": "1GB"})[0] == 1032
    ok(api.call("POST", "/volumes", {"name": "bar", "size": "32MB"}))
    assert refused(api, "POST", "/volumes", {"name": "bar", "size": "20XB"})[0] == 1026
    assert refused(api, "POST", "/volumes", {"name": "baz", "size": "20XB"})[0] == 1023
    assert refused(api, "POST", "/volumes", {"name": "baz"})[0] == 1023  # never unlimited
    assert refused(api, "PATCH", "/volumes/bar/size", {"size": 1})[0] == 1000
    assert refused(api, "PATCH", "/volumes/bar/size", {"size": "5"})[0] == 1029
    assert refused(api, "PATCH", "/volumes/bar/size", {"size": "5XB"})[0] == 1029
    assert refused(api, "PATCH", "/volumes/nope/size", {"size": "5GB"})[0] == 1035
    assert refused(api, "PATCH", "/volumes/bar/size", {"size": "32mb"})[0] == 1028
    assert refused(api, "DELETE", "/volumes/nope")[0] == 1025
    assert refused(api, "GET", "/volumes/nope")[0] == 1033
    assert refused(api, "GET", "/volumes/nope/history")[0] == 1034
    assert ok(api.call("GET", "/volumes/bar"))["Info"]["opt"]["Name"] == "bar-1"


def test_25_2_lenient_decoding_cors_and_404(
        stack: LocalStack, namespace: str, start_agent: AgentFactory, api: ApiProcess) -> None:
    start_agent()
    # Any Content-Type, keys in any case, unknown keys ignored, trailing text ignored.
    body = json.dumps({"IMAGENAME": IMAGE, "ReplicaSetName": "loose", "gpucount": 0,
                       "CMD": ["sleep", "infinity"], "unknown": {"x": 1}}).encode()
    answer = api.call("POST", "/replicaSet", raw=body + b" trailing",
                      headers={"Content-Type": "text/plain", "Origin": "http://ui.example"})
    assert answer.raw == b'{"code":200,"msg":"Success","data":{"name":"loose-1"}}'
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.headers["access-control-allow-origin"] == "http://ui.example"
    assert answer.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in api.call("GET", "/replicaSet/loose").headers
    error = api.call("PATCH", "/replicaSet/loose/rollback", raw=b'{"version": 1.5}')
    assert error.raw == b'{"code":1000,"msg":"Failed to parse body","data":null}'
    assert error.reason == "InvalidBody"

    for path in ("/api/v1/replicaSet/loose", "/anything/at/all"):
        preflight = api.request("OPTIONS", path, headers={"Origin": "http://ui.example"})
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert preflight.headers["access-control-allow-methods"] == "POST, GET, OPTIONS"
    for method, path in (("GET", "/api/v1/nothing"), ("PUT", "/api/v1/replicaSet/loose"),
                         ("GET", "/api/v1/volumes")):
        missing = api.request(method, path)
        assert (missing.status, missing.raw) == (404, b"404 page not found")
    # A Go name Kubernetes does not take works through a derived object name.
    assert ok(api.call("POST", "/replicaSet", run_body("Upper_Case", gpuCount=0))) == \
        {"name": "Upper_Case-1"}
    assert ok(api.call("GET", "/replicaSet/Upper_Case"))["Info"]["containerName"] == \
        "Upper_Case-1"
    assert ok(api.call("DELETE", "/replicaSet/Upper_Case")) is None
    pong = api.request("GET", "/ping")
    assert (pong.status, pong.raw) == (200, b'{"message":"pong"}')
