"""Fixtures for the behaviour suites: the agent as a process, with a clean node after."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from tests.stack.agent_process import NODE_NAME, AgentProcess
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import containers

AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(stack: LocalStack, namespace: str) -> Iterator[AgentFactory]:
    """Start `gpudock agent` (simulated GPUs); afterwards delete the test's resources
    through the agent, and clean the node so no test leaks into the next."""
    started: list[AgentProcess] = []

    def start(*, gpus: int = 8, extra_args: Sequence[str] = (),
              node_name: str = NODE_NAME,
              env: Mapping[str, str] | None = None) -> AgentProcess:
        # Watching only this test's namespace keeps tests apart; the GPUs and ports
        # they hold are still derived from every container on the shared dockerd.
        agent = AgentProcess(stack, name=f"agent-{namespace}-{len(started)}", gpus=gpus,
                             state=f"agent-{namespace}-{node_name}", node_name=node_name,
                             extra_args=["--namespace", namespace,
                                         "--release-namespace", namespace, *extra_args],
                             env=env).start()
        started.append(agent)
        return agent

    yield start
    if started and "--crash-at" in started[-1].argv:
        started[-1].stop()
        start()  # one that deletes without dying halfway
    if started and started[-1].process and started[-1].process.alive():
        stack.kubectl("delete", "grs", "--all", "-n", namespace, "--timeout=90s")
        # Volumes after their users: their mounts and loop devices go now, not at the
        # end of the session.
        stack.kubectl("delete", "svol", "--all", "-n", namespace, "--timeout=60s")
    for agent in started:
        agent.stop()
    leftovers = containers(stack, namespace)
    for container in leftovers:  # never leak into the next test, even when this one failed
        container.remove(force=True)
    wait_for(lambda: not containers(stack, namespace), 30, what="no containers")


@pytest.fixture
def other_namespace(stack: LocalStack, namespace: str,
                    start_agent: AgentFactory) -> Iterator[str]:
    """A second tenant's namespace; its resources are deleted while the agent still
    runs (this fixture ends before start_agent's, which it depends on)."""
    name = f"{namespace}-b"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "grs", "--all", "-n", name, "--timeout=90s", check=False)
    for container in containers(stack, name):
        container.remove(force=True)
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)
