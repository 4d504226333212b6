"""#24 GPU health, on the real stack: faults (a --simulated-faults file, or XID events
of the fake libnvidia-ml) take a GPU out of service; the GpuNode says so, the
allocator never hands it out, its holder is Degraded GPUUnhealthy and keeps running;
marks survive a restart; readmit and the re-admission clock bring it back;
gpuFailurePolicy Replace moves the instance to a healthy GPU with its disk."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.stack.agent_process import NODE_NAME
from tests.stack.fake_nvml import build_fake_nvml
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.processes import free_port
from tests.stack.resources import condition, event_reasons, status

SLEEP = ["sleep", "infinity"]
DETECTION_SECONDS = 5  # the bound: a fault is on the GpuNode within 5 s


def _gpu_node(stack: LocalStack) -> dict[str, Any]:
    return stack.kubectl_json("get", "gpunode", NODE_NAME)


def _gpu(stack: LocalStack, uuid: str) -> dict[str, Any]:
    """GPU ``uuid`` on the GpuNode (waiting for the agent to list it there)."""
    def find() -> dict[str, Any] | None:
        gpus = (_gpu_node(stack).get("status") or {}).get("gpus") or []
        return next((g for g in gpus if g["uuid"] == uuid), None)

    wait_for(find, 30, what=f"GPU {uuid} on the GpuNode")
    found = find()
    assert found is not None
    return found


def _health(stack: LocalStack, uuid: str) -> str:
    return str(_gpu(stack, uuid).get("health"))


def _faults(stack: LocalStack, namespace: str) -> Path:
    path = stack.base_dir / f"faults-{namespace}.jsonl"
    path.write_text("")
    return path


def _fault(path: Path, **fault: Any) -> None:
    with path.open("a") as file:
        file.write(json.dumps(fault) + "\n")


def _node_events(stack: LocalStack, namespace: str) -> list[dict[str, Any]]:
    items = stack.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                               f"involvedObject.name={NODE_NAME}")["items"]
    assert isinstance(items, list)
    return items


def _held_gpu(stack: LocalStack, namespace: str, name: str) -> str:
    gpus = status(stack, namespace, name)["gpus"]
    assert len(gpus) == 1, gpus
    return str(gpus[0])


def _wait_unhealthy(stack: LocalStack, uuid: str, reason: str) -> None:
    wait_for(lambda: _health(stack, uuid) == "Unhealthy", DETECTION_SECONDS,
             what=f"GPU {uuid} Unhealthy on the GpuNode")
    gpu = _gpu(stack, uuid)
    assert gpu["reason"] == reason, gpu
    assert gpu["since"], gpu


def _wait_degraded(stack: LocalStack, namespace: str, name: str, uuid: str) -> None:
    wait_for(lambda: condition(stack, namespace, name, "Degraded").get("reason")
             == "GPUUnhealthy", 30, what=f"{name} Degraded GPUUnhealthy")
    degraded = condition(stack, namespace, name, "Degraded")
    assert degraded["status"] == "True", degraded
    assert uuid in degraded["message"], degraded


def test_24_1_xid79_takes_a_held_gpu_out_until_readmitted_even_across_a_restart(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    faults = _faults(stack, namespace)
    args = ["--simulated-faults", str(faults), "--heartbeat-seconds", "60"]
    agent = start_agent(gpus=2, extra_args=args)
    apply_spec(stack, namespace, "held", "first", gpus=1, command=SLEEP)
    wait_settled(stack, namespace, "held", revision=1)
    sick = _held_gpu(stack, namespace, "held")
    container_id = only_container(stack, namespace, "held").id

    _fault(faults, gpu=sick, xid=79)
    _wait_unhealthy(stack, sick, "XID79")
    _wait_degraded(stack, namespace, "held", sick)
    # It keeps running: the same container, Ready, phase Running.
    now = status(stack, namespace, "held")
    assert now["phase"] == "Running", now
    assert now["containerID"] == container_id, now
    assert condition(stack, namespace, "held", "Ready")["status"] == "True"
    assert "GPUUnhealthy" in [e["reason"] for e in _node_events(stack, namespace)]

    # A new request gets the other GPU; once that is taken, none (the sick one is free
    # when its holder goes, and still never handed out).
    apply_spec(stack, namespace, "other", "first", gpus=1, command=SLEEP)
    wait_settled(stack, namespace, "other", revision=1)
    assert _held_gpu(stack, namespace, "other") != sick
    stack.kubectl("delete", "grs", "held", "-n", namespace, "--timeout=60s")
    apply_spec(stack, namespace, "waiting", "first", gpus=1, command=SLEEP)
    wait_for(lambda: condition(stack, namespace, "waiting", "Progressing").get("reason")
             == "InsufficientGPUs", 30, what="waiting for a GPU")
    assert "1 Unhealthy" in condition(stack, namespace, "waiting", "Progressing")["message"]

    # A restarted agent keeps the mark.
    agent.stop()
    beat = _gpu_node(stack)["status"]["heartbeatTime"]
    start_agent(gpus=2, extra_args=args)
    wait_for(lambda: _gpu_node(stack)["status"]["heartbeatTime"] != beat, 30,
             what="the restarted agent's heartbeat")
    assert _health(stack, sick) == "Unhealthy"
    assert status(stack, namespace, "waiting").get("gpus") in (None, [])

    # kubectl gpudock readmit brings it back; the waiting instance gets it.
    index = str(_gpu(stack, sick)["index"])
    done = stack.kubectl("gpudock", "-n", namespace, "readmit", NODE_NAME, index,
                         check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _health(stack, sick) == "Healthy", 30, what="GPU readmitted")
    assert _gpu(stack, sick).get("reason") is None
    assert "gpudock.dev/readmit" not in (_gpu_node(stack)["metadata"].get("annotations")
                                         or {})
    wait_settled(stack, namespace, "waiting", revision=1)
    assert _held_gpu(stack, namespace, "waiting") == sick
    assert "GPUReadmitted" in [e["reason"] for e in _node_events(stack, namespace)]


def test_24_1_an_ignored_xid_changes_nothing(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    faults = _faults(stack, namespace)
    start_agent(gpus=2, extra_args=["--simulated-faults", str(faults)])
    apply_spec(stack, namespace, "held", "first", gpus=1, command=SLEEP)
    wait_settled(stack, namespace, "held", revision=1)
    held = _held_gpu(stack, namespace, "held")
    free = next(g["uuid"] for g in _gpu_node(stack)["status"]["gpus"] if g["uuid"] != held)

    _fault(faults, gpu=held, xid=13)
    _fault(faults, gpu=free, xid=79)  # read after the 13: when it shows, the 13 was read
    _wait_unhealthy(stack, free, "XID79")
    assert _health(stack, held) == "Healthy"
    assert condition(stack, namespace, "held", "Degraded")["status"] == "False"
    assert "GPUFaultIgnored" in [e["reason"] for e in _node_events(stack, namespace)]


def test_24_1_a_transient_xid_is_readmitted_after_a_clean_period(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    faults = _faults(stack, namespace)
    start_agent(gpus=2, extra_args=["--simulated-faults", str(faults),
                                    "--gpu-readmit-seconds", "3"])
    apply_spec(stack, namespace, "held", "first", gpus=1, command=SLEEP)
    wait_settled(stack, namespace, "held", revision=1)
    held = _held_gpu(stack, namespace, "held")

    _fault(faults, gpu=held, xid=94)  # a contained ECC error: transient
    _wait_unhealthy(stack, held, "XID94")
    wait_for(lambda: _health(stack, held) == "Healthy", 30, what="GPU readmitted")
    assert "GPUReadmitted" in [e["reason"] for e in _node_events(stack, namespace)]
    wait_for(lambda: condition(stack, namespace, "held", "Degraded").get("status")
             == "False", 30, what="holder no longer Degraded")
    assert status(stack, namespace, "held")["revision"] == 1


def test_24_2_replace_moves_the_instance_to_a_healthy_gpu_keeping_its_files(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    faults = _faults(stack, namespace)
    start_agent(gpus=2, extra_args=["--simulated-faults", str(faults)])
    apply_spec(stack, namespace, "moving", "first", gpus=1, command=SLEEP,
               gpuFailurePolicy="Replace")
    wait_settled(stack, namespace, "moving", revision=1)
    touch_the_disk(stack, namespace, "v1", name="moving")
    sick = _held_gpu(stack, namespace, "moving")

    _fault(faults, gpu=sick, xid=79)
    _wait_unhealthy(stack, sick, "XID79")
    moved = wait_settled(stack, namespace, "moving", revision=2)
    assert len(moved["gpus"]) == 1, moved
    assert moved["gpus"] != [sick], moved
    assert condition(stack, namespace, "moving", "Degraded")["status"] == "False"
    assert_disk_kept(stack, namespace, "v1", name="moving")
    assert "GPU" in moved["history"][-1]["changeCause"], moved["history"]


def test_24_3_an_xid_event_of_the_fake_nvml_library_takes_the_gpu_out(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    library = build_fake_nvml(stack.base_dir)
    events = stack.base_dir / f"nvml-events-{namespace}"
    events.write_text("")
    start_agent(extra_args=["--gpu-backend", "nvml", "--nvml-library", str(library)],
                env={"GPUDOCK_FAKE_NVML_GPUS": "2", "GPUDOCK_FAKE_NVML_EVENTS": str(events)})
    apply_spec(stack, namespace, "held", "first", gpus=1, command=SLEEP)
    wait_settled(stack, namespace, "held", revision=1)
    held = _held_gpu(stack, namespace, "held")
    index = _gpu(stack, held)["index"]

    with events.open("a") as file:
        file.write(f"{index} 79\n")
    _wait_unhealthy(stack, held, "XID79")
    _wait_degraded(stack, namespace, "held", held)
    assert status(stack, namespace, "held")["phase"] == "Running"


def test_24_4_a_container_that_lost_its_gpus_is_recreated_once_keeping_its_files(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    # The test's probe fails once /root/gpu-gone exists: on the disk, so the new
    # revision's probe fails too, and it is not recreated again (once per 10 min).
    start_agent(gpus=2, extra_args=["--gpu-access-probe-seconds", "1",
                                    "--gpu-access-probe-command",
                                    "sh -c 'test ! -e /root/gpu-gone'"])
    apply_spec(stack, namespace, "probed", "first", gpus=1, command=SLEEP)
    apply_spec(stack, namespace, "cpu", "first", gpus=0, command=SLEEP)
    wait_settled(stack, namespace, "probed", revision=1)
    wait_settled(stack, namespace, "cpu", revision=1)
    touch_the_disk(stack, namespace, "v1", name="probed")
    sh(only_container(stack, namespace, "cpu"), "mkdir -p /root && touch /root/gpu-gone")
    sh(only_container(stack, namespace, "probed"), "touch /root/gpu-gone")

    moved = wait_settled(stack, namespace, "probed", revision=2)
    assert_disk_kept(stack, namespace, "v1", name="probed")
    assert moved["history"][-1]["changeCause"].startswith("GPUAccessLost"), moved["history"]

    def messages() -> list[str]:
        items = stack.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                                   "involvedObject.name=probed,reason=GPUAccessLost")["items"]
        assert isinstance(items, list)
        return [str(item["message"]) for item in items]

    wait_for(lambda: any("not recreated again" in m for m in messages()), 30,
             what="the second failure only reported")
    assert status(stack, namespace, "probed")["revision"] == 2
    assert status(stack, namespace, "cpu")["revision"] == 1  # 0 GPUs: never probed


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[
                tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _gpu_seconds(port: int, namespace: str, name: str) -> float:
    return _scrape(port).get("gpudock_instance_gpu_seconds_total", {}).get(
        (("name", name), ("namespace", namespace)), 0.0)


def test_24_5_usage_per_gpu_and_gpu_seconds_in_the_gpu_node_and_metrics(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    usage = stack.base_dir / f"usage-{namespace}.json"
    usage.write_text("{}")
    port = free_port()
    faults = _faults(stack, namespace)
    start_agent(gpus=2, extra_args=["--simulated-usage", str(usage), "--metrics-port",
                                    str(port), "--heartbeat-seconds", "1", "--instance-metrics",
                                    "--simulated-faults", str(faults)])
    apply_spec(stack, namespace, "busy", "first", gpus=1, command=SLEEP)
    wait_settled(stack, namespace, "busy", revision=1)
    held = _held_gpu(stack, namespace, "busy")
    index = str(_gpu(stack, held)["index"])
    usage.write_text(json.dumps({index: {"utilization": 37, "memoryUsedMiB": 2048,
                                         "processes": 1}}))

    wait_for(lambda: _gpu(stack, held).get("utilization") == 37, 30,
             what="utilization on the GpuNode")
    assert _gpu(stack, held)["memoryUsedMiB"] == 2048
    labels = (("gpu", index), ("node", NODE_NAME), ("uuid", held))
    named = (("gpu", index), ("name", "busy"), ("namespace", namespace), ("uuid", held))
    wait_for(lambda: _scrape(port).get("gpudock_instance_gpu_utilization_percent", {}).get(
        named) == 37, 30, what="the utilization metric with its holder")
    samples = _scrape(port)
    assert samples["gpudock_gpu_utilization_percent"][labels] == 37
    assert samples["gpudock_gpu_memory_used_bytes"][labels] == 2048 * 2**20
    assert samples["gpudock_instance_gpu_memory_used_bytes"][named] == 2048 * 2**20
    first = _gpu_seconds(port, namespace, "busy")
    wait_for(lambda: _gpu_seconds(port, namespace, "busy") > max(first, 0.0), 30,
             what="GPU-seconds counting")
    health = _scrape(port)["gpudock_gpu_health"]
    assert health[(("gpu", index), ("node", NODE_NAME), ("state", "Healthy"),
                   ("uuid", held))] == 1
    _fault(faults, gpu=held, xid=79)
    wait_for(lambda: _scrape(port)["gpudock_gpu_health"].get(
        (("gpu", index), ("node", NODE_NAME), ("state", "Unhealthy"), ("uuid", held)))
        == 1, 30, what="the health metric Unhealthy")


def test_24_5_an_idle_instance_is_stopped_after_idle_stop_seconds_keeping_its_disk(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    usage = stack.base_dir / f"usage-{namespace}.json"
    usage.write_text(json.dumps({str(i): {"utilization": 50, "processes": 1}
                                 for i in range(2)}))
    start_agent(gpus=2, extra_args=["--simulated-usage", str(usage),
                                    "--heartbeat-seconds", "1"])
    apply_spec(stack, namespace, "idler", "first", gpus=1, command=SLEEP,
               idleStopSeconds=2)
    apply_spec(stack, namespace, "cpu", "first", gpus=0, command=SLEEP,
               idleStopSeconds=1)
    wait_settled(stack, namespace, "idler", revision=1)
    wait_settled(stack, namespace, "cpu", revision=1)
    touch_the_disk(stack, namespace, "v1", name="idler")
    assert status(stack, namespace, "idler")["phase"] == "Running"  # busy: never idle

    usage.write_text("{}")  # every GPU idle now
    wait_settled(stack, namespace, "idler", phase="Stopped", timeout=60)
    assert "IdleStopped" in event_reasons(stack, namespace, "idler")
    assert status(stack, namespace, "idler")["gpus"] == []
    assert status(stack, namespace, "cpu")["phase"] == "Running"  # 0 GPUs: never
    stack.kubectl("patch", "grs", "idler", "-n", namespace, "--type=merge", "-p",
                  json.dumps({"spec": {"state": "Running", "idleStopSeconds": 0}}))
    wait_settled(stack, namespace, "idler", timeout=60)
    assert_disk_kept(stack, namespace, "v1", name="idler")
