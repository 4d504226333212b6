"""The few Kubernetes API calls the reconcilers make besides kopf's own: status
patches, reading a SizedVolume. Errors become gpudock's tiers."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, cast

import kubernetes
import kubernetes.client
import kubernetes.config
import urllib3
import urllib3.exceptions
import yaml

from gpudock.api import GROUP, VERSION
from gpudock.api.reasons import Reason
from gpudock.errors import NotFoundError, SpecError, TransientError


class KubeUnavailableError(TransientError):
    """The API server did not answer or is busy."""

    reason = Reason.API_SERVER_UNAVAILABLE


class ObjectNotFoundError(NotFoundError):
    """The Kubernetes object does not exist (or no longer does)."""


class ObjectInvalidError(SpecError):
    """The API server refused the object as written (422, its schema): its message."""


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
def translated(what: str) -> Iterator[None]:
    """The Kubernetes client's errors as gpudock's tiers (also for kube_leases)."""
    try:
        yield
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            raise ObjectNotFoundError(what) from exc
        if exc.status == 409:
            raise ConflictError(f"{what}: changed meanwhile", delay=0.5) from exc
        if exc.status == 422:
            raise ObjectInvalidError(f"{what}: {_message(exc)}") from exc
        if exc.status == 429 or (exc.status or 0) >= 500:
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


def _message(exc: kubernetes.client.ApiException) -> str:
    """The API server's own words (its Status' message), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason)


