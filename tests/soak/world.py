"""What the soak acts on and looks at: the stack, a fleet of K nodes (each an agent
with simulated GPUs, a dockerd, a state filesystem, a revision store and a volume
backend: tests/soak/nodes.py), cheap reads of the API server, and each node's
running gpudock containers."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker.models.containers

from tests.integration.fleet import Fleet
from tests.soak.nodes import NodeSetup, StoreEtcd
from tests.stack.localstack import ADMIN_TOKEN, LocalStack, wait_for
from tests.stack.resources import GRS_LABEL

GROUP = "/apis/gpudock.dev/v1alpha1"
GPUS_PER_NODE = 8
RESYNC_SECONDS = 10  # the agents' --resync-seconds in the soak
# Stalled reasons the soak's own faults cause and the agents clear by themselves once
# the fault is gone (a heartbeat written again, room in the state directory again):
# a resource that shows one after a fault has not converged yet.
CLEARED_BY_AGENTS = ("NodeNotReady", "DiskFull")

Body = dict[str, Any]


@dataclass(frozen=True)
class Running:
    """A running gpudock container as the sampler sees it."""
    node: str
    name: str          # its GpuReplicaSet's name
    container: str     # Docker's name
    gpus: frozenset[str]
    host_ports: frozenset[str]   # "ip:port/proto"


class World:
    def __init__(self, stack: LocalStack, fleet: Fleet, setups: dict[str, NodeSetup],
                 store_etcd: StoreEtcd) -> None:
        self.stack = stack
        self.fleet = fleet
        self.setups = setups
        self.store_etcd = store_etcd
        self.namespace = fleet.namespace
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        # Held while a fault replaces a component, so no reader trips over a half-made
        # one (a dockerd's socket, an agent's process object).
        self.components = threading.Lock()

    @property
    def nodes(self) -> list[str]:
        return self.fleet.nodes

    def start_agent(self, node: str) -> None:
        """The node's agent (again, after a kill: the same state dir and store)."""
        self.fleet.start_agent(node, GPUS_PER_NODE, extra_args=[
            "--resync-seconds", str(RESYNC_SECONDS), *self.setups[node].agent_args()])

    # ------------------------------------------------------------------ API reads
    def api_get(self, path: str) -> Body | None:
        """GET from the API server as admin; None when it does not answer (an outage)
        or the object does not exist."""
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.stack.apiserver_port}{path}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._context) as answer:
                value: Body = json.loads(answer.read())
                return value
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def items(self, plural: str) -> list[Body] | None:
        listing = self.api_get(f"{GROUP}/namespaces/{self.namespace}/{plural}")
        if listing is None:
            return None
        items = listing.get("items")
        return list(items) if isinstance(items, list) else []

    def get(self, plural: str, name: str) -> Body | None:
        return self.api_get(f"{GROUP}/namespaces/{self.namespace}/{plural}/{name}")

    def kubectl(self, *args: str, input: str | None = None) -> bool:
        """A user's kubectl in the soak's namespace; False when it failed (an outage,
        a refusal)."""
        try:
            result = self.stack.kubectl(*args, "-n", self.namespace, input=input,
                                        check=False, timeout=30)
        except Exception:  # a timeout while the API server is away
            return False
        return result.returncode == 0

    def apply(self, body: Body) -> bool:
        return self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def patch(self, kind: str, name: str, patch: Body) -> bool:
        return self.kubectl("patch", kind, name, "--type", "merge", "-p", json.dumps(patch))

    def wait_api(self, timeout: float = 180) -> None:
        wait_for(lambda: self.api_get("/version") is not None, timeout, 1,
                 what="the API server")

    # ------------------------------------------------------------------ Docker
    @contextmanager
    def client(self, node: str) -> Iterator[docker.DockerClient]:
        client = docker.DockerClient(base_url=self.fleet.engines[node].host, timeout=20)
        try:
            yield client
        finally:
            client.close()

    def containers(self, node: str, *, all: bool = False,
                   ) -> list[docker.models.containers.Container]:
        with self.client(node) as client:
            return list(client.containers.list(all=all, ignore_removed=True, filters={
                "label": [GRS_LABEL, f"gpudock.dev/namespace={self.namespace}"]}))

    def running(self, node: str) -> list[Running]:
        """The node's running gpudock containers (raises when its dockerd is away)."""
        found = []
        for container in self.containers(node):
            labels = container.labels
            env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"] or ()
                       if "=" in item)
            gpus = {g for g in (labels.get("gpudock.dev/gpus") or "").split(",") if g}
            visible = env.get("NVIDIA_VISIBLE_DEVICES", "")
            if visible not in ("", "void", "none", "all"):
                gpus |= {g for g in visible.split(",") if g}
            ports = set()
            for key, bindings in (container.attrs["HostConfig"].get("PortBindings")
                                  or {}).items():
                proto = key.split("/")[1] if "/" in key else "tcp"
                for binding in bindings or ():
                    ports.add(f"{binding.get('HostIp') or '0.0.0.0'}:"
                              f"{binding.get('HostPort')}/{proto}")
            found.append(Running(node, labels.get("gpudock.dev/name", ""), str(container.name),
                                 frozenset(gpus), frozenset(ports)))
        return found

    def unsettled(self) -> list[str] | None:
        """The GpuReplicaSets not converged (see :func:`converged`), a Ready one
        counted only while its container runs on its node as Docker says, and the
        SizedVolumes not settled (:func:`volume_settled`, as ``svol/NAME``); None
        while the API server does not answer."""
        items = self.items("gpureplicasets")
        volumes = self.items("sizedvolumes")
        if items is None or volumes is None:
            return None
        running: dict[str, set[str]] = {}
        for node in self.nodes:
            try:
                running[node] = {c.name for c in self.running(node)}
            except Exception:  # its dockerd does not answer: nothing there is settled
                running[node] = set()
        return [body["metadata"]["name"] for body in items if not converged(body) or (
            condition(body, "Ready").get("status") == "True" and body["metadata"]["name"]
            not in running.get(str((body.get("status") or {}).get("nodeName")), set()))] + [
            f"svol/{body['metadata']['name']}" for body in volumes
            if not volume_settled(body)]

    def describe(self, names: list[str]) -> str:
        """The status conditions of the resources :meth:`unsettled` named."""
        bodies = [(b["metadata"]["name"], b) for b in self.items("gpureplicasets") or []] + \
            [(f"svol/{b['metadata']['name']}", b) for b in self.items("sizedvolumes") or []]
        return ", ".join(f"{name} {(body.get('status') or {}).get('conditions')}"
                         for name, body in bodies if name in names)

    def exec_in(self, node: str, name: str, argv: list[str]) -> tuple[int, str] | None:
        """Run ``argv`` in the running container of instance ``name`` on ``node`` (its
        exit code and output); None when it has no running container there."""
        with self.client(node) as client:
            found = [c for c in client.containers.list(ignore_removed=True, filters={
                "label": [GRS_LABEL, f"gpudock.dev/namespace={self.namespace}",
                          f"gpudock.dev/name={name}"]})]
            if len(found) != 1:
                return None
            code, output = found[0].exec_run(argv)
            assert isinstance(output, bytes)
            return (-1 if code is None else int(code)), output.decode(errors="replace")


