"""The node's Docker engine, through the Docker SDK; docker errors become gpudock's."""

from __future__ import annotations

import docker
import docker.errors
import requests.exceptions

from gpudock.errors import TransientError


class DockerUnavailableError(TransientError):
    """The Docker engine did not answer."""


class DockerRuntime:
    def __init__(self, docker_host: str | None = None, timeout: float = 60) -> None:
        self._docker_host = docker_host
        self._timeout = timeout
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                if self._docker_host:
                    self._client = docker.DockerClient(base_url=self._docker_host,
                                                       timeout=int(self._timeout))
                else:
                    self._client = docker.from_env(timeout=int(self._timeout))
            except docker.errors.DockerException as exc:
                raise DockerUnavailableError(f"cannot reach Docker: {exc}") from exc
        return self._client

    def version(self) -> str:
        """The engine's version; raises DockerUnavailableError if it is unreachable."""
        try:
            return str(self.client.version()["Version"])
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailableError(f"cannot reach Docker: {exc}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
