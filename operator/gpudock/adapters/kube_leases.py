"""A coordination.k8s.io/v1 Lease: read, take and renew it with compare-and-set, for
leader election (the scheduler's). Errors become gpudock's tiers, as in kube_api."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import kubernetes.client

from gpudock.adapters.kube_api import ObjectNotFoundError, translated


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_seconds: int
    renew_time: datetime.datetime | None
    resource_version: str
    transitions: int


class Leases:
    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._api = kubernetes.client.CoordinationV1Api(api_client)

    def read(self, namespace: str, name: str) -> LeaseRecord | None:
        """The Lease, or None when it does not exist."""
        try:
            with translated(f"get lease {namespace}/{name}"):
                lease = self._api.read_namespaced_lease(name, namespace)
        except ObjectNotFoundError:
            return None
        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        meta = lease.metadata or kubernetes.client.V1ObjectMeta()
        return LeaseRecord(holder=spec.holder_identity or "",
                           duration_seconds=int(spec.lease_duration_seconds or 15),
                           renew_time=spec.renew_time,
                           resource_version=str(meta.resource_version),
                           transitions=int(spec.lease_transitions or 0))

    def write(self, namespace: str, name: str, holder: str, duration_seconds: int,
              now: datetime.datetime, before: LeaseRecord | None) -> None:
        """Hold the Lease as ``holder`` from ``now``: create it when ``before`` is
        None, else replace it at ``before``'s resourceVersion (ConflictError when
        another candidate wrote it meanwhile)."""
        taking = before is None or before.holder != holder
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=holder, lease_duration_seconds=duration_seconds,
            renew_time=now,
            acquire_time=now if taking else None,
            lease_transitions=(0 if before is None else
                               before.transitions + (1 if taking else 0)))
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(
                name=name, namespace=namespace,
                resource_version=None if before is None else before.resource_version),
            spec=spec)
        with translated(f"write lease {namespace}/{name}"):
            if before is None:
                self._api.create_namespaced_lease(namespace, body)
            else:
                self._api.replace_namespaced_lease(name, namespace, body)