def condition(body: Body, type_: str) -> Body:
    for cond in (body.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def settled(body: Body) -> bool:
    """The agent has handled the latest generation and is done with it: Running and
    Ready, or Stopped/Paused as asked, or Ready=False with a reason that says why. A
    change the agent refused for now (Stalled, e.g. DiskFull while the old revision
    serves on, Ready) is not done: it is applied later, when there is room."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    if condition(body, "Progressing").get("status") == "True":
        return False
    if condition(body, "Stalled").get("status") == "True":
        return False
    if (body.get("spec") or {}).get("rollbackTo"):
        return False
    ready = condition(body, "Ready")
    if ready.get("status") == "True":
        return True
    return bool(ready.get("reason")) and status.get("phase") in ("Stopped", "Paused") \
        and (body.get("spec") or {}).get("state") in ("Stopped", "Paused")


def volume_settled(body: Body) -> bool:
    """A SizedVolume the agent is done with: its latest generation handled, Ready and
    not Progressing (a refused resize is Ready, Degraded with its reason: settled); one
    being deleted is left to the deletes' own wait."""
    if body["metadata"].get("deletionTimestamp"):
        return True
    status = body.get("status") or {}
    return status.get("observedGeneration") == body["metadata"].get("generation") and \
        condition(body, "Ready").get("status") == "True" and \
        condition(body, "Progressing").get("status") != "True"


def why_not_ready(body: Body) -> str:
    """For the final convergence: "" when Ready (or stopped as asked); the reason when
    its status says it cannot get there by itself (kstatus Stalled=True, for the
    latest generation); else "?" (still on its way, or silent)."""
    if settled(body):
        return ""
    stalled = condition(body, "Stalled")
    status = body.get("status") or {}
    if status.get("observedGeneration") == body["metadata"].get("generation") and \
            stalled.get("status") == "True" and stalled.get("reason"):
        return f"{stalled['reason']}: {stalled.get('message', '')}"
    return "?"


def converged(body: Body) -> bool:
    """For the convergence after a fault and at the end: settled, or Stalled with a
    reason that says why and that no agent clears by itself (a refused change)."""
    why = why_not_ready(body)
    return why != "?" and why.split(":", 1)[0] not in CLEARED_BY_AGENTS
