"""#25: gpu-docker-api v0.0.3's REST API (`gpudock api`, a real uvicorn process) on the
real stack: the agent runs what it asks, kube-apiserver holds the objects. The API
runs as a ServiceAccount with exactly the chart's ClusterRole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.stack.api_process import ApiProcess, api_service_kubeconfig
from tests.stack.localstack import LocalStack
from tests.stack.resources import containers, env_of

IMAGE = "gpudock-test/busybox:1"
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


@pytest.fixture
def api(stack: LocalStack, namespace: str) -> Iterator[ApiProcess]:
    # kubectl 1.20 answers its first call with a discovery cache that can predate the
    # CRDs (an earlier stack on the same port); this call renews it, so the fixtures'
    # `kubectl delete grs` at the end finds the kind.
    stack.kubectl("get", "grs", "-n", namespace, check=False)
    process = ApiProcess(stack, namespace,
                         kubeconfig=api_service_kubeconfig(stack, namespace)).start()
    yield process
    process.stop()
    stack.kubectl("delete", "clusterrolebinding", f"gpudock-api-{namespace}", check=False)


def run_body(name: str, **extra: Any) -> dict[str, Any]:
    return {"imageName": IMAGE, "replicaSetName": name, "gpuCount": 1,
            "cmd": ["sleep", "infinity"], **extra}


def sh(api: ApiProcess, name: str, script: str) -> str:
    answer = api.call("POST", f"/replicaSet/{name}/execute", {"cmd": ["sh", "-c", script]})
    assert answer.code == 200, answer.raw
    return str(answer.data["stdout"])


def ok(answer: Any) -> Any:
    assert answer.code == 200, (answer.raw, answer.reason)
    assert answer.body["msg"] == "Success"
    return answer.data


def test_25_1_create_update_rollback_stop_restart_keep_the_disk(
        stack: LocalStack, namespace: str, start_agent: AgentFactory, api: ApiProcess) -> None:
    start_agent()
    assert ok(api.call("POST", "/replicaSet", run_body(
        "foo", env=["A=1"], containerPorts=["22"]))) == {"name": "foo-1"}
    assert sh(api, "foo", "echo kept > /root/kept.txt; echo out; echo err >&2") == \
        "out\nerr\n"
    info = ok(api.call("GET", "/replicaSet/foo"))["Info"]
    assert list(info) == ["version", "createTime", "config", "hostConfig",
                          "networkingConfig", "platform", "containerName"]
    assert (info["version"], info["containerName"]) == (1, "foo-1")
    assert TIME.match(info["createTime"])
    assert info["config"]["Image"] == IMAGE
    assert {"A=1", "CONTAINER_VERSION=1"} <= set(info["config"]["Env"])
    assert info["config"]["ExposedPorts"] == {"22/tcp": {}}
    assert info["hostConfig"]["PortBindings"]["22/tcp"][0]["HostPort"].isdigit()
    [request] = info["hostConfig"]["DeviceRequests"]
    assert len(request["DeviceIDs"]) == 1
    assert request["Capabilities"] == [["gpu"]]

    assert ok(api.call("PATCH", "/replicaSet/foo", {"gpuPatch": {"gpuCount": 2}})) == \
        {"containerName": "foo-2"}
    assert sh(api, "foo", "cat /root/kept.txt; echo $CONTAINER_VERSION") == "kept\n2\n"
    assert ok(api.call("PATCH", "/replicaSet/foo", {})) == {"containerName": "foo-3"}
    [container] = [c for c in containers(stack, namespace) if c.status == "running"]
    assert env_of(container)["CONTAINER_VERSION"] == "3"
    # The same spec (#25 item 4): a new gpudock.dev/redeploy value made version 3.
    grs: Any = stack.kubectl_json("get", "grs", "foo", "-n", namespace)
    assert [e["name"] for e in grs["spec"]["env"]] == ["A"]
    assert grs["status"]["history"][-1]["changeCause"] == \
        f"redeploy (gpudock.dev/redeploy={grs['metadata']['annotations']['gpudock.dev/redeploy']})"
    assert ok(api.call("PATCH", "/replicaSet/foo", {"gpuPatch": {"gpuCount": 2}})) == \
        {"containerName": "foo-4"}  # an unchanged gpuCount: a new version too
    assert sh(api, "foo", "cat /root/kept.txt; echo $CONTAINER_VERSION") == "kept\n4\n"

    assert ok(api.call("PATCH", "/replicaSet/foo/rollback", {"version": 1})) == \
        {"containerName": "foo-5"}
    info = ok(api.call("GET", "/replicaSet/foo"))["Info"]
    assert len(info["hostConfig"]["DeviceRequests"][0]["DeviceIDs"]) == 1
    assert "CONTAINER_VERSION=5" in info["config"]["Env"]  # the Go service's number
    assert sh(api, "foo", "cat /root/kept.txt; echo $CONTAINER_VERSION") == "kept\n5\n"

    assert ok(api.call("PATCH", "/replicaSet/foo/stop")) is None
    assert set(ok(api.call("GET", "/resources/gpus"))["gpus"].values()) == {0}
    assert ok(api.call("GET", "/resources/ports"))["ports"]["UsedPortSet"] == {}
    assert ok(api.call("PATCH", "/replicaSet/foo/restart")) == {"containerName": "foo-6"}
    assert sh(api, "foo", "cat /root/kept.txt; echo $CONTAINER_VERSION") == "kept\n6\n"
    assert 1 in ok(api.call("GET", "/resources/gpus"))["gpus"].values()
    ports = ok(api.call("GET", "/resources/ports"))["ports"]
    assert list(ports) == ["StartPort", "EndPort", "AvailableCount", "UsedPortSet"]
    assert len(ports["UsedPortSet"]) == 1
    assert ports["AvailableCount"] == ports["EndPort"] - ports["StartPort"]

    assert ok(api.call("PATCH", "/replicaSet/foo/pause")) is None
    assert ok(api.call("PATCH", "/replicaSet/foo/continue")) is None
    assert sh(api, "foo", "cat /root/kept.txt") == "kept\n"
    assert ok(api.call("GET", "/replicaSet/foo"))["Info"]["containerName"] == "foo-6"

    history = ok(api.call("GET", "/replicaSet/foo/history"))["history"]
    assert [h["version"] for h in history] == [6, 5, 4, 3, 2, 1]
    assert [h["status"]["containerName"] for h in history] == \
        ["foo-6", "foo-5", "foo-4", "foo-3", "foo-2", "foo-1"]
    assert all(TIME.match(h["createTime"]) for h in history)
    assert len(history[3]["status"]["hostConfig"]["DeviceRequests"][0]["DeviceIDs"]) == 2

    assert ok(api.call("DELETE", "/replicaSet/foo")) is None
    assert api.call("GET", "/replicaSet/foo").code == 1016
    assert not containers(stack, namespace)
    # History was purged with it: the name starts again at version 1.
    assert ok(api.call("POST", "/replicaSet", run_body("foo"))) == {"name": "foo-1"}
    assert [h["version"] for h in ok(api.call("GET", "/replicaSet/foo/history"))[
        "history"]] == [1]


def test_25_3_volume_create_resize_history_delete_keep_data(
        stack: LocalStack, namespace: str, start_agent: AgentFactory, api: ApiProcess) -> None:
    start_agent()
    assert ok(api.call("POST", "/volumes", {"name": "bar", "size": "64mb"})) == \
        {"name": "bar-1", "size": "64mb"}
    assert ok(api.call("POST", "/replicaSet", run_body(
        "user", gpuCount=0, binds=[{"src": "bar-1", "dest": "/data"}]))) == {"name": "user-1"}
    assert sh(api, "user", "echo data > /data/f; cat /data/f") == "data\n"
    info = ok(api.call("GET", "/replicaSet/user"))["Info"]
    assert info["hostConfig"]["Binds"] == ["bar-1:/data"]
    assert info["hostConfig"]["DeviceRequests"] is None

    assert ok(api.call("PATCH", "/volumes/bar/size", {"size": "128mb"})) == \
        {"name": "bar-2", "size": "128MB"}
    assert sh(api, "user", "cat /data/f") == "data\n"
    assert ok(api.call("GET", "/volumes/bar")) == {"Info": {
        "version": 2, "createTime": ok(api.call("GET", "/volumes/bar"))["Info"]["createTime"],
        "opt": {"Driver": "local", "DriverOpts": {"size": "128MB"}, "Labels": None,
                "Name": "bar-2"}}}
    # A shrink below what it holds is refused, the size put back, the data kept.
    sh(api, "user", "dd if=/dev/urandom of=/data/big bs=1M count=24 2>/dev/null; sync")
    shrink = api.call("PATCH", "/volumes/bar/size", {"size": "16MB"})
    assert (shrink.code, shrink.reason) == (1035, "ShrinkBelowUsage")
    assert ok(api.call("GET", "/volumes/bar"))["Info"]["opt"]["DriverOpts"] == \
        {"size": "128MB"}
    assert sh(api, "user", "cat /data/f; wc -c < /data/big") == "data\n25165824\n"
    history = ok(api.call("GET", "/volumes/bar/history"))["history"]
    assert [h["version"] for h in history] == [2, 1]
    assert [h["status"]["opt"]["DriverOpts"]["size"] for h in history] == ["128MB", "64MB"]
    assert all(TIME.match(h["createTime"]) for h in history)

    refused = api.call("DELETE", "/volumes/bar")  # in use: refused, nothing changed
    assert (refused.code, refused.reason) == (1025, "VolumeInUse")
    assert sh(api, "user", "cat /data/f") == "data\n"
    ok(api.call("DELETE", "/replicaSet/user"))
    assert ok(api.call("DELETE", "/volumes/bar")) is None
    assert api.call("GET", "/volumes/bar").code == 1033


def test_25_3_commit_then_create_from_the_committed_image(
        stack: LocalStack, namespace: str, start_agent: AgentFactory, api: ApiProcess) -> None:
    start_agent()
    ok(api.call("POST", "/replicaSet", run_body("src", gpuCount=0)))
    sh(api, "src", "echo committed > /root/c.txt")
    assert ok(api.call("POST", "/replicaSet/src/commit", {"newImageName": "mine:v1"})) == \
        {"imageName": "mine:v1"}
    ok(api.call("POST", "/replicaSet", {"imageName": "mine:v1", "replicaSetName": "copy",
                                         "cmd": ["sleep", "infinity"]}))
    assert sh(api, "copy", "cat /root/c.txt") == "committed\n"
    assert ok(api.call("GET", "/replicaSet/copy"))["Info"]["config"]["Image"] == \
        f"gpudock.invalid/{namespace}/mine:v1"
