"""`gpudock api` as a real child process (uvicorn) against a LocalStack, and a small
HTTP client for it (the raw bytes, headers and envelope of each answer)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.stack.localstack import NODE_NAME, LocalStack
from tests.stack.processes import ManagedProcess, free_port


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    raw: bytes
    body: Any = field(default=None)

    @property
    def code(self) -> int:
        return int(self.body["code"])

    @property
    def data(self) -> Any:
        return self.body["data"]

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-gpudock-reason")


class ApiProcess:
    def __init__(self, stack: LocalStack, namespace: str, *, kubeconfig: Path | None = None,
                 auth: str = "none", extra_args: Sequence[str] = (),
                 name: str = "api") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "gpudock", "api", "--listen",
                     f"127.0.0.1:{self.port}", "--kubeconfig",
                     str(kubeconfig or stack.kubeconfig), "--namespace", namespace,
                     "--node", NODE_NAME, "--auth", auth, "--wait-seconds", "90", *extra_args]
        self.log_path = stack.base_dir / "logs" / f"{name}-{namespace}.log"
        self.process: ManagedProcess | None = None

    def start(self) -> ApiProcess:
        self.process = ManagedProcess("gpudock-api", self.argv, self.log_path)
        self.process.wait_until(self._pings, 60, "/ping")
        return self

    def _pings(self) -> bool:
        try:
            return self.request("GET", "/ping").status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = 120) -> Answer:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload, status, got = response.read(), response.status, response.headers
        except urllib.error.HTTPError as exc:
            payload, status, got = exc.read(), exc.code, exc.headers
        parsed = None
        if got.get("content-type", "").startswith("application/json"):
            parsed = json.loads(payload)
        return Answer(status, {k.lower(): v for k, v in got.items()}, payload, parsed)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
        """An /api/v1 call: always HTTP 200 with exactly code, msg, data."""
        answer = self.request(method, "/api/v1" + path, body, **kwargs)
        assert answer.status == 200, (answer.status, answer.raw)
        assert set(answer.body) == {"code", "msg", "data"}, answer.raw
        return answer


def service_account_token(stack: LocalStack, namespace: str, name: str, *,
                          audience: str | None = None) -> str:
    """A TokenRequest's token for ServiceAccount ``name`` (made if missing)."""
    stack.kubectl("create", "serviceaccount", name, "-n", namespace, check=False)
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if audience:
        spec["audiences"] = [audience]
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": spec}
    reply = stack.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        "-f", "-", input=json.dumps(request))
    return str(json.loads(reply.stdout)["status"]["token"])


def api_service_kubeconfig(stack: LocalStack, namespace: str) -> Path:
    """A kubeconfig of a ServiceAccount with exactly the chart's ClusterRole of the API
    (rendered with api.enabled), so the tests prove those rules are enough."""
    from tests.stack import helm_chart

    rendered = helm_chart.render({"api": {"enabled": True}})
    role = next(o for o in helm_chart.objects(rendered)
                if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-api"))
    stack.kubectl("apply", "-f", "-", input=json.dumps(role))
    stack.kubectl("create", "clusterrolebinding", f"gpudock-api-{namespace}",
                  f"--clusterrole={role['metadata']['name']}",
                  f"--serviceaccount={namespace}:gpudock-api", check=False)
    token = service_account_token(stack, namespace, "gpudock-api")
    config = json.loads(stack.kubeconfig.read_text())
    config["users"] = [{"name": "api", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "api"
    path = stack.base_dir / f"api-kubeconfig-{namespace}"
    path.write_text(json.dumps(config))
    return path
