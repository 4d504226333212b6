"""A watch of one kind of gpudock object in one namespace, for the benchmarks: every
status seen, with when, read by one long request to the API server.

A benchmark that waits for a status this way costs the machine nothing while it
waits; one that polls (``kubectl get`` every 50 ms starts a Go program 20 times a
second) takes CPU from what it measures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import urllib3
import urllib3.exceptions

from tests.stack.localstack import LocalStack

GROUP, VERSION = "gpudock.dev", "v1alpha1"
Status = dict[str, Any]


class Watch:
    """Every status of the namespace's objects of kind ``plural``, with the
    wall-clock time it was seen (comparable with Docker's event times here)."""

    def __init__(self, stack: LocalStack, namespace: str, plural: str) -> None:
        self.events: list[tuple[float, str, Status]] = []  # time, name, status
        self.deleted: list[tuple[float, str]] = []           # time, name
        self._error: BaseException | None = None             # what ended the reader
        # The stack's API server has a self-signed certificate, on loopback.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(stack.kubeconfig))
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.namespace = namespace
        self._plural = plural
        self._seen = threading.Condition()
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
            self._plural, timeout_seconds=3600)
        try:
            for event in stream:
                body = event["object"]
                with self._seen:
                    if event["type"] == "DELETED":  # (its last status, not a new one)
                        self.deleted.append((time.time(), body["metadata"]["name"]))
                    else:
                        self.events.append((time.time(), body["metadata"]["name"],
                                            dict(body.get("status") or {})))
                    self._seen.notify_all()
        except urllib3.exceptions.HTTPError:
            pass  # stop() ends it
        except BaseException as error:  # an ERROR event, a broken stream: wait() says
            with self._seen:
                self._error = error
                self._seen.notify_all()

    def first(self, name: str, test: Callable[[Status], bool],
              after: float = 0.0) -> float | None:
        """When a status of ``name`` that passes ``test`` was first seen after
        ``after``; None when none was."""
        return next((t for t, n, s in list(self.events)
                     if n == name and t >= after and test(s)), None)

    def wait(self, name: str, test: Callable[[Status], bool], after: float,
             timeout: float) -> float:
        """Blocks (no polling) until a status of ``name`` that passes ``test`` is seen
        after ``after``; returns when it was seen. TimeoutError after ``timeout``."""
        return self._wait(lambda: self.first(name, test, after), timeout,
                          f"{self._plural}/{name}: no such status in {timeout:.0f}s")

    def wait_deleted(self, name: str, after: float, timeout: float) -> float:
        """Blocks until ``name`` is seen deleted after ``after``; returns when."""
        return self._wait(lambda: next((t for t, n in list(self.deleted)
                                        if n == name and t >= after), None), timeout,
                          f"{self._plural}/{name}: not deleted in {timeout:.0f}s")

    def _wait(self, found: Callable[[], float | None], timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        with self._seen:
            while (seen := found()) is None:
                if self._error is not None:
                    raise RuntimeError(f"the watch of {self._plural} broke") from self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(what)
                self._seen.wait(left)
        return seen

    def last(self, name: str) -> Status:
        return next((s for _, n, s in reversed(list(self.events)) if n == name), {})

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]


def ready(status: Status) -> bool:
    """The Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or ())
