"""A fleet on the local stack: two nodes, each an agent with its own dockerd (the
stack's first engine and one more), both candidates for the scheduler's Lease in the
test's namespace."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import docker.models.containers

from tests.stack.agent_process import AgentProcess
from tests.stack.docker_engine import DockerEngine
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import GRS_LABEL

HEARTBEAT_SECONDS = 2  # a killed agent's node is not Ready after 3 of them


@dataclass
class Fleet:
    stack: LocalStack
    namespace: str
    engines: dict[str, DockerEngine]   # node name -> its Docker engine
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return sorted(self.engines)

    def start_agent(self, node: str, gpus: int = 8, extra_args: Sequence[str] = (),
                    ) -> AgentProcess:
        engine = self.engines[node]
        first_port = 40000 + 5000 * self.nodes.index(node)  # one host, several nodes
        agent = AgentProcess(
            self.stack, node_name=node, gpus=gpus, name=f"agent-{node}",
            state=f"agent-{node}", extra_args=[
                "--namespace", self.namespace, "--release-namespace", self.namespace,
                "--docker-host", engine.host, "--instance-subnet", engine.instance_subnet,
                "--port-range", f"{first_port}-{first_port + 4999}",
                "--heartbeat-seconds", str(HEARTBEAT_SECONDS),
                # the migration endpoint (#23): loopback, a free port each
                "--transfer-address", "127.0.0.1", "--transfer-port", "0",
                *extra_args]).start()
        self.agents[node] = agent
        return agent

    def containers(self, node: str) -> list[docker.models.containers.Container]:
        client = self.engines[node].client()
        try:
            return list(client.containers.list(all=True, ignore_removed=True, filters={
                "label": [GRS_LABEL, f"gpudock.dev/namespace={self.namespace}"]}))
        finally:
            client.close()

    def node_of(self, name: str) -> str:
        status = self.stack.kubectl_json("get", "grs", name, "-n", self.namespace).get(
            "status") or {}
        assert isinstance(status, dict)
        return str(status.get("nodeName") or "")


@contextlib.contextmanager
def running_fleet(stack: LocalStack, namespace: str, gpus: int = 8) -> Iterator[Fleet]:
    """Nodes ``<namespace>-a`` (the stack's dockerd) and ``<namespace>-b`` (a second
    dockerd, added once per session). GpuNodes of other tests' nodes are deleted
    first (their agents are gone), so the fleet is exactly these two nodes."""
    if len(stack.engines) < 2:
        stack.add_engine("node-b")
    fleet = Fleet(stack, namespace, {f"{namespace}-a": stack.engines[0],
                                     f"{namespace}-b": stack.engines[1]})
    stack.kubectl("delete", "gpunodes", "--all", "--wait=true")
    try:
        for node in fleet.nodes:
            fleet.start_agent(node, gpus)
        wait_for(lambda: len(_items(stack.kubectl_json("get", "gpunodes"))) == 2, 30,
                 what="both GpuNodes")
        yield fleet
    finally:
        alive = [a for a in fleet.agents.values() if a.process and a.process.alive()]
        if alive:
            stack.kubectl("delete", "grs", "--all", "-n", namespace, "--timeout=120s",
                          check=False)
            stack.kubectl("delete", "svol", "--all", "-n", namespace, "--timeout=60s",
                          check=False)
        for agent in fleet.agents.values():
            agent.stop()
        for node in fleet.nodes:
            client = fleet.engines[node].client()
            try:
                for container in client.containers.list(all=True, ignore_removed=True, filters={
                        "label": [GRS_LABEL, f"gpudock.dev/namespace={fleet.namespace}"]}):
                    container.remove(force=True)  # (on an open client: no stray socket)
                client.networks.prune()  # an instance network a test made
            finally:
                client.close()
        stack.kubectl("delete", "gpunodes", *fleet.nodes, "--wait=false", check=False)


def _items(listing: dict[str, object]) -> list[object]:
    items = listing.get("items")
    return items if isinstance(items, list) else []
