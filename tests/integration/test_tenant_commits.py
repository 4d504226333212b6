"""#28 items 3 and 7 against the real stack: an ImageCommit that cannot fit in
Docker's root is refused before it writes anything, with its real reason; the image
streams through the agent without growing its memory; a commit writes only names its
namespace owns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import only_container, sh, wait_settled
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack, wait_for
from tests.stack.resources import apply, gpu_replica_set

MiB = 2**20


def _commit(stack: LocalStack, namespace: str, name: str, image: str,
            replica_set: str = "src", timeout: float = 180) -> dict[str, Any]:
    """Create an ImageCommit and wait until it is done; its status."""
    apply(stack, namespace, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "ImageCommit",
                             "metadata": {"name": name},
                             "spec": {"replicaSetName": replica_set, "image": image}})
    seen: dict[str, Any] = {}

    def done() -> bool:
        body = stack.kubectl_json("get", "imagecommit", name, "-n", namespace)
        seen.clear()
        seen.update(body.get("status") or {})  # type: ignore[call-overload]
        return seen.get("phase") in ("Succeeded", "Failed")

    wait_for(done, timeout, what=f"ImageCommit {name} done")
    return dict(seen)


def _message(status: dict[str, Any]) -> str:
    return str(status["conditions"][0]["message"])


def _images(stack: LocalStack) -> dict[str, str]:
    """Every tag on the node, with its image ID."""
    client = stack.docker_client()
    try:
        return {tag: str(image.id) for image in client.images.list() for tag in image.tags}
    finally:
        client.close()


def _free(stack: LocalStack) -> int:
    info = os.statvfs(stack.docker_root)
    return info.f_bavail * info.f_frsize


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_28_3_a_commit_that_cannot_fit_fails_with_its_reason_before_it_writes(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    apply(stack, namespace, gpu_replica_set("src", gpus=0))
    wait_settled(stack, namespace, "src")
    container = only_container(stack, namespace, "src")
    # 150 MiB of files: the commit itself fits in 400 MiB, but docker save and docker
    # load each copy the image again, and 3 x 150 MiB does not.
    sh(container, "dd if=/dev/zero of=/root/big bs=1M count=150 2>/dev/null")
    before = _images(stack)
    filler = stack.docker_root / "gpudock-test-filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, _free(stack) - 400 * MiB)
    try:
        dense = _commit(stack, namespace, "dense", f"gpudock.invalid/{namespace}/dense:v1")
        assert (dense["phase"], dense.get("reason")) == ("Failed", "DiskFull"), dense
        assert "needs about" in _message(dense), dense
        assert "are free" in _message(dense), dense
        assert _images(stack) == before  # nothing written: no image, no scratch left
    finally:
        filler.unlink()
    # A sparse file uses no disk, but the commit writes it dense: 30 GiB on a 20 GiB
    # root is refused before anything is written.
    sh(container, "rm /root/big && truncate -s 30G /root/sparse")
    free = _free(stack)
    sparse = _commit(stack, namespace, "sparse", f"gpudock.invalid/{namespace}/sparse:v1")
    assert (sparse["phase"], sparse.get("reason")) == ("Failed", "DiskFull"), sparse
    assert "needs about" in _message(sparse), sparse
    assert _free(stack) > free - 64 * MiB  # nothing was written
    assert _images(stack) == before
    assert only_container(stack, namespace, "src").id == container.id
    assert only_container(stack, namespace, "src").status == "running"
    # Room again: the same commit goes through.
    sh(container, "rm /root/sparse && echo kept > /root/small")
    done = _commit(stack, namespace, "fits", f"gpudock.invalid/{namespace}/fits:v1")
    assert done["phase"] == "Succeeded", done


def test_28_3_a_commit_streams_through_the_agent_with_bounded_memory(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent()
    assert agent.process is not None
    apply(stack, namespace, gpu_replica_set("src", gpus=0))
    wait_settled(stack, namespace, "src")
    size = 600 * MiB
    sh(only_container(stack, namespace, "src"),
       f"dd if=/dev/urandom of=/root/big bs=1M count={size // MiB} 2>/dev/null")
    peak = _peak_rss(agent.process.pid)
    done = _commit(stack, namespace, "big", f"gpudock.invalid/{namespace}/big:v1")
    assert done["phase"] == "Succeeded", done
    assert done["sizeBytes"] >= size
    grown = _peak_rss(agent.process.pid) - peak
    # The pipe holds 4 MiB, a few 1 MiB buffers are in flight: a bound that does not
    # grow with the image (before, what docker load had not read yet piled up).
    assert grown < 24 * MiB, f"the agent's peak memory grew {grown / MiB:.0f} MiB"


def test_28_7_a_commit_writes_only_names_its_namespace_owns(
    stack: LocalStack, namespace: str, other_namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--namespace", other_namespace])
    apply(stack, namespace, gpu_replica_set("src", gpus=0))
    apply(stack, other_namespace, gpu_replica_set("src", gpus=0),
          # another tenant's instance waiting for a name in this namespace's repository
          gpu_replica_set("waits", gpus=0, image=f"gpudock.invalid/{namespace}/shared:v1"))
    wait_settled(stack, namespace, "src")
    wait_settled(stack, other_namespace, "src")
    sh(only_container(stack, namespace, "src"), "echo mine > /root/files")
    before = _images(stack)
    refused = {
        "latest": "busybox:latest",  # a registry image another tenant may mean
        "stack": BUSYBOX_IMAGE,  # the image the instances run
        "hub": f"{namespace}/saved:v1",  # a Docker Hub name
        "shared": f"gpudock.invalid/{namespace}/shared:v1",  # another namespace's
    }
    for name, image in refused.items():
        seen = _commit(stack, namespace, name, image)
        assert (seen["phase"], seen.get("reason")) == ("Failed", "ImageNameNotAllowed"), \
            (image, seen)
    # The other namespace cannot write into this namespace's repository.
    stolen = _commit(stack, other_namespace, "stolen", f"gpudock.invalid/{namespace}/x:v1")
    assert (stolen["phase"], stolen.get("reason")) == ("Failed", "ImageNameNotAllowed")
    assert f"gpudock.invalid/{other_namespace}/" in _message(stolen)
    assert _images(stack) == before  # busybox:latest not made, the stack's image kept
    mine = _commit(stack, namespace, "mine", f"gpudock.invalid/{namespace}/mine:v1")
    assert mine["phase"] == "Succeeded", mine
