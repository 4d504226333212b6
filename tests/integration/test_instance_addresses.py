"""#28 item 5: the addresses of the node's instance network are a shared resource.

Each instance has a fixed address on the agent's instance network, the same in every
revision and while Paused; a new instance that finds none free waits Pending with
AddressesExhausted, and no instance that runs (nor one being updated) is affected.
Each test gives its agent a /29 of its own (5 instance addresses) on a network of
its own, so it can fill the pool with a few containers.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import docker.models.containers
import yaml

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import apply_spec, only_container, wait_settled
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, condition, containers, gpu_replica_set, status

POOL = 5  # a /29: 8 addresses less network, gateway and broadcast
SLEEP = ["sleep", "infinity"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GRS_COUNT = "count/gpureplicasets.gpudock.dev"


def _small_pool_agent(stack: LocalStack, namespace: str, other: str,
                      start_agent: AgentFactory) -> tuple[str, str]:
    """An agent of both tenants whose instance network holds POOL instances; its
    network's name and subnet."""
    network, subnet = f"gd-{namespace}"[:40], stack.free_subnet(29)
    start_agent(extra_args=["--namespace", other, "--resync-seconds", "2",
                            "--instance-network", network,
                            "--instance-subnet", subnet])
    return network, subnet


def _docker_address(container: docker.models.containers.Container, network: str) -> str:
    """The address Docker gave the container on ``network`` ("" when it has none)."""
    container.reload()
    found = (container.attrs["NetworkSettings"]["Networks"] or {}).get(network) or {}
    return str(found.get("IPAddress") or "")


def _waits_for_an_address(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    def waiting() -> dict[str, Any] | None:
        found = status(stack, namespace, name)
        progressing: dict[str, Any] = next((c for c in found.get("conditions") or ()
                                            if c["type"] == "Progressing"), {})
        return found if progressing.get("reason") == "AddressesExhausted" else None

    wait_for(waiting, 60, what=f"{namespace}/{name} AddressesExhausted")
    return status(stack, namespace, name)


def _fill(stack: LocalStack, namespace: str, names: list[str]) -> dict[str, str]:
    """Instances ``names`` (no GPU) running; their container IDs by name."""
    apply(stack, namespace, *(gpu_replica_set(n, gpus=0, command=SLEEP) for n in names))
    for name in names:
        wait_settled(stack, namespace, name, revision=1)
    return {name: str(only_container(stack, namespace, name).id) for name in names}


def test_28_5_a_new_instance_waits_when_the_pool_is_exhausted_and_no_running_one_changes(
    stack: LocalStack, namespace: str, other_namespace: str, start_agent: AgentFactory,
) -> None:
    network, subnet = _small_pool_agent(stack, namespace, other_namespace, start_agent)
    names = [f"i{n}" for n in range(POOL)]
    ids = _fill(stack, namespace, names)
    addresses = {name: status(stack, namespace, name)["ip"] for name in names}
    assert len(set(addresses.values())) == POOL
    for name, address in addresses.items():
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(subnet)
        assert _docker_address(only_container(stack, namespace, name), network) == address

    # The other tenant's new instance is refused with the reason, and nothing else
    # changes: no container of it, and every running instance keeps its container.
    apply(stack, other_namespace, gpu_replica_set("late", gpus=0, command=SLEEP))
    late = _waits_for_an_address(stack, other_namespace, "late")
    assert late["phase"] == "Pending"
    assert late.get("ip") is None
    assert "waiting" in condition(stack, other_namespace, "late", "Progressing")["message"]
    assert condition(stack, other_namespace, "late", "Ready")["status"] == "False"
    assert not containers(stack, other_namespace)
    for name in names:
        container = only_container(stack, namespace, name)
        assert (container.id, container.status) == (ids[name], "running")
        assert status(stack, namespace, name)["ip"] == addresses[name]

    # An address released (an instance deleted) goes to the one that waits.
    stack.kubectl("delete", "grs", "i0", "-n", namespace, "--timeout=60s")
    started = wait_settled(stack, other_namespace, "late", revision=1)
    assert started["ip"] == addresses["i0"]


def test_28_5_an_instance_keeps_its_address_across_revisions_and_pauses_while_others_wait(
    stack: LocalStack, namespace: str, other_namespace: str, start_agent: AgentFactory,
) -> None:
    network, _ = _small_pool_agent(stack, namespace, other_namespace, start_agent)
    _fill(stack, namespace, ["web", *(f"f{n}" for n in range(POOL - 1))])
    address = status(stack, namespace, "web")["ip"]
    assert address
    apply(stack, other_namespace, gpu_replica_set("late", gpus=0, command=SLEEP))
    _waits_for_an_address(stack, other_namespace, "late")

    # New revisions (gpuCount, then the environment): each container is made while
    # the previous one still exists, stopped; the address stays the instance's.
    for revision, spec in ((2, {"gpus": 1}), (3, {"gpus": 1, "env": [
            {"name": "MODE", "value": "b"}]})):
        apply_spec(stack, namespace, "web", f"v{revision}", command=SLEEP, **spec)
        settled = wait_settled(stack, namespace, "web", revision=revision)
        assert settled["ip"] == address
        assert _docker_address(only_container(stack, namespace, "web"), network) == address
        assert _waits_for_an_address(stack, other_namespace, "late")["phase"] == "Pending"

    # Paused: the container is stopped and keeps the address reserved; Running again
    # starts it with that address.
    apply_spec(stack, namespace, "web", "pause", command=SLEEP, gpus=1, state="Paused",
               env=[{"name": "MODE", "value": "b"}])
    wait_settled(stack, namespace, "web", phase="Paused", revision=3)
    assert _waits_for_an_address(stack, other_namespace, "late")["phase"] == "Pending"
    apply_spec(stack, namespace, "web", "resume", command=SLEEP, gpus=1, state="Running",
               env=[{"name": "MODE", "value": "b"}])
    assert wait_settled(stack, namespace, "web", revision=3)["ip"] == address
    assert _docker_address(only_container(stack, namespace, "web"), network) == address
    assert not containers(stack, other_namespace)


def test_28_5_the_example_resource_quota_caps_the_instances_of_a_namespace(
    stack: LocalStack, namespace: str,
) -> None:
    """What docs/security.md shows a platform: a ResourceQuota on
    count/gpureplicasets.gpudock.dev. The API server refuses past the cap (the count
    that kube-controller-manager keeps is written here, as the stack has none)."""
    stack.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "platform/instance-quota.yaml"))
    quota: dict[str, Any] = stack.kubectl_json("get", "resourcequota", "gpudock-instances",
                                               "-n", namespace)
    hard: dict[str, str] = quota["spec"]["hard"]
    cap = int(hard[GRS_COUNT])
    quota["status"] = {"hard": hard, "used": {k: "0" for k in hard} | {GRS_COUNT: str(cap - 2)}}
    stack.kubectl("replace", "--raw", f"/api/v1/namespaces/{namespace}/resourcequotas/"
                  "gpudock-instances/status", "-f", "-", input=json.dumps(quota))
    apply(stack, namespace, gpu_replica_set("q1", gpus=0), gpu_replica_set("q2", gpus=0))
    refused = stack.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                            input=yaml.safe_dump(gpu_replica_set("q3", gpus=0)))
    assert refused.returncode != 0
    assert "exceeded quota: gpudock-instances" in refused.stderr, refused.stderr
    assert GRS_COUNT in refused.stderr
