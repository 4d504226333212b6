"""kopf registration: wires the adapters to the core. No decisions are made here."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from gpudock.adapters.docker_runtime import DockerRuntime
from gpudock.adapters.gpu_inventory import inventory_from_settings
from gpudock.api import gpu_replica_set, sized_volume
from gpudock.errors import GpudockError, SpecError
from gpudock.settings import Settings

GROUP, VERSION = "gpudock.dev", "v1alpha1"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit --kubeconfig wins; otherwise in-cluster first, then ~/.kube/config."""
    settings: Settings = kwargs["memo"].settings
    if settings.kubeconfig:
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(memo: Any, settings: kopf.OperatorSettings,
            logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    agent: Settings = memo.settings
    settings.persistence.finalizer = "gpudock.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    runtime = DockerRuntime(agent.docker_host)
    memo.docker = runtime
    memo.inventory = inventory_from_settings(agent)
    try:
        logger.info("Docker %s at %s", runtime.version(), agent.docker_host or "default")
        gpus = memo.inventory.list_gpus()
    except GpudockError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    logger.info("node %s: %d GPUs (%s backend): %s", agent.node_name, len(gpus),
                agent.gpu_backend, ", ".join(g.uuid for g in gpus))


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = getattr(memo, "docker", None)
    if isinstance(runtime, DockerRuntime):
        runtime.close()


def _on_this_node(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> bool:
    return bool(spec.get("nodeName") == memo.settings.node_name)


@kopf.on.resume(GROUP, VERSION, gpu_replica_set.PLURAL, when=_on_this_node)
@kopf.on.create(GROUP, VERSION, gpu_replica_set.PLURAL, when=_on_this_node)
@kopf.on.update(GROUP, VERSION, gpu_replica_set.PLURAL, when=_on_this_node)
def reconcile_gpu_replica_set(spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch,
                              **_: Any) -> None:
    _validate(gpu_replica_set.GpuReplicaSetSpec.parse, spec, meta, patch)


@kopf.on.resume(GROUP, VERSION, sized_volume.PLURAL, when=_on_this_node)
@kopf.on.create(GROUP, VERSION, sized_volume.PLURAL, when=_on_this_node)
@kopf.on.update(GROUP, VERSION, sized_volume.PLURAL, when=_on_this_node)
def reconcile_sized_volume(spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch,
                           **_: Any) -> None:
    _validate(sized_volume.SizedVolumeSpec.parse, spec, meta, patch)


def _validate(parse: Any, spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch) -> None:
    generation = meta.get("generation")
    try:
        parse(dict(spec))
    except SpecError as exc:
        patch.status["phase"] = "Failed"
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = [{"type": "Degraded", "status": "True",
                                       "reason": exc.reason, "message": exc.message}]
        return
    patch.status["phase"] = "Pending"
    patch.status["observedGeneration"] = generation
