"""What every endpoint works with: the settings, the Kubernetes client, the gate of
callers; and the few object helpers they share."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpudock.adapters.kube_api import KubeApi
from gpudock.api import GROUP, VERSION
from gpudock.errors import NotFoundError
from gpudock.rest.auth import Caller, Gate
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.names import CALLER, ORIGINAL_NAME
from gpudock.rest.settings import ApiSettings

log = logging.getLogger("gpudock.api")


@dataclass(frozen=True)
class ApiContext:
    settings: ApiSettings
    kube: KubeApi
    gate: Gate

    def find(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.kube.get(plural, namespace, name)
        except NotFoundError:
            return None

    def node(self, query: Mapping[str, str], code: Code) -> str:
        node = query.get("node") or self.settings.node
        if not node:
            raise RefusalError(code, "NoNode", "no --node and no ?node= to place it on")
        return node

    @property
    def wait_seconds(self) -> float:
        return self.settings.wait_seconds


def new_object(kind: str, name: str, go_name: str, caller: Caller,
               spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
            "metadata": {"name": name, "annotations": {ORIGINAL_NAME: go_name,
                                                        CALLER: caller.username}},
            "spec": spec}


def caller_patch(caller: Caller, spec: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of ``spec`` that records who made the change."""
    return {"metadata": {"annotations": {CALLER: caller.username}}, "spec": spec}


def generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)
