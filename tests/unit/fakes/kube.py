"""An in-memory Kubernetes API behind the KubeClient port (core/ports.py): objects of
this API group by (plural, namespace, name), with the API server's bookkeeping that
the reconcilers rely on (uid, generation bumped by a spec change, resourceVersion
bumped by every write, JSON merge patches), and a record of every patch."""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from gpudock.adapters.kube_api import ConflictError, KubeUnavailableError, ObjectNotFoundError


@dataclass(frozen=True)
class Patch:
    verb: str  # patch_spec | patch_status
    plural: str
    namespace: str
    name: str
    body: dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, None removes a field, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class InMemoryKube:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.patches: list[Patch] = []
        self.unavailable = False  # every call fails as if the API server were away
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name)

    # ------------------------------------------------------------- the port
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            self._reachable(f"get {plural} {namespace}/{name}")
            return copy.deepcopy(self._object(plural, namespace, name))

    def patch_spec(self, plural: str, namespace: str, name: str,
                   spec: dict[str, Any]) -> None:
        with self._lock:
            self._reachable(f"patch spec of {plural} {namespace}/{name}")
            body = self._object(plural, namespace, name)
            self.patches.append(Patch("patch_spec", plural, namespace, name,
                                      copy.deepcopy(spec)))
            self._set_spec(body, merge_patch(body.get("spec") or {}, spec))

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> str:
        with self._lock:
            return self._patch_status(plural, namespace, name, status)

    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        with self._lock:  # the check and the write at once, as the API server does
            self._patch_status(plural, namespace, name, status, resource_version)
            return copy.deepcopy(self._object(plural, namespace, name))

    def _patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                      resource_version: str | None = None) -> str:
        """(Under the lock.) ConflictError when ``resource_version`` is not the
        object's."""
        self._reachable(f"patch status of {plural} {namespace}/{name}")
        body = self._object(plural, namespace, name)
        if resource_version is not None and \
                str(body["metadata"].get("resourceVersion")) != resource_version:
            raise ConflictError(f"patch status of {plural} {namespace}/{name}: changed")
        self.patches.append(Patch("patch_status", plural, namespace, name,
                                  copy.deepcopy(status)))
        body["status"] = merge_patch(body.get("status") or {}, status)
        return self._written(body)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            self._reachable(f"get secret {namespace}/{name}")
            found = self.secrets.get((namespace, name))
            if found is None:
                raise ObjectNotFoundError(f"get secret {namespace}/{name}")
            return copy.deepcopy(found)

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            name = body["metadata"]["name"]
            self._reachable(f"create {plural} {namespace}/{name}")
            if (plural, namespace, name) in self.objects:
                raise ConflictError(f"create {plural} {namespace}/{name}: exists")
            made = copy.deepcopy(body)
            made["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1)
            self.objects[(plural, namespace, name)] = made
            self._written(made)
            return copy.deepcopy(made)

    # ----------------------------------------------------- what kubectl does
    def apply(self, plural: str, namespace: str, name: str, spec: dict[str, Any],
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Create the object, or replace its spec (and annotations): `kubectl apply`."""
        with self._lock:
            key = (plural, namespace, name)
            body = self.objects.get(key)
            if body is None:
                body = {"metadata": {"name": name, "namespace": namespace,
                                     "uid": str(uuid.uuid4()), "generation": 1,
                                     "annotations": dict(annotations or {})},
                        "spec": copy.deepcopy(spec)}
                self.objects[key] = body
                self._written(body)
            else:
                body["metadata"]["annotations"] = dict(annotations or {})
                self._set_spec(body, copy.deepcopy(spec))
            return copy.deepcopy(body)

    def remove(self, plural: str, namespace: str, name: str) -> None:
        """The object is gone (its finalizer removed after the delete handler)."""
        with self._lock:
            self.objects.pop((plural, namespace, name), None)

    def status_patches(self, name: str) -> list[dict[str, Any]]:
        return [p.body for p in self.patches if p.verb == "patch_status" and p.name == name]

    # --------------------------------------------------------------- internals
    def _reachable(self, what: str) -> None:
        if self.unavailable:
            raise KubeUnavailableError(f"{what}: connection refused")

    def _object(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        body = self.objects.get((plural, namespace, name))
        if body is None:
            raise ObjectNotFoundError(f"get {plural} {namespace}/{name}")
        return body

    def _set_spec(self, body: dict[str, Any], spec: dict[str, Any]) -> None:
        if spec != body.get("spec"):
            body["metadata"]["generation"] += 1  # only a spec change bumps it
        body["spec"] = spec
        self._written(body)

    def _written(self, body: dict[str, Any]) -> str:
        version = str(next(self._versions))
        body["metadata"]["resourceVersion"] = version
        return version
