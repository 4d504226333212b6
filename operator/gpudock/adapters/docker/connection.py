"""The one connection to Docker that every part of the runtime makes its calls on.

:class:`DockerConnection` holds the SDK client (made on first use, shared by the
agent's worker threads), the cache of the node's containers and images kept from
Docker's event stream (container_events.py), the commands already found in images
(command_lookup.py), and the few ways a call is made: each
translates Docker's exceptions (errors.py) and tells the cache what it changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import docker
import requests

from gpudock.adapters.command_lookup import FoundCommands
from gpudock.adapters.container_events import ContainerCache
from gpudock.adapters.docker.errors import Step, _translated
from gpudock.api.reasons import Reason
from gpudock.core.limits import NodeCapacity

T = TypeVar("T")

# Connections kept open to Docker: one per step that may run at once (many resources
# stopping or saving at the same time), so none is made and dropped per call.
CONNECTIONS = 64


class DockerConnection:
    def __init__(self, docker_host: str | None = None, timeout: float = 600,
                 stop_timeout: float = 30,
                 on_request: Callable[[str], None] | None = None) -> None:
        """``on_request`` is told the HTTP method of every request made to Docker's
        API (a metric counts them), from the thread that made it."""
        self._docker_host = docker_host
        self._on_request = on_request
        self._timeout = timeout
        self._stop_timeout = stop_timeout
        self._client: docker.DockerClient | None = None
        self._connecting = threading.Lock()
        self._containers = ContainerCache(self._container_events)
        self._found_commands = FoundCommands()
        self._capacity: NodeCapacity | None = None  # the engine's CPUs and memory

    def _container_events(self) -> Iterable[dict[str, Any]]:
        stream: Iterable[dict[str, Any]] = self.client.api.events(
            decode=True, filters={"type": ["container", "image"]})
        return stream

    @property
    def client(self) -> docker.DockerClient:
        with self._connecting:  # one client, shared by the agent's worker threads
            if self._client is None:
                with _translated("connect"):
                    self._client = (
                        docker.DockerClient(base_url=self._docker_host,
                                            timeout=int(self._timeout),
                                            max_pool_size=CONNECTIONS)
                        if self._docker_host else
                        docker.from_env(timeout=int(self._timeout),
                                        max_pool_size=CONNECTIONS))
                if self._on_request is not None:
                    # The API client is a requests session: its response hooks see
                    # every request it makes, the event stream's included.
                    self._client.api.hooks["response"].append(self._tell_request)
            return self._client

    def _tell_request(self, response: requests.Response, *_: Any, **__: Any) -> None:
        """A response hook (returns None: the response stays as it is)."""
        if self._on_request is not None:
            self._on_request(response.request.method or "")

    def _call(self, what: str, fn: Callable[[], T], step: Reason = Step.OTHER) -> T:
        with _translated(what, step):
            return fn()

    def _change(self, container_id: str, what: str, fn: Callable[[], T],
                step: Reason = Step.OTHER) -> T:
        """A call that changes a container: observed afresh afterwards, whatever
        came of it (its event may reach the cache after the next observation)."""
        try:
            return self._call(what, fn, step)
        finally:
            self._containers.changed(container_id)

    def _image_step(self, what: str, fn: Callable[[], T]) -> T:
        """A call that makes, tags or removes images: every remembered image answer
        is stale afterwards, whatever came of it (its event may come later)."""
        try:
            return self._call(what, fn)
        finally:
            self._containers.images_changed()

    def _inspect_image(self, image: str) -> dict[str, Any]:
        # Here rather than in images.py: a container's creation reads image configs too.
        return dict(self._call(f"inspect image {image}",
                               lambda: self.client.api.inspect_image(image)))