class KubeApi:
    def __init__(self, kubeconfig: str | None, *, in_cluster: bool = True,
                 context: str | None = None, connections: int | None = None) -> None:
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
        if connections is not None:
            # Many calls at once (the REST service's threads): as many kept connections,
            # not a new TLS handshake for each call past the default pool of 4.
            client.configuration.connection_pool_maxsize = connections
            client.rest_client = kubernetes.client.rest.RESTClientObject(client.configuration)
        if not client.configuration.verify_ssl:
            # The kubeconfig asked for it (insecure-skip-tls-verify); say so once, in
            # the log of start-up, not in a warning on every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.client = client
        self._objects = kubernetes.client.CustomObjectsApi(client)
        self._core = kubernetes.client.CoreV1Api(client)
        self.api_client = client  # for the other adapters on the same connection (leases)

    def bearer_token(self) -> str | None:
        """The kubeconfig's bearer token (the caller's identity for the agent's
        streams); None when it authenticates otherwise (a client certificate)."""
        keys = self.client.configuration.api_key or {}
        value = keys.get("BearerToken") or keys.get("authorization")
        return str(value).removeprefix("Bearer ").strip() if value else None

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> str:
        """A merge patch of the status; the object's resourceVersion after it."""
        with translated(f"patch status of {plural} {namespace}/{name}"):
            patched = self._objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status})
        meta = cast(dict[str, Any], patched or {}).get("metadata") or {}
        return str(meta.get("resourceVersion", ""))

    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        """A merge patch of the status that applies only to the object at
        ``resource_version`` (ConflictError otherwise); the object after it."""
        with translated(f"patch status of {plural} {namespace}/{name}"):
            patched = self._objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name,
                {"metadata": {"resourceVersion": resource_version}, "status": status})
        return cast(dict[str, Any], patched)

    def patch_cluster(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of a cluster-scoped object (a GpuNode's labels or spec)."""
        with translated(f"patch {plural} {name}"):
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
        with translated(f"post event on {namespace}/{meta.get('name')}"):
            self._core.create_namespaced_event(namespace, cast(Any, event))
    def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        """A Secret's ``type``, ``uid`` and ``data`` (base64 values, as the API gives
        them); ObjectNotFoundError when absent. Only ``get`` (no list or watch)."""
        with translated(f"get secret {namespace}/{name}"):
            secret = self._core.read_namespaced_secret(name, namespace)
        meta = secret.metadata
        return {"type": str(secret.type or ""), "uid": str(meta.uid if meta else ""),
                "data": dict(secret.data or {})}

    def patch_spec(self, plural: str, namespace: str, name: str,
                   spec: dict[str, Any]) -> None:
        """A JSON merge patch of the spec (lists are replaced, None removes a field)."""
        with translated(f"patch spec of {plural} {namespace}/{name}"):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, {"spec": spec})

    def list_objects(self, plural: str,
                     namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every object of a namespaced kind, in ``namespaces`` (empty: all)."""
        if not namespaces:
            return self.list_cluster(plural)  # the same call serves a namespaced kind
        found: list[dict[str, Any]] = []
        with translated(f"list {plural}"):
            for namespace in namespaces:
                reply = self._objects.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural)
                found += cast(dict[str, Any], reply).get("items") or []
        return found

    def list_cluster(self, plural: str) -> list[dict[str, Any]]:
        """Every object of a cluster-scoped kind (GpuNodes)."""
        with translated(f"list {plural}"):
            reply = self._objects.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(cast(dict[str, Any], reply).get("items") or [])

    def get_cluster(self, plural: str, name: str) -> dict[str, Any]:
        """A cluster-scoped object (GpuNode); ObjectNotFoundError when absent."""
        with translated(f"get {plural} {name}"):
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
            with contextlib.suppress(KubeUnavailableError), translated(f"create {name}"):
                self._objects.create_cluster_custom_object(GROUP, VERSION, plural, created)
        with translated(f"patch status of {plural} {name}"):
            self._objects.patch_cluster_custom_object_status(
                GROUP, VERSION, plural, name, {"status": status})

    def delete(self, plural: str, namespace: str, name: str) -> None:
        """Delete an object; already gone is fine."""
        with contextlib.suppress(ObjectNotFoundError), translated(
                f"delete {plural} {namespace}/{name}"):
            self._objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                          name)

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with translated(f"create {plural} in {namespace}"):
            created = self._objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body)
        return cast(dict[str, Any], created)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        with translated(f"get {plural} {namespace}/{name}"):
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
        with translated(f"remove finalizer {finalizer} of {plural} {namespace}/{name}"):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, {"metadata": {
                    "finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}})

    # ---------------------------------------------------------------- the REST service
    # (gpudock api): merge patches of any part, lists by label, the apps/v1
    # ControllerRevisions that keep each revision's shape, and the reviews that
    # authenticate and authorize its callers.
    def patch(self, plural: str, namespace: str, name: str,
              body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the object (metadata and spec); the object after it."""
        with translated(f"patch {plural} {namespace}/{name}"):
            patched = self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body)
        return cast(dict[str, Any], patched)

    def set_finalizers(self, plural: str, namespace: str, name: str,
                       finalizers: list[str], resource_version: str) -> None:
        """The object's finalizers, at ``resource_version`` (ConflictError otherwise)."""
        with translated(f"set finalizers of {plural} {namespace}/{name}"):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, {"metadata": {
                    "finalizers": finalizers, "resourceVersion": resource_version}})

    def _apps(self) -> Any:
        return kubernetes.client.AppsV1Api(self._objects.api_client)

    def create_controller_revision(self, namespace: str, body: dict[str, Any]) -> None:
        with translated(f"create controllerrevision in {namespace}"):
            self._apps().create_namespaced_controller_revision(namespace, body)

    def list_controller_revisions(self, namespace: str,
                                  selector: str) -> list[dict[str, Any]]:
        with translated(f"list controllerrevisions {selector} in {namespace}"):
            reply = self._apps().list_namespaced_controller_revision(
                namespace, label_selector=selector)
        items = self._objects.api_client.sanitize_for_serialization(reply).get("items")
        return list(items or [])

    def delete_controller_revisions(self, namespace: str, selector: str) -> None:
        with translated(f"delete controllerrevisions {selector} in {namespace}"):
            self._apps().delete_collection_namespaced_controller_revision(
                namespace, label_selector=selector)

    def review_token(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """The TokenReview's status for ``token`` meant for ``audience`` (None: the
        API server's own)."""
        spec: dict[str, Any] = {"token": token}
        if audience is not None:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        with translated("create tokenreview"):
            reply = kubernetes.client.AuthenticationV1Api(
                self._objects.api_client).create_token_review(cast(Any, body))
        status = self._objects.api_client.sanitize_for_serialization(reply).get("status")
        return dict(status or {})

    def review_access(self, spec: dict[str, Any]) -> bool:
        """Whether the SubjectAccessReview of ``spec`` is allowed."""
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": spec}
        with translated("create subjectaccessreview"):
            reply = kubernetes.client.AuthorizationV1Api(
                self._objects.api_client).create_subject_access_review(cast(Any, body))
        status = self._objects.api_client.sanitize_for_serialization(reply).get("status")
        return bool((status or {}).get("allowed"))


class Reviews:
    """Who a bearer token is (TokenReview) and what they may do (SubjectAccessReview),
    asked of the API server with the agent's own credentials."""

    def __init__(self, kubeconfig: str | None) -> None:
        self._api = KubeApi(kubeconfig)

    def user_of(self, token: str) -> tuple[str, list[str], str | None] | None:
        """(user, groups, the token's expiry if the API server says) or None when the
        token is not valid."""
        status = self._api.review_token(token)
        user = status.get("user") or {}
        if not status.get("authenticated") or not user.get("username"):
            return None
        return str(user["username"]), list(user.get("groups") or ()), None

    def allowed(self, user: str, groups: list[str], verb: str, resource: str,
                subresource: str, namespace: str, name: str) -> bool:
        return self._api.review_access({
            "user": user, "groups": groups,
            "resourceAttributes": {"group": GROUP, "version": VERSION, "resource": resource,
                                   "subresource": subresource, "verb": verb,
                                   "namespace": namespace, "name": name}})


def config_problem(kubeconfig: str | None) -> str | None:
    """Why no client can be made (a kubeconfig missing, unreadable or invalid, and
    no in-cluster account); None when one can. Asked once at start: a process that
    can never reach the API server says so and stops, as for a bad flag."""
    if kubeconfig and not os.path.isfile(kubeconfig):
        return f"--kubeconfig {kubeconfig}: no such file"
    try:
        KubeApi(kubeconfig)
    except (kubernetes.config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        where = kubeconfig or "$KUBECONFIG or ~/.kube/config (and no in-cluster account)"
        return f"no usable kubeconfig at {where}: {exc}"
    return None
