"""``make smoke-nvml``: the agent against a real NVIDIA driver (issue #24 item 7).

On a host with an NVIDIA GPU, its driver and the NVIDIA container toolkit: the local
stack (etcd, kube-apiserver, its own dockerd with the toolkit's
``nvidia-container-runtime`` as the ``nvidia`` runtime), the agent with
``--gpu-backend nvml``, and checks, each printed as PASS or FAIL:

1. the GpuNode lists exactly the GPUs ``nvidia-smi`` does (UUIDs, models), Healthy;
2. a 1-GPU instance: ``nvidia-smi -L`` inside shows exactly its UUID;
3. a 0-GPU instance sees no GPU;
4. an update (a new env var: a new revision) keeps its files and its GPU;
5. the NVML event loop runs (the agent's log has no "cannot be watched" line and the
   health thread is up), and usage is reported (utilization not null).

Where there is no GPU (no ``nvidia-smi``, or it lists none), no toolkit, or the image
(GPUDOCK_SMOKE_IMAGE, default ubuntu:22.04, which must have a glibc for the toolkit's
``nvidia-smi``; never pulled) is not in the host's Docker, it prints SKIP and why, and
exits 0. It exits 1 when a check fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

NAMESPACE = "smoke"
IMAGE = os.environ.get("GPUDOCK_SMOKE_IMAGE", "ubuntu:22.04")


def _skip_reason() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no nvidia-smi on PATH: this host has no NVIDIA driver"
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    if listed.returncode != 0 or "UUID" not in listed.stdout:
        return f"nvidia-smi -L lists no GPU ({listed.stdout.strip() or listed.stderr.strip()})"
    if shutil.which("nvidia-container-runtime") is None:
        return "no nvidia-container-runtime on PATH: install the NVIDIA container toolkit"
    found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                           check=False)
    if found.returncode != 0:
        return (f"image {IMAGE} is not in the host's Docker (docker pull {IMAGE}, or set "
                "GPUDOCK_SMOKE_IMAGE to a glibc image that is)")
    return None


def _host_gpus() -> list[tuple[str, str]]:
    """(UUID, name) of each GPU, as nvidia-smi says."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=uuid,name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return [(u.strip(), n.strip()) for u, n in (line.split(",", 1)
                                                for line in out.splitlines() if line)]


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, what: str, ok: bool, detail: object = "") -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {what}{f': {detail}' if detail else ''}",
              flush=True)
        self.failed += 0 if ok else 1


def _wait(predicate: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    return predicate()


def main() -> int:
    reason = _skip_reason()
    if reason is not None:
        print(f"SKIP  smoke-nvml: {reason}. This smoke test needs a host with an NVIDIA GPU, "
              "its driver and the NVIDIA container toolkit; CI never needs one.")
        return 0
    # Imported here: a host that skips needs none of the stack's prerequisites.
    from tests.stack.agent_process import NODE_NAME, AgentProcess
    from tests.stack.localstack import LocalStack
    from tests.stack.resources import apply, containers, gpu_replica_set, status

    report = Report()
    host = _host_gpus()
    with LocalStack() as stack:
        stack.restart_dockerd(nvidia_runtime=shutil.which("nvidia-container-runtime"))
        saved = subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", stack.docker_host, "load"], stdin=saved.stdout,
                       check=True, capture_output=True)
        saved.wait()
        stack.kubectl("create", "namespace", NAMESPACE)
        agent = AgentProcess(stack, extra_args=["--gpu-backend", "nvml", "--namespace",
                                                NAMESPACE, "--heartbeat-seconds", "5"])
        with agent:  # started here, stopped at the end
            def gpu_node() -> dict[str, Any]:
                found = stack.kubectl_json("get", "gpunode", NODE_NAME).get("status")
                return dict(found) if isinstance(found, dict) else {}

            gpus = _wait(lambda: gpu_node().get("gpus"), 60) or []
            report.check("GpuNode lists nvidia-smi's GPUs",
                         [(g["uuid"], g["model"]) for g in gpus] == host,
                         f"{[(g['uuid'], g['model']) for g in gpus]} vs {host}")
            report.check("every GPU Healthy", all(g["health"] == "Healthy" for g in gpus),
                         [g["health"] for g in gpus])
            sleep = ["sleep", "infinity"]
            apply(stack, NAMESPACE, gpu_replica_set("one", gpus=1, image=IMAGE,
                                                    command=sleep),
                  gpu_replica_set("none", gpus=0, image=IMAGE, command=sleep))

            def running(name: str, revision: int) -> dict[str, Any] | None:
                now = status(stack, NAMESPACE, name)
                return now if now.get("phase") == "Running" and \
                    now.get("revision") == revision else None

            one, none = _wait(lambda: running("one", 1), 120), _wait(
                lambda: running("none", 1), 120)
            report.check("the instances run", bool(one and none), (one, none))

            def container(name: str) -> Any:
                return next(c for c in containers(stack, NAMESPACE)
                            if c.labels["gpudock.dev/name"] == name)

            def run(name: str, script: str) -> tuple[int, str]:
                code, out = container(name).exec_run(["sh", "-c", script])
                return int(code), out.decode(errors="replace")

            held = (one or {}).get("gpus") or []
            code, listed = run("one", "nvidia-smi -L")
            report.check("1-GPU instance: nvidia-smi -L shows exactly its UUID",
                         code == 0 and len(held) == 1 and listed.count("UUID") == 1
                         and held[0] in listed, listed.strip())
            code, listed = run("none", "nvidia-smi -L 2>&1; ls /dev/nvidia[0-9]* 2>&1")
            report.check("0-GPU instance sees no GPU", "UUID" not in listed, listed.strip())
            run("one", "echo kept > /root/smoke-marker")
            stack.kubectl("patch", "grs", "one", "-n", NAMESPACE, "--type=merge", "-p",
                          json.dumps({"spec": {"env": [{"name": "SMOKE", "value": "2"}]}}))
            two = _wait(lambda: running("one", 2), 180)
            report.check("an update is a new revision on the same GPU",
                         bool(two) and (two or {}).get("gpus") == held, two)
            code, marker = run("one", "cat /root/smoke-marker")
            report.check("an update keeps the files", marker.strip() == "kept", marker)
            log = agent.log()
            report.check("the NVML event loop runs", "cannot be watched" not in log and
                         "GPU fault source failed" not in log)
            usage = _wait(lambda: all(g.get("utilization") is not None
                                      for g in gpu_node().get("gpus") or [{}]), 30)
            report.check("usage is reported (utilization)", bool(usage),
                         [g.get("utilization") for g in gpu_node().get("gpus") or []])
            stack.kubectl("delete", "grs", "--all", "-n", NAMESPACE, "--timeout=120s")
    print(f"smoke-nvml: {report.failed} check(s) failed" if report.failed
          else "smoke-nvml: every check passed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
