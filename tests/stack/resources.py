"""Helpers to read GpuReplicaSets and their containers in tests."""

from __future__ import annotations

from typing import Any

import docker.models.containers
import yaml

from tests.stack.localstack import LocalStack

GRS_LABEL = "gpudock.dev/kind=GpuReplicaSet"


def grs(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    return stack.kubectl_json("get", "grs", name, "-n", namespace)


def status(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    value = grs(stack, namespace, name).get("status") or {}
    assert isinstance(value, dict)
    return value


def condition(stack: LocalStack, namespace: str, name: str, type_: str) -> dict[str, Any]:
    for cond in status(stack, namespace, name).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def event_reasons(stack: LocalStack, namespace: str, name: str) -> list[str]:
    """The reasons of the Events posted about resource ``name``."""
    items = stack.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                               f"involvedObject.name={name}")["items"]
    assert isinstance(items, list)
    return [str(item["reason"]) for item in items]


def all_statuses(stack: LocalStack, namespace: str) -> dict[str, dict[str, Any]]:
    items = stack.kubectl_json("get", "grs", "-n", namespace)["items"]
    assert isinstance(items, list)
    return {item["metadata"]["name"]: item.get("status") or {} for item in items}


def containers(stack: LocalStack, namespace: str | None = None,
               ) -> list[docker.models.containers.Container]:
    filters = [GRS_LABEL] + ([f"gpudock.dev/namespace={namespace}"] if namespace else [])
    client = stack.docker_client()
    try:
        # ignore_removed: one can go between listing and inspecting (a removal that a
        # killed agent asked for still finishes).
        return list(client.containers.list(all=True, filters={"label": filters},
                                           ignore_removed=True))
    finally:
        client.close()


def gpus_in_use(stack: LocalStack, namespace: str | None = None) -> list[str]:
    """The GPU labels of every gpudock container (in ``namespace``), duplicates kept."""
    return [g for c in containers(stack, namespace)
            for g in (c.labels.get("gpudock.dev/gpus") or "").split(",") if g]


def env_of(container: docker.models.containers.Container) -> dict[str, str]:
    """The container's variables (an entry without "=" unsets an image's variable)."""
    pairs = (item.split("=", 1) for item in container.attrs["Config"]["Env"] or ()
             if "=" in item)
    return {k: v for k, v in pairs}


def gpu_replica_set(name: str, *, gpus: int = 1, image: str = "gpudock-test/busybox:1",
                    node: str = "gpu-node-1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuReplicaSet",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "image": image, "gpuCount": gpus, **spec}}


def apply(stack: LocalStack, namespace: str, *bodies: dict[str, Any]) -> None:
    """`kubectl apply` of ``bodies`` in ``namespace``, as one YAML stream."""
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(bodies))
