"""Runs ImageCommits: a GpuReplicaSet's running container saved as a clean image.

The container keeps running (paused for the commit when spec.pause, as docker commit
does by default), with the same ID and revision. The image keeps the container's
filesystem and its image config, without what belongs to the running instance:
none of gpudock's labels, and NVIDIA_VISIBLE_DEVICES as the base image had it (not
the instance's GPUs), so a GpuReplicaSet started from it gets exactly its own GPUs.
An existing tag is never overwritten, and a commit writes only names its namespace
owns (--commit-repository-template, never one another namespace names), only when the
commit fits in Docker's root (commit_room.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gpudock import metrics
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.image_rewrite import rewrite_image
from gpudock.adapters.kube_api import KubeApi
from gpudock.agent.commit_holds import CommitHolds
from gpudock.agent.commit_room import check_room
from gpudock.agent.exec_runner import current_container, failed
from gpudock.api import gpu_replica_set, image_commit, ownership
from gpudock.api.image_commit import ImageCommitSpec, name_problem
from gpudock.api.reasons import Reason
from gpudock.core import labels
from gpudock.core.container_config import VERSION_VARIABLE
from gpudock.core.replica_set.saved_disks import is_reserved_reference
from gpudock.errors import GpudockError, SpecError, TransientError, UserError
from gpudock.settings import Settings

GPU_VARIABLE = "NVIDIA_VISIBLE_DEVICES"
Status = dict[str, Any]


def clean_config(config: dict[str, Any], base_env: list[str]) -> dict[str, Any]:
    """The committed config without the instance: gpudock's labels and its revision
    (CONTAINER_VERSION) dropped, the GPU variable as in the base image (dropped when
    the base has none)."""
    base_gpus = next((e for e in base_env if e.split("=", 1)[0] == GPU_VARIABLE), None)
    env = [e for e in config.get("Env") or () if "=" in e
           and e.split("=", 1)[0] not in (GPU_VARIABLE, VERSION_VARIABLE)]
    if base_gpus is not None:
        env.append(base_gpus)
    kept = {k: v for k, v in (config.get("Labels") or {}).items()
            if not k.startswith(labels.PREFIX)}
    return {**config, "Env": env, "Labels": kept or None}


def run(body: Mapping[str, Any], target: Mapping[str, Any], settings: Settings,
        docker: DockerRuntime, now: Callable[[], str],
        started: Callable[[Status], None], kube: KubeApi | None = None,
        holds: CommitHolds | None = None) -> Status:
    node = settings.node_name
    status = body.get("status") or {}
    namespace = body["metadata"]["namespace"]
    try:
        spec = ImageCommitSpec.parse(body.get("spec") or {})
    except SpecError as exc:
        return failed(exc.reason, exc.message, now(), node)
    if is_reserved_reference(spec.image):
        return failed(Reason.RESERVED_IMAGE, f"{spec.image} is in gpudock's own repository",
                      now(), node)
    problem = name_problem(spec.image, settings.commit_repository_template, namespace) \
        or (other_users(kube, settings, namespace, spec.image) if kube else None)
    if problem is not None:
        return failed(Reason.IMAGE_NAME_NOT_ALLOWED, problem, now(), node)
    existing = docker.image_info(spec.image)
    if existing is not None and existing.id != status.get("imageID"):
        return failed(Reason.IMAGE_TAG_TAKEN, f"image {spec.image} exists already (not made by "
                      "this ImageCommit); pick another tag, nothing was changed", now(), node)
    state = (target.get("spec") or {}).get("state", "Running")
    container = current_container(docker, target)
    if state != "Running" or container is None or container.status != "running":
        how = state if state != "Running" else (container.status if container else "missing")
        return failed(Reason.CONTAINER_NOT_RUNNING, f"GpuReplicaSet {spec.replica_set_name} is "
                      f"{how}: only a running container is committed", now(), node)
    try:
        check_room(docker, container)
    except UserError as exc:
        return failed(exc.reason, exc.message, now(), node)
    if kube is not None:
        hold_for_delete(body, node, kube)
    begun = now()
    started({"phase": "Running", "node": node, "startTime": begun,
             "revision": container.revision,
             "conditions": [{"type": "Complete", "status": "False",
                             "reason": Reason.COMMITTING,
                             "message": f"committing {container.name}",
                             "lastTransitionTime": begun}]})
    scratch = scratch_tag(body)
    try:
        try:
            with metrics.timed(metrics.COMMIT_SECONDS):
                with (holds or CommitHolds()).hold(
                        container.id, lambda: _paused(docker, container.id)):
                    docker.commit_to(container.id, container.name, scratch,
                                     pause=spec.pause)
                _, _, base = docker.image_config(container.base_image)
                rewrite_image(docker, scratch, spec.image,
                              lambda config: clean_config(config, list(base.get("Env") or ())))
            image_id, size, _ = docker.image_config(spec.image)
        finally:
            docker.remove_image(scratch)
    except GpudockError as exc:
        # Once Running, every failure is final and says what it was: a commit is never
        # retried by itself (the status would otherwise stay Running until the next
        # event called it an agent restart).
        reason = exc.reason if isinstance(exc, UserError | TransientError) else \
            Reason.DOCKER_REQUEST_FAILED
        return failed(reason, f"the commit of {container.name} failed, nothing was kept: "
                      f"{exc.message if isinstance(exc, UserError) else exc}", now(), node,
                      begun)
    end = now()
    return {"phase": "Succeeded", "node": node, "startTime": begun, "completionTime": end,
            "imageID": image_id, "sizeBytes": size, "revision": container.revision,
            "conditions": [{"type": "Complete", "status": "True", "reason": Reason.COMMITTED,
                            "message": f"{container.name} saved as {spec.image}",
                            "lastTransitionTime": end}]}


def _paused(docker: DockerRuntime, container_id: str) -> bool:
    """Whether the agent's view of the container (what the observer reads) still says
    paused."""
    return any(c.id == container_id and c.status == "paused"
               for c in docker.list_containers())


def other_users(kube: KubeApi, settings: Settings, namespace: str,
                image: str) -> str | None:
    """Why ``image`` is another namespace's: a GpuReplicaSet or an ImageCommit of
    another namespace names it; None when none does."""
    for plural, kind in ((gpu_replica_set.PLURAL, "GpuReplicaSet"),
                         (image_commit.PLURAL, "ImageCommit")):
        for item in kube.list_objects(plural, settings.namespaces):
            meta = item.get("metadata") or {}
            if meta.get("namespace") != namespace and \
                    (item.get("spec") or {}).get("image") == image:
                return (f"image {image} is named by {kind} {meta.get('name')} of another "
                        "namespace; an ImageCommit never writes a name another namespace "
                        "uses, nothing was changed")
    return None


def scratch_tag(body: Mapping[str, Any]) -> str:
    """Where the raw commit goes before its config is cleaned (removed after)."""
    meta = body["metadata"]
    return (f"gpudock-commit-scratch/{labels.base_name(meta['namespace'], meta['name'])}:"
            f"{meta['uid']}")


def forget_scratch(body: Mapping[str, Any], settings: Settings,
                   docker: DockerRuntime) -> None:
    """A commit cut short by an agent restart may have left its scratch image."""
    del settings
    docker.remove_image(scratch_tag(body))


def hold_for_delete(body: Mapping[str, Any], node: str, kube: KubeApi) -> None:
    """Put this node's commit finalizer on the ImageCommit before the commit writes anything,
    so its delete waits for this agent (``release``) even when the agent is down or
    misses the delete: no image is left behind for a watch event it never saw."""
    meta = body["metadata"]
    fresh = kube.get(image_commit.PLURAL, meta["namespace"], meta["name"])
    fresh_meta = fresh.get("metadata") or {}
    finalizers = list(fresh_meta.get("finalizers") or ())
    mine = ownership.commit_finalizer(node)
    if mine not in finalizers:
        kube.set_finalizers(image_commit.PLURAL, meta["namespace"], meta["name"],
                            [*finalizers, mine], str(fresh_meta.get("resourceVersion")))


def holds_for_delete(body: Mapping[str, Any], node: str) -> bool:
    return ownership.commit_finalizer(node) in \
        ((body.get("metadata") or {}).get("finalizers") or ())


def release(body: Mapping[str, Any], settings: Settings, docker: DockerRuntime,
            kube: KubeApi) -> None:
    """A deleted ImageCommit this node ran: a scratch image a cut-short run left goes,
    its image goes when its deletionPolicy says Delete, then this node's commit
    finalizer."""
    forget_scratch(body, settings, docker)
    remove_on_delete(body, docker)
    meta = body["metadata"]
    kube.remove_finalizer(image_commit.PLURAL, meta["namespace"], meta["name"],
                          ownership.commit_finalizer(settings.node_name))


def remove_on_delete(body: Mapping[str, Any], docker: DockerRuntime) -> bool:
    """deletionPolicy Delete: remove the image (only the one this commit made)."""
    status = body.get("status") or {}
    try:
        spec = ImageCommitSpec.parse(body.get("spec") or {})
    except SpecError:
        return False
    if spec.deletion_policy != "Delete" or status.get("phase") != "Succeeded":
        return False
    info = docker.image_info(spec.image)
    if info is None or info.id != status.get("imageID"):
        return False
    return docker.remove_image(spec.image)
