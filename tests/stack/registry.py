"""A real Docker registry for the pull tests: Debian's ``docker-registry``
(github.com/docker/distribution), run with a config file of its own, on 127.0.0.1 only,
with htpasswd (bcrypt) authentication; never a mock.

Docker treats a registry on 127.0.0.0/8 as insecure by default (plain HTTP), so the
stack's dockerd pulls from it without a certificate or an ``--insecure-registry``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors

from tests.stack.processes import ManagedProcess, free_port

BINARY = "docker-registry"


def _bcrypt_line(user: str, password: str) -> str:
    """One htpasswd line (bcrypt, which is all the registry takes)."""
    try:
        import bcrypt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        return f"{user}:{hashed}"
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RuntimeError("neither python bcrypt nor htpasswd (apache2-utils) is installed; "
                           "run tests/stack/install-prereqs.sh")
    # -i: the password from stdin, never on a command line another process could read.
    out = subprocess.run([htpasswd, "-niB", user], input=password, capture_output=True,
                         text=True, check=True).stdout
    return out.strip()


class Registry:
    """``with Registry(dir, {"alice": "pw"}) as registry:`` a registry at
    ``registry.host`` (127.0.0.1:PORT) whose users are those given."""

    def __init__(self, base_dir: Path, users: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.users = dict(users)
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        if shutil.which(BINARY) is None:
            raise RuntimeError(f"{BINARY} is not installed; run tests/stack/install-prereqs.sh")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        htpasswd = self.base_dir / "htpasswd"
        htpasswd.write_text("".join(_bcrypt_line(u, p) + "\n" for u, p in self.users.items()))
        self.port = free_port()
        config = self.base_dir / "config.yml"
        # JSON is YAML: the registry reads this as its config file.
        config.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "registry"}},
            "storage": {"filesystem": {"rootdirectory": str(self.base_dir / "storage")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "gpudock-test-registry"},
            "auth": {"htpasswd": {"realm": "gpudock-test", "path": str(htpasswd)}},
        }))
        self.process = ManagedProcess("docker-registry", [BINARY, "serve", str(config)],
                                      self.base_dir / "registry.log")
        try:
            self.process.wait_until(self._answers, 30, "HTTP API")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asks for credentials
        except OSError:
            return False
        return False  # answered without asking for credentials: not this config

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ using it
    def auth(self, user: str, password: str | None = None) -> dict[str, str]:
        """Docker's auth config for a user (its own password unless one is given)."""
        return {"username": user, "password": password or self.users[user],
                "serveraddress": self.host}

    def push(self, client: docker.DockerClient, source: str, repository: str, tag: str,
             user: str) -> str:
        """Push the local image ``source`` as ``HOST/repository:tag`` with ``user``'s
        credentials, then drop that local tag (the image must be pulled to be there
        under that name). Returns the reference."""
        reference = f"{self.host}/{repository}:{tag}"
        client.images.get(source).tag(f"{self.host}/{repository}", tag)
        for message in client.api.push(f"{self.host}/{repository}", tag, stream=True,
                                       decode=True, auth_config=self.auth(user)):
            if isinstance(message, dict) and message.get("error"):
                raise RuntimeError(f"push {reference}: {message['error']}")
        client.images.remove(reference)
        return reference

    def push_new(self, client: docker.DockerClient, base: str, repository: str, tag: str,
                 user: str, *, layers: int = 1, layer_bytes: int = 512 * 1024) -> str:
        """Push an image made here of ``base`` plus ``layers`` layers of random data
        (``layer_bytes`` each), then remove it from the node: a pull of it downloads
        those layers. Returns the reference."""
        image = base
        command = client.images.get(base).attrs["Config"].get("Cmd")
        made: list[str] = []
        for index in range(layers):
            box = client.containers.create(image, ["sh", "-c", (
                f"head -c {layer_bytes} /dev/urandom > /layer-{index}")])
            try:
                box.start()
                if box.wait(timeout=120).get("StatusCode") != 0:
                    raise RuntimeError(f"building a layer of {repository}: {box.logs()!r}")
                committed = box.commit(repository=f"gpudock-test/layers-{repository}",
                                       tag=f"{tag}-{index}",
                                       changes=[f"CMD {json.dumps(command)}"])
            finally:
                box.remove(force=True)
            image = str(committed.id)
            made.append(image)
        reference = self.push(client, image, repository, tag, user)
        for image_id in reversed(made):  # the new layers leave the node with their images
            client.images.remove(image_id, force=True)
        try:
            client.images.get(made[-1])
        except docker.errors.ImageNotFound:
            return reference
        raise RuntimeError(f"{made[-1]} is still on the node after its removal")

    def dockerconfigjson(self, user: str, password: str | None = None) -> dict[str, Any]:
        """The ``data`` of a kubernetes.io/dockerconfigjson Secret for a user."""
        secret = password or self.users[user]
        config = {"auths": {self.host: {
            "username": user, "password": secret,
            "auth": base64.b64encode(f"{user}:{secret}".encode()).decode()}}}
        return {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}
