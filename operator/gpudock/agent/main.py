"""Starts kopf, standalone, with gpudock's handlers and the agent's settings."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import kopf

from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import config_problem
from gpudock.adapters.volumes.registry import open_volume_backend
from gpudock.agent import handlers
from gpudock.errors import GpudockError
from gpudock.scheduler import handlers as scheduling
from gpudock.settings import Settings

logger = logging.getLogger(__name__)


def run_agent(settings: Settings, *, verbose: bool = False) -> int:
    """Run until SIGTERM or SIGINT; kopf stops gracefully on either."""
    logging.basicConfig(  # stdout: what `kubectl logs` and journald collect
        stream=sys.stdout,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per liveness probe says nothing; failures still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if settings.kubeconfig:
        # kopf's kubeconfig login reads $KUBECONFIG; the flag wins over in-cluster.
        os.environ["KUBECONFIG"] = settings.kubeconfig
    for module in handlers.MODULES:  # kopf registers each handler as it is imported
        importlib.import_module(module)
    memo = kopf.Memo(settings=settings)
    if settings.scheduler == "auto":  # a candidate to lead the cluster scheduler
        memo[scheduling.MEMO_KEY] = scheduling.Scheduler(settings.scheduler_settings())

    logger.info("gpudock agent for node %s starting", settings.node_name)
    problem = config_problem(settings.kubeconfig)
    if problem is not None:  # never retried: the flag or the mount must change
        logger.critical("cannot start: %s", problem)
        return 2
    try:  # a volume root the backend cannot use is refused now, not at first volume
        open_volume_backend(settings.volume_backend, settings.volumes_at,
                            DockerRuntime(settings.docker_host)).check()
    except GpudockError as exc:
        logger.critical("cannot start: --volume-backend %s: %s", settings.volume_backend,
                        exc)
        return 2
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        memo=memo,
        liveness_endpoint=settings.liveness_endpoint,
    )
    logger.info("gpudock agent for node %s stopped", settings.node_name)
    return 0
