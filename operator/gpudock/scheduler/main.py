"""``gpudock scheduler``: the cluster scheduler alone (kopf, standalone, with only the
scheduler's watches), for clusters that run it apart from the agents."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import kopf

from gpudock.scheduler import handlers, kopf_login
from gpudock.settings import SchedulerSettings

logger = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    kopf_login.retry_the_api_server(settings)


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    scheduler = memo.get(handlers.MEMO_KEY)
    kubeconfig = scheduler.settings.kubeconfig if isinstance(
        scheduler, handlers.Scheduler) else None
    return kopf_login.connect(kubeconfig, memo=memo, **kwargs)


def run_scheduler(settings: SchedulerSettings, liveness_endpoint: str | None,
                  verbose: bool = False) -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it
    logger.info("gpudock scheduler %s starting (Lease %s/gpudock-scheduler)",
                settings.identity, settings.lease_namespace)
    kopf.run(standalone=True, clusterwide=not settings.namespaces,
             namespaces=list(settings.namespaces),
             memo=kopf.Memo({handlers.MEMO_KEY: handlers.Scheduler(settings)}),
             liveness_endpoint=liveness_endpoint)
    return 0
