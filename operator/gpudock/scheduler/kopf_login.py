"""How the processes log kopf in (the agent and `gpudock scheduler`): an explicit
kubeconfig wins; otherwise in-cluster first, then ~/.kube/config. And how long kopf
retries the API server (:class:`ApiRetries`)."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from typing import Any

import kopf

from gpudock.adapters.kube_api import in_cluster_server


def connect(kubeconfig: str | None, **kwargs: Any) -> kopf.ConnectionInfo | None:
    if kubeconfig:
        return kopf.login_with_kubeconfig(**kwargs)
    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is None:
        return kopf.login_with_kubeconfig(**kwargs)
    # kopf names the server kubernetes.default.svc, which a host-network pod resolves
    # only through cluster DNS; the address the kubelet injects needs no DNS (as
    # client-go's and the kubernetes client's in-cluster configs use it).
    server = in_cluster_server(os.environ)
    return dataclasses.replace(in_cluster, server=server) if server else in_cluster


class ApiRetries:
    """kopf's ``settings.networking.error_backoffs``: kopf's own first delays (1, 1,
    2, 3, 5, 8, 13, 21 s), then every 30 s for as long as it takes. kopf's default
    gives up after those 54 s and a watch that gives up stops the whole operator: an
    API server away for 60 s, or one that answers 403 Forbidden for a while after it
    started again (its RBAC not yet loaded), stopped every agent's kopf for good
    (found by the soak). Iterated afresh for every request."""

    FIRST = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
    THEN = 30.0

    def __iter__(self) -> Iterator[float]:
        return itertools.chain(self.FIRST, itertools.repeat(self.THEN))


def retry_the_api_server(settings: kopf.OperatorSettings) -> None:
    """Retry API errors (connection refused, 5xx, 403, 429) without end."""
    settings.networking.error_backoffs = ApiRetries()
