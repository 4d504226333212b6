"""The pure parts of the day-2 kinds: GpuNode status, node verdicts, a committed
image's config, ExecRequest expiry and specs."""

from __future__ import annotations

import pytest

from gpudock.agent.exec_runner import expires_in
from gpudock.agent.image_committer import clean_config
from gpudock.api.container_fields import Protocol
from gpudock.api.exec_request import ExecRequestSpec
from gpudock.api.image_commit import ImageCommitSpec
from gpudock.api.reasons import Reason
from gpudock.core.gpu_node import gpu_node_status, node_verdict, unreachable_status
from gpudock.core.gpus import GpuDevice
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.errors import SpecError


def test_gpu_node_status_comes_from_the_containers() -> None:
    devices = [GpuDevice(i, f"GPU-{i}", "A100", 80 * 2**30) for i in range(4)]
    held = ObservedContainer("c1", "ns_a-2", "running", owner=ResourceKey("ns", "a"),
                             revision=2, gpus=("GPU-1", "GPU-3"),
                             port_bindings={(22, Protocol.TCP): 40001})
    other = ObservedContainer("c2", "x", "running", port_bindings={(80, Protocol.TCP): 40002})
    status = gpu_node_status(devices, [held, other], (40000, 40009), "0.1.0", "now")
    assert (status["gpusTotal"], status["gpusAllocated"], status["gpusFree"]) == (4, 2, 2)
    assert status["gpus"][1]["holder"] == {"namespace": "ns", "name": "a", "revision": 2}
    assert status["gpus"][0]["holder"] is None
    assert status["gpus"][0]["memoryMiB"] == 81920
    assert (status["ports"]["used"], status["ports"]["free"]) == (2, 8)
    assert status["ports"]["bindings"] == [
        {"hostPort": 40001, "protocol": "TCP", "holder": {"namespace": "ns", "name": "a"}}]
    # An idle Unhealthy GPU is not free (a new instance never gets it).
    devices[0] = GpuDevice(0, "GPU-0", "A100", 80 * 2**30, health="Unhealthy")
    status = gpu_node_status(devices, [held, other], (40000, 40009), "0.1.0", "now")
    assert (status["gpusTotal"], status["gpusAllocated"], status["gpusFree"]) == (4, 2, 1)


def test_node_verdicts() -> None:
    now = "2026-11-22T10:01:00Z"
    assert node_verdict("n", None, now, 10)[0] == "NodeNotFound"  # type: ignore[index]
    fresh = {"status": {"heartbeatTime": "2026-11-22T10:00:45Z"}}
    assert node_verdict("n", fresh, now, 10) is None
    stale = {"status": {"heartbeatTime": "2026-11-22T10:00:00Z"}}
    assert node_verdict("n", stale, now, 10)[0] == "NodeNotReady"  # type: ignore[index]
    written = unreachable_status({}, Reason.NODE_NOT_READY, "gone", now)
    assert written is not None
    assert written["conditions"][0]["status"] == "Unknown"
    assert unreachable_status(written, Reason.NODE_NOT_READY, "gone", now) is None  # said already


def test_a_committed_config_loses_the_instance() -> None:
    config = {"Env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=GPU-1,GPU-2", "UNSET"],
              "Labels": {"gpudock.dev/uid": "u", "gpudock.dev/gpus": "GPU-1", "team": "a"},
              "Cmd": ["sleep", "1"]}
    assert clean_config(config, ["NVIDIA_VISIBLE_DEVICES=all"]) == {
        "Env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"], "Labels": {"team": "a"},
        "Cmd": ["sleep", "1"]}
    bare = clean_config(config, [])
    assert bare["Env"] == ["PATH=/bin"]


def test_exec_request_expiry_and_specs() -> None:
    body = {"spec": {"ttlSecondsAfterFinished": 5},
            "status": {"phase": "Completed", "completionTime": "2026-11-22T10:00:00Z"}}
    assert expires_in(body, "2026-11-22T10:00:02Z") == 3
    assert expires_in({"status": {"phase": "Running"}}, "2026-11-22T10:00:02Z") is None
    spec = ExecRequestSpec.parse({"replicaSetName": "a", "command": ["true"]})
    assert (spec.timeout_seconds, spec.ttl_seconds_after_finished) == (60, 3600)
    with pytest.raises(SpecError):
        ExecRequestSpec.parse({"replicaSetName": "a", "command": []})
    with pytest.raises(SpecError):
        ImageCommitSpec.parse({"replicaSetName": "a", "image": "NoTag"})
    assert ImageCommitSpec.parse({"replicaSetName": "a",
                                  "image": "registry:5000/team/x:v1"}).pause is True
