"""Helpers for the revision suites: the user's files inside the container, and waiting
for a revision to be rolled out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.models.containers

from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, containers, gpu_replica_set, grs

MARKER = "/root/installed-by-user"
DELETED = "/etc/os-release"  # a file of the image the user deleted


def sh(container: docker.models.containers.Container, script: str) -> str:
    code, output = container.exec_run(["sh", "-c", script])
    assert isinstance(output, bytes)
    assert code == 0, output
    return output.decode()


def only_container(stack: LocalStack, namespace: str,
                   name: str | None = None) -> docker.models.containers.Container:
    """The one container (of resource ``name``, when given) in the namespace."""
    found = [c for c in containers(stack, namespace)
             if name is None or c.labels["gpudock.dev/name"] == name]
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def touch_the_disk(stack: LocalStack, namespace: str, content: str = "v1",
                   name: str | None = None) -> None:
    """What a user does in a GPU container: install something, remove something."""
    sh(only_container(stack, namespace, name),
       f"mkdir -p /root && echo {content} > {MARKER} && rm -f {DELETED}")


def assert_disk_kept(stack: LocalStack, namespace: str, content: str = "v1",
                     name: str | None = None) -> None:
    container = only_container(stack, namespace, name)
    assert sh(container, f"cat {MARKER}").strip() == content
    assert sh(container, f"test -e {DELETED} && echo present || echo gone").strip() == "gone"


def apply_spec(stack: LocalStack, namespace: str, name: str, cause: str,
               **spec: Any) -> int:
    """Apply ``spec`` with a change-cause; returns the new generation."""
    body = gpu_replica_set(name, **spec)
    body["metadata"]["annotations"] = {"kubernetes.io/change-cause": cause}
    apply(stack, namespace, body)
    return int(grs(stack, namespace, name)["metadata"]["generation"])


def wait_settled(stack: LocalStack, namespace: str, name: str, *, phase: str = "Running",
                 revision: int | None = None, timeout: float = 90) -> dict[str, Any]:
    """Wait until the agent has handled the latest generation and is done with it."""
    def settled() -> dict[str, Any] | None:
        body = grs(stack, namespace, name)
        status = body.get("status") or {}
        progressing: dict[str, Any] = next((c for c in status.get("conditions") or ()
                            if c["type"] == "Progressing"), {})
        if (status.get("observedGeneration") == body["metadata"]["generation"]
                and status.get("phase") == phase and progressing.get("status") == "False"
                and (revision is None or status.get("revision") == revision)):
            return status
        return None

    try:
        wait_for(settled, timeout, what=f"{namespace}/{name} {phase} at revision {revision}")
    except TimeoutError as timeout_error:  # say where it stood, so a failure explains itself
        last = grs(stack, namespace, name).get("status")
        raise TimeoutError(f"{timeout_error}; its status: {last}") from None
    status = settled()
    assert status is not None, grs(stack, namespace, name)  # and it stays so
    return status


def saved_layers(stack: LocalStack, uid: str) -> list[Path]:
    """The saved writable layers of the resource with ``uid`` on the stack's dockerd
    (the agent keeps them under <Docker root>/gpudock/layers/<uid>/)."""
    mine = stack.docker_root / "gpudock" / "layers" / uid
    return sorted(mine.iterdir()) if mine.exists() else []
