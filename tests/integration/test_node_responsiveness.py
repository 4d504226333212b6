"""#13: one resource's slow step never stalls another, and Docker's init as PID 1 makes
a stop cost what the user's processes need.

The slow step here is the classic one: a container whose processes ignore SIGTERM, so
Docker's stop waits the agent's whole --stop-timeout (30 s here, the default) before
it kills them."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import wait_settled
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import (
    apply,
    condition,
    containers,
    event_reasons,
    gpu_replica_set,
)

STOP_TIMEOUT = 30
# sh ignores SIGTERM, and so does the sleep it starts (an ignored signal is inherited).
IGNORES_SIGTERM = ["sh", "-c", "trap '' TERM; sleep 3600 & wait"]


def _container(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(stack, namespace)
                if c.labels["gpudock.dev/name"] == name]
    return found.attrs


def _running(stack: LocalStack, namespace: str, name: str) -> bool:
    return bool(_container(stack, namespace, name)["State"]["Running"])


def _set_state(stack: LocalStack, namespace: str, name: str, state: str) -> None:
    stack.kubectl("patch", "grs", name, "-n", namespace, "--type=merge", "-p",
                  json.dumps({"spec": {"state": state}}))


def test_a_30s_stop_does_not_stall_another_create_or_delete(
        stack: LocalStack, namespace: str, start_agent: AgentFactory) -> None:
    start_agent(extra_args=["--stop-timeout", str(STOP_TIMEOUT)])
    apply(stack, namespace, gpu_replica_set("stubborn", command=IGNORES_SIGTERM),
          gpu_replica_set("victim", command=["sleep", "3600"]))
    for name in ("stubborn", "victim"):
        wait_settled(stack, namespace, name)

    began = time.monotonic()
    _set_state(stack, namespace, "stubborn", "Paused")  # a stop: 30 s of SIGTERM ignored
    wait_for(lambda: _running(stack, namespace, "stubborn") and condition(
        stack, namespace, "stubborn", "Progressing").get("reason") == "Reconciling",
        20, 0.2, "the stop of stubborn under way")
    apply(stack, namespace, gpu_replica_set("newcomer", command=["sleep", "3600"]))
    stack.kubectl("delete", "grs", "victim", "-n", namespace, "--wait=false")

    wait_settled(stack, namespace, "newcomer", timeout=STOP_TIMEOUT)
    wait_for(lambda: stack.kubectl("get", "grs", "victim", "-n", namespace,
                                   check=False).returncode != 0,
             STOP_TIMEOUT, 0.2, "victim deleted")
    ready_after = time.monotonic() - began
    # Both happened while stubborn's stop was still waiting out its timeout.
    assert _running(stack, namespace, "stubborn"), (
        f"stubborn's stop ended before the others were done ({ready_after:.1f}s)")
    assert not [c for c in containers(stack, namespace)
                if c.labels["gpudock.dev/name"] == "victim"]
    print(f"newcomer Ready and victim deleted {ready_after:.1f}s into a "
          f"{STOP_TIMEOUT}s stop")

    wait_settled(stack, namespace, "stubborn", phase="Paused", timeout=STOP_TIMEOUT + 30)
    stopped_after = time.monotonic() - began
    assert _container(stack, namespace, "stubborn")["State"]["ExitCode"] == 137
    assert stopped_after > STOP_TIMEOUT - 5, "the premise: that stop waited its timeout"


def test_init_as_pid_1_passes_sigterm_on(
        stack: LocalStack, namespace: str, start_agent: AgentFactory) -> None:
    """`sleep infinity` under Docker's init (the default) dies of the SIGTERM (exit
    143); as PID 1 itself (init: false) it ignores it and is killed at the timeout."""
    start_agent(extra_args=["--stop-timeout", str(STOP_TIMEOUT)])
    apply(stack, namespace, gpu_replica_set("with-init", command=["sleep", "3600"]),
          gpu_replica_set("as-pid-1", command=["sleep", "3600"], init=False))
    for name in ("with-init", "as-pid-1"):
        wait_settled(stack, namespace, name)
    assert _container(stack, namespace, "with-init")["HostConfig"]["Init"] is True
    assert _container(stack, namespace, "as-pid-1")["HostConfig"]["Init"] is False

    for name in ("with-init", "as-pid-1"):
        _set_state(stack, namespace, name, "Paused")
    wait_settled(stack, namespace, "with-init", phase="Paused", timeout=STOP_TIMEOUT)
    assert _running(stack, namespace, "as-pid-1"), "still waiting out its stop timeout"
    wait_settled(stack, namespace, "as-pid-1", phase="Paused", timeout=STOP_TIMEOUT + 30)
    assert _container(stack, namespace, "with-init")["State"]["ExitCode"] == 143
    assert _container(stack, namespace, "as-pid-1")["State"]["ExitCode"] == 137


def test_drift_is_seen_from_dockers_events_not_the_resync(
        stack: LocalStack, namespace: str, start_agent: AgentFactory) -> None:
    """With a resync of 10 minutes, a container stopped behind the agent's back is
    started again within seconds: its die event wakes the resource."""
    start_agent(extra_args=["--resync-seconds", "600"])
    apply(stack, namespace, gpu_replica_set("watched", command=["sleep", "3600"]))
    wait_settled(stack, namespace, "watched")
    container = _container(stack, namespace, "watched")
    client = stack.docker_client()
    try:
        client.api.stop(container["Id"], timeout=0)
    finally:
        client.close()
    wait_for(lambda: _running(stack, namespace, "watched"), 30, 0.5,
             "the stopped container started again")
    assert _container(stack, namespace, "watched")["Id"] == container["Id"]
    assert "DriftDetected" in event_reasons(stack, namespace, "watched")
