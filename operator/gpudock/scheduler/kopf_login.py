"""How the processes log kopf in (the agent and `gpudock scheduler`): an explicit
kubeconfig wins; otherwise in-cluster first, then ~/.kube/config."""

from __future__ import annotations

import dataclasses
import os
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
