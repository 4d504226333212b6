"""Who calls, and whether they may: a bearer token checked by a TokenReview for the
service's audience, then one SubjectAccessReview per Kubernetes action, so the
gpudock-view and gpudock-edit roles mean through the API what they mean through
kubectl. The service then acts with its own rights, within what was allowed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpudock.adapters.kube_api import KubeApi
from gpudock.api import GROUP
from gpudock.rest.codes import Code, RefusalError
from gpudock.rest.settings import ApiSettings, AuthMode

NAMESPACE_HEADER = "x-gpudock-namespace"
_SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Caller:
    username: str
    namespace: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    checked: bool = True  # False under --auth none: every action is allowed


class Gate:
    def __init__(self, settings: ApiSettings, kube: KubeApi) -> None:
        self.settings, self.kube = settings, kube

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request; RefusalError 401 when its token is missing or wrong."""
        asked = headers.get(NAMESPACE_HEADER) or self.settings.namespace
        if self.settings.auth == AuthMode.NONE:
            return Caller("system:anonymous", asked, checked=False)
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RefusalError(Code.UNAUTHORIZED, "NoToken", "no bearer token")
        try:
            status = self.kube.review_token(token.strip(), self.settings.audience)
        except Exception as exc:  # the API server's answer decides; none: nobody passes
            raise RefusalError(Code.UNAUTHORIZED, "TokenReviewFailed", str(exc)) from exc
        user = status.get("user") or {}
        if not status.get("authenticated") or \
                self.settings.audience not in (status.get("audiences") or ()):
            raise RefusalError(Code.UNAUTHORIZED, "TokenRejected", str(status.get("error") or ""))
        username = str(user.get("username") or "")
        namespace = asked
        if username.startswith(_SA_PREFIX):  # a ServiceAccount acts in its own namespace
            namespace = username[len(_SA_PREFIX):].split(":", 1)[0]
        return Caller(username, namespace, tuple(user.get("groups") or ()),
                      str(user.get("uid") or ""), dict(user.get("extra") or {}))

    def allow(self, caller: Caller, verb: str, resource: str, name: str | None = None,
              *, cluster: bool = False) -> None:
        """RefusalError 403 unless ``caller`` may ``verb`` ``resource`` (of gpudock.dev)."""
        if not caller.checked:
            return
        attributes: dict[str, Any] = {"verb": verb, "group": GROUP, "resource": resource}
        if not cluster:
            attributes["namespace"] = caller.namespace
        if name:
            attributes["name"] = name
        spec = {"user": caller.username, "groups": list(caller.groups),
                "resourceAttributes": attributes,
                **({"uid": caller.uid} if caller.uid else {}),
                **({"extra": dict(caller.extra)} if caller.extra else {})}
        try:
            allowed = self.kube.review_access(spec)
        except Exception as exc:
            raise RefusalError(Code.FORBIDDEN, "AccessReviewFailed", str(exc)) from exc
        if not allowed:
            raise RefusalError(Code.FORBIDDEN, "Forbidden",
                          f"{caller.username} may not {verb} {resource}")
