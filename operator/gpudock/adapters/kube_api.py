"""The few Kubernetes API calls the reconcilers make besides kopf's own: status
patches, reading a SizedVolume. Errors become gpudock's tiers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, cast

import kubernetes
import kubernetes.client
import kubernetes.config
import urllib3
import urllib3.exceptions

from gpudock.api import GROUP, VERSION
from gpudock.api.reasons import Reason
from gpudock.errors import NotFoundError, TransientError


class KubeUnavailableError(TransientError):
    """The API server did not answer or is busy."""

    reason = Reason.API_SERVER_UNAVAILABLE


class ObjectNotFoundError(NotFoundError):
    """The Kubernetes object does not exist (or no longer does)."""


class ConflictError(KubeUnavailableError):
    """A write with a resourceVersion precondition lost: the object changed since it
    was read (compare-and-set; read it again and decide again)."""


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's URL from KUBERNETES_SERVICE_HOST/PORT (None when unset), the
    in-cluster address the kubelet gives every pod and Helm values can override."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            raise ObjectNotFoundError(what) from exc
        if exc.status == 409:
            raise ConflictError(f"{what}: changed meanwhile", delay=0.5) from exc
        if exc.status in (409, 429) or (exc.status or 0) >= 500:
            raise KubeUnavailableError(f"{what}: {exc.status} {exc.reason}", delay=2) from exc
        if exc.status in (401, 403):
            # The agent's RBAC is wrong (a persistent state, fixed by the admin: retry
            # slowly), or the API server has just started and not loaded it yet.
            raise KubeUnavailableError(f"{what}: {exc.status} {exc.reason}: the agent's "
                                       "credentials or RBAC (manifests/rbac.yaml) do not "
                                       "allow it", delay=10) from exc
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KubeUnavailableError(f"{what}: {exc}") from exc


class KubeApi:
    def __init__(self, kubeconfig: str | None, *, in_cluster: bool = True,
                 context: str | None = None) -> None:
        """``kubeconfig`` wins; else in-cluster (when allowed), else the default
        kubeconfig ($KUBECONFIG or ~/.kube/config), at ``context`` (default: its
        current one)."""
        self.default_namespace = "default"
        try:
            if not kubeconfig and in_cluster:
                kubernetes.config.load_incluster_config()
                client = kubernetes.client.ApiClient()
            else:
                raise kubernetes.config.ConfigException("use a kubeconfig")
        except kubernetes.config.ConfigException:
            client = kubernetes.config.new_client_from_config(config_file=kubeconfig,
                                                              context=context)
            contexts, active = kubernetes.config.list_kube_config_contexts(
                config_file=kubeconfig)
            if context is not None:
                active = next((c for c in contexts if c.get("name") == context), active)
            self.default_namespace = (active or {}).get("context", {}).get(
                "namespace") or "default"
        if not client.configuration.verify_ssl:
            # The kubeconfig asked for it (insecure-skip-tls-verify); say so once, in
            # the log of start-up, not in a warning on every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._objects = kubernetes.client.CustomObjectsApi(client)
        self._core = kubernetes.client.CoreV1Api(client)
        self.api_client = client  # for the other adapters on the same connection (leases)

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> str:
        """A merge patch of the status; the object's resourceVersion after it."""
        with _translated(f"patch status of {plural} {namespace}/{name}"):
            patched = self._objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status})
        meta = cast(dict[str, Any], patched or {}).get("metadata") or {}
        return str(meta.get("resourceVersion", ""))

    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        """A merge patch of the status that applies only to the object at
        ``resource_version`` (ConflictError otherwise); the object after it."""
        with _translated(f"patch status of {plural} {namespace}/{name}"):
            patched = self._objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name,
                {"metadata": {"resourceVersion": resource_version}, "status": status})
        return cast(dict[str, Any], patched)

    def patch_cluster(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of a cluster-scoped object (a GpuNode's labels or spec)."""
        with _translated(f"patch {plural} {name}"):
            self._objects.patch_cluster_custom_object(GROUP, VERSION, plural, name, patch)

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                   component: str, now: str) -> None:
        """A core/v1 Event about ``involved`` (a gpudock object's body)."""
        meta = involved.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        event = {"metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
                 "involvedObject": {"apiVersion": involved.get("apiVersion"),
                                    "kind": involved.get("kind"), "name": meta.get("name"),
                                    "namespace": namespace, "uid": meta.get("uid")},
                 "type": type_, "reason": reason, "message": message[:1024],
                 "source": {"component": component}, "reportingComponent": component,
                 "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        with _translated(f"post event on {namespace}/{meta.get('name')}"):
            self._core.create_namespaced_event(namespace, cast(Any, event))

    def patch_spec(self, plural: str, namespace: str, name: str,
                   spec: dict[str, Any]) -> None:
        """A JSON merge patch of the spec (lists are replaced, None removes a field)."""
        with _translated(f"patch spec of {plural} {namespace}/{name}"):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, {"spec": spec})

    def list_objects(self, plural: str,
                     namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every object of a namespaced kind, in ``namespaces`` (empty: all)."""
        if not namespaces:
            return self.list_cluster(plural)  # the same call serves a namespaced kind
        found: list[dict[str, Any]] = []
        with _translated(f"list {plural}"):
            for namespace in namespaces:
                reply = self._objects.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural)
                found += cast(dict[str, Any], reply).get("items") or []
        return found

    def list_cluster(self, plural: str) -> list[dict[str, Any]]:
        """Every object of a cluster-scoped kind (GpuNodes)."""
        with _translated(f"list {plural}"):
            reply = self._objects.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(cast(dict[str, Any], reply).get("items") or [])

    def get_cluster(self, plural: str, name: str) -> dict[str, Any]:
        """A cluster-scoped object (GpuNode); ObjectNotFoundError when absent."""
        with _translated(f"get {plural} {name}"):
            body = self._objects.get_cluster_custom_object(GROUP, VERSION, plural, name)
        return cast(dict[str, Any], body)

    def write_cluster_status(self, plural: str, kind: str, name: str,
                             status: dict[str, Any],
                             labels: Mapping[str, str] | None = None) -> None:
        """Create the cluster-scoped object if it is missing, then patch its status;
        ``labels`` are set when they differ (other labels are left as they are)."""
        try:
            found = self.get_cluster(plural, name)
            have = (found.get("metadata") or {}).get("labels") or {}
            if labels and any(have.get(k) != v for k, v in labels.items()):
                self.patch_cluster(plural, name, {"metadata": {"labels": dict(labels)}})
        except ObjectNotFoundError:
            created = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                       "metadata": {"name": name, "labels": dict(labels or {})}, "spec": {}}
            # A conflict (another writer made it meanwhile) is fine.
            with contextlib.suppress(KubeUnavailableError), _translated(f"create {name}"):
                self._objects.create_cluster_custom_object(GROUP, VERSION, plural, created)
        with _translated(f"patch status of {plural} {name}"):
            self._objects.patch_cluster_custom_object_status(
                GROUP, VERSION, plural, name, {"status": status})

    def delete(self, plural: str, namespace: str, name: str) -> None:
        """Delete an object; already gone is fine."""
        with contextlib.suppress(ObjectNotFoundError), _translated(
                f"delete {plural} {namespace}/{name}"):
            self._objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                          name)

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with _translated(f"create {plural} in {namespace}"):
            created = self._objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body)
        return cast(dict[str, Any], created)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        with _translated(f"get {plural} {namespace}/{name}"):
            body = self._objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name)
        return cast(dict[str, Any], body)

    def remove_finalizer(self, plural: str, namespace: str, name: str,
                         finalizer: str) -> None:
        """Remove one finalizer (fine when it is not there); a concurrent change of the
        list is a conflict, retried later."""
        body = self.get(plural, namespace, name)
        meta = body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        if finalizer not in finalizers:
            return
        finalizers.remove(finalizer)
        with _translated(f"remove finalizer {finalizer} of {plural} {namespace}/{name}"):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, {"metadata": {
                    "finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}})

    def set_finalizers(self, plural: str, namespace: str, name: str,
                       finalizers: list[str], resource_version: str) -> None:
        """The object's finalizers, at ``resource_version`` (ConflictError otherwise)."""
        with _translated(f"set finalizers of {plural} {namespace}/{name}"):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, {"metadata": {
                    "finalizers": finalizers, "resourceVersion": resource_version}})
