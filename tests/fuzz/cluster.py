"""A small client of the local stack's API server for the fuzz: create one object and
keep the API server's answer (status code and message), list, delete by label.

Plain HTTPS with the admin token, so a refusal comes back exactly as the API server
wrote it, and nothing is validated or reshaped on the client's side."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.stack.localstack import ADMIN_TOKEN, LocalStack

GROUP_VERSION = "gpudock.dev/v1alpha1"
FUZZ_LABEL = "gpudock.dev/fuzz"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the parsed JSON, or the raw text

    @property
    def message(self) -> str:
        return str(self.body.get("message") or "") if isinstance(self.body, dict) \
            else str(self.body)


class Cluster:
    def __init__(self, stack: LocalStack, namespace: str) -> None:
        self.server = f"https://127.0.0.1:{stack.apiserver_port}"
        self.namespace = namespace
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def path(self, plural: str, namespaced: bool, name: str = "") -> str:
        where = f"/namespaces/{self.namespace}" if namespaced else ""
        return f"/apis/{GROUP_VERSION}{where}/{plural}" + (f"/{name}" if name else "")

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", timeout: float = 60) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.server + path, data=data, method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": content_type,
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._tls) as got:
                status, raw = got.status, got.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return Answer(status, json.loads(raw))
        except ValueError:
            return Answer(status, raw.decode(errors="replace"))

    def create(self, plural: str, namespaced: bool, body: dict[str, Any]) -> Answer:
        return self.request("POST", self.path(plural, namespaced), body)

    def listed(self, plural: str, namespaced: bool, selector: str = FUZZ_LABEL,
               ) -> list[dict[str, Any]]:
        answer = self.request("GET", self.path(plural, namespaced)
                              + f"?labelSelector={selector}")
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise RuntimeError(f"list {plural}: {answer.status} {answer.message}")
        return list(answer.body.get("items") or ())

    def delete_labelled(self, plural: str, namespaced: bool,
                        selector: str = FUZZ_LABEL) -> None:
        answer = self.request("DELETE", self.path(plural, namespaced)
                              + f"?labelSelector={selector}")
        if answer.status != 200:
            raise RuntimeError(f"delete {plural}: {answer.status} {answer.message}")
