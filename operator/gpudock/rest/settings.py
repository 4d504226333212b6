"""The settings of `gpudock api`: one frozen object from its flags (or GPUDOCK_API_*
variables; a flag wins)."""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "GPUDOCK_API_"


class AuthMode(enum.StrEnum):
    KUBERNETES = "kubernetes"
    NONE = "none"


@dataclass(frozen=True)
class ApiSettings:
    host: str = "0.0.0.0"
    port: int = 2378
    namespace: str = "default"
    node: str | None = None
    auth: AuthMode = AuthMode.KUBERNETES
    audience: str = "gpudock-api"
    wait_seconds: float = 300.0
    kubeconfig: str | None = None
    commit_repository_template: str = "gpudock.invalid/{namespace}/"


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    def env(name: str, default: str | None) -> str | None:
        return os.environ.get(ENV_PREFIX + name, default)

    parser.add_argument("--listen", default=env("LISTEN", "0.0.0.0:2378"),
                        help="HOST:PORT to serve on (default 0.0.0.0:2378)")
    parser.add_argument("--namespace", default=env("NAMESPACE", "default"),
                        help="namespace of callers that are not ServiceAccounts (a caller "
                             "may name another with the X-Gpudock-Namespace header)")
    parser.add_argument("--node", default=env("NODE", None),
                        help="the node new objects are pinned to (a request's ?node= wins)")
    parser.add_argument("--auth", choices=[str(m) for m in AuthMode],
                        default=env("AUTH", "kubernetes"),
                        help="kubernetes: bearer tokens checked by TokenReview and every "
                             "action by SubjectAccessReview; none: anyone reaching the port "
                             "acts with the service's own rights (trusted networks only)")
    parser.add_argument("--audience", default=env("AUDIENCE", "gpudock-api"),
                        help="the audience callers' tokens must be issued for")
    parser.add_argument("--wait-seconds", type=float, default=float(env("WAIT_SECONDS", "300")
                                                                    or 300),
                        help="how long a call waits for its change to be done (default 300)")
    parser.add_argument("--kubeconfig", default=env("KUBECONFIG", None),
                        help="kubeconfig of the service (default: in-cluster)")
    parser.add_argument("--commit-repository-template",
                        default=env("COMMIT_REPOSITORY_TEMPLATE", "gpudock.invalid/{namespace}/"),
                        help="the agents' --commit-repository-template: where a commit's "
                             "image goes")


def api_settings_from(args: argparse.Namespace,
                      environ: Mapping[str, str] | None = None) -> ApiSettings:
    host, _, port = str(args.listen).rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {args.listen!r} must be HOST:PORT")
    if args.wait_seconds <= 0:
        raise ValueError("--wait-seconds must be above 0")
    return ApiSettings(host=host or "0.0.0.0", port=int(port), namespace=args.namespace,
                       node=args.node or None, auth=AuthMode(args.auth),
                       audience=args.audience, wait_seconds=float(args.wait_seconds),
                       kubeconfig=args.kubeconfig,
                       commit_repository_template=args.commit_repository_template)
