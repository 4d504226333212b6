"""#26 item 12 against the real stack: every kind's status carries kstatus' Ready,
Reconciling and Stalled (with observedGeneration), `kubectl wait --for=condition=Ready`
works, and Argo CD's health script (gitops/argocd/health.lua, run by Debian's
lua5.1) calls the statuses the agent wrote Healthy, Progressing, Degraded or
Suspended."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import wait_settled
from tests.stack.agent_process import NODE_NAME
from tests.stack.localstack import IDLE_COMMAND, LocalStack, wait_for
from tests.stack.lua_health import health
from tests.stack.resources import apply, gpu_replica_set

pytestmark = pytest.mark.timeout(300)
API = "gpudock.dev/v1alpha1"


def _get(stack: LocalStack, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
    where = ["-n", namespace] if namespace else []
    return stack.kubectl_json("get", kind, name, *where)


def _health_becomes(stack: LocalStack, kind: str, namespace: str | None, name: str,
                    expected: str) -> dict[str, Any]:
    """Wait until the script says ``expected`` of the object as stored; the object."""
    seen: list[Any] = []

    def said() -> bool:
        obj = _get(stack, kind, namespace, name)
        seen[:] = [health(obj)]
        return bool(seen[0][0] == expected)
    wait_for(said, 90, what=f"{kind} {name} {expected} (last: {seen})")
    return _get(stack, kind, namespace, name)


def _kstatus(obj: dict[str, Any]) -> dict[str, str]:
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    generation = obj["metadata"].get("generation")
    for kind in ("Ready", "Reconciling", "Stalled"):
        if obj["kind"] != "GpuNode":
            assert conditions[kind]["observedGeneration"] == generation, (kind, obj)
    return {k: conditions[k]["status"] for k in ("Ready", "Reconciling", "Stalled")}


def test_26_12_every_kind_reports_kstatus_and_argocd_health(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(gpus=2, extra_args=["--resync-seconds", "5"])
    apply(stack, namespace,
          gpu_replica_set("ok", gpus=2, command=IDLE_COMMAND),
          gpu_replica_set("stopped", gpus=0, command=IDLE_COMMAND, state="Stopped"),
          gpu_replica_set("crash", gpus=0, command=["sh", "-c", "exit 3"]),
          {"apiVersion": API, "kind": "SizedVolume", "metadata": {"name": "data"},
           "spec": {"nodeName": NODE_NAME, "size": "32Mi"}})
    done = stack.kubectl("wait", "--for=condition=Ready", "grs/ok", "-n", namespace,
                         "--timeout=90s", check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    ok = _health_becomes(stack, "grs", namespace, "ok", "Healthy")
    assert _kstatus(ok) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    wait_settled(stack, namespace, "stopped", phase="Stopped")
    _health_becomes(stack, "grs", namespace, "stopped", "Suspended")
    crash = _health_becomes(stack, "grs", namespace, "crash", "Degraded")
    assert _kstatus(crash)["Stalled"] == "True"
    assert "CrashLoop" in health(crash)[1]
    apply(stack, namespace, gpu_replica_set("waits", gpus=1, command=IDLE_COMMAND))
    waits = _health_becomes(stack, "grs", namespace, "waits", "Progressing")
    wait_for(lambda: _kstatus(_get(stack, "grs", namespace, "waits"))["Reconciling"] == "True",
             60, what="waits Reconciling")
    assert "InsufficientGPUs" in health(_get(stack, "grs", namespace, "waits"))[1], waits
    volume = _health_becomes(stack, "svol", namespace, "data", "Healthy")
    assert _kstatus(volume) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}

    # The one-shot kinds: done is Healthy (and Ready for kubectl wait), failed Degraded.
    apply(stack, namespace,
          {"apiVersion": API, "kind": "ExecRequest", "metadata": {"name": "hello"},
           "spec": {"replicaSetName": "ok", "command": ["true"]}},
          {"apiVersion": API, "kind": "ExecRequest", "metadata": {"name": "nowhere"},
           "spec": {"replicaSetName": "missing", "command": ["true"]}},
          {"apiVersion": API, "kind": "ImageCommit", "metadata": {"name": "nothing"},
           "spec": {"replicaSetName": "stopped",
                    "image": f"gpudock.invalid/{namespace}/stopped:1"}})
    done = stack.kubectl("wait", "--for=condition=Ready", "execrequest/hello", "-n",
                         namespace, "--timeout=90s", check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    hello = _health_becomes(stack, "execrequest", namespace, "hello", "Healthy")
    assert _kstatus(hello) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    nowhere = _health_becomes(stack, "execrequest", namespace, "nowhere", "Degraded")
    assert _kstatus(nowhere)["Stalled"] == "True"
    nothing = _health_becomes(stack, "imagecommit", namespace, "nothing", "Degraded")
    assert "ContainerNotRunning" in health(nothing)[1]
    node = _health_becomes(stack, "gpunode", None, NODE_NAME, "Healthy")
    assert _kstatus(node) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
