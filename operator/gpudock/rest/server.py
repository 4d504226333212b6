"""`gpudock api`: build the context and serve the application with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from gpudock.adapters.kube_api import KubeApi
from gpudock.rest.app import create_app
from gpudock.rest.auth import Gate
from gpudock.rest.context import ApiContext
from gpudock.rest.settings import ApiSettings, AuthMode

log = logging.getLogger("gpudock.api")


def run_api(settings: ApiSettings) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kube = KubeApi(settings.kubeconfig, connections=64)
    if settings.auth == AuthMode.NONE:
        log.warning("--auth none: anyone who reaches %s:%s acts with this service's rights "
                    "in namespace %s", settings.host, settings.port, settings.namespace)
    app = create_app(ApiContext(settings, kube, Gate(settings, kube)))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                access_log=False)
    return 0
