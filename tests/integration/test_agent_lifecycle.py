"""`gpudock agent` starts against the real stack with the chart's RBAC, handles the
resources of its own node only, and stops cleanly on SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.conftest import AgentFactory
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import containers, status

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "01-gpu-container.yaml"


def test_agent_connects_handles_its_node_and_stops_on_sigterm(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent(gpus=2)
    try:
        assert "node gpu-node-1: 2 GPUs (simulated backend)" in agent.log()
        stack.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        other = EXAMPLE.read_text().replace("gpu-node-1", "gpu-node-2").replace(
            "name: knock", "name: elsewhere")
        stack.kubectl("apply", "-n", namespace, "-f", "-", input=other)
        wait_for(lambda: status(stack, namespace, "knock").get("phase") is not None, 30,
                 what="the agent to write status")
        stack.kubectl("delete", "grs", "knock", "-n", namespace, "--timeout=60s")
    finally:
        started = time.monotonic()
        code = agent.stop()
    assert code == 0, agent.log()
    assert time.monotonic() - started < 15
    assert "gpudock agent for node gpu-node-1 stopped" in agent.log()
    # Another node's resource is not handled here: no container, no finalizer of this
    # node. The only thing an agent may write on it is that no agent serves its node
    # (NodeNotFound, docs/gpu-replica-set.md), once it has looked for that node.
    elsewhere = status(stack, namespace, "elsewhere")
    assert elsewhere.get("reason") in (None, "NodeNotFound"), elsewhere
    assert elsewhere.get("phase") in (None, "Pending"), elsewhere
    assert not [c for c in containers(stack, namespace)
                if c.labels.get("gpudock.dev/name") == "elsewhere"]
    meta = stack.kubectl_json("get", "grs", "elsewhere", "-n", namespace)["metadata"]
    assert isinstance(meta, dict)
    finalizers = meta.get("finalizers") or []
    assert not [f for f in finalizers if "gpu-node-1" in f], finalizers
