"""Pure rules of image pulls (docs/fleet.md, "Image pulls"): which registry an image
reference names, which credentials of a dockerconfigjson Secret go to it, the key a
pull is recorded under (never the credentials themselves), the kubelet's backoff, and
the progress of a pull counted from Docker's stream of pull messages."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpudock.api.gpu_replica_set import ImagePullProgress

DOCKER_HUB = "docker.io"
# Recorded for a pull made without credentials: the image is public, anyone may run it.
ANONYMOUS = "anonymous"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
SECRET_KEY = ".dockerconfigjson"
# The kubelet's image pull backoff: 10 s, doubling, at most 300 s.
BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0
PROGRESS_EVERY = 2.0  # status.imagePull is written at most this often


def registry_of(image: str) -> str:
    """The registry host of an image reference, as Docker reads it: the first path
    component when it has a dot, a colon or is ``localhost``; else Docker Hub."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def _host_of(key: str) -> str:
    """A dockerconfigjson ``auths`` key (a host, or a URL such as
    ``https://index.docker.io/v1/``) as a registry host."""
    host = key.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def credentials_for(secret_data: Mapping[str, str], registry: str) -> dict[str, str] | None:
    """The username and password (Docker's auth config) a dockerconfigjson Secret's
    ``data`` holds for ``registry``; None when it holds none or cannot be read."""
    try:
        config = json.loads(base64.b64decode(secret_data.get(SECRET_KEY, "")))
        auths = config.get("auths") or {}
    except (ValueError, binascii.Error, AttributeError):
        return None
    if not isinstance(auths, Mapping):
        return None
    for key, entry in auths.items():
        if _host_of(str(key)) != registry or not isinstance(entry, Mapping):
            continue
        username, password = entry.get("username"), entry.get("password")
        if (not username or not password) and entry.get("auth"):
            try:
                username, _, password = base64.b64decode(
                    str(entry["auth"])).decode().partition(":")
            except (ValueError, binascii.Error):
                continue
        if username and password:
            return {"username": str(username), "password": str(password),
                    "serveraddress": str(key)}
    return None


def credential_key(namespace: str, secret_name: str, secret_uid: str) -> str:
    """What a pull with a Secret's credentials is recorded under: a hash of the
    Secret's identity (namespace, name, UID), never of its contents."""
    identity = f"{namespace}\0{secret_name}\0{secret_uid}".encode()
    return "sha256:" + hashlib.sha256(identity).hexdigest()


def backoff_delay(failures: int) -> float:
    """The wait before the next try after ``failures`` failed ones in a row."""
    return float(min(BACKOFF_FIRST * 2 ** max(failures - 1, 0), BACKOFF_MAX))


@dataclass
class _Layer:
    done: int = 0
    total: int = 0
    complete: bool = False


@dataclass
class PullTally:
    """The progress of one pull, from Docker's pull messages (``status``, ``id``,
    ``progressDetail``), one at a time."""

    image: str
    layers: dict[str, _Layer] = field(default_factory=dict)

    def add(self, message: Mapping[str, Any]) -> None:
        layer_id, what = message.get("id"), str(message.get("status") or "")
        if not layer_id or not what or what.startswith("Pulling from"):
            return
        layer = self.layers.setdefault(str(layer_id), _Layer())
        detail = message.get("progressDetail") or {}
        if what == "Downloading" and isinstance(detail, Mapping):
            layer.total = int(detail.get("total") or layer.total)
            layer.done = min(int(detail.get("current") or 0), layer.total or 1 << 62)
        elif what in ("Download complete", "Verifying Checksum", "Extracting"):
            layer.done = layer.total
        elif what in ("Pull complete", "Already exists"):
            layer.done, layer.complete = layer.total, True

    def progress(self) -> ImagePullProgress:
        layers = self.layers.values()
        return ImagePullProgress(
            image=self.image, layers_done=sum(1 for layer in layers if layer.complete),
            layers_total=len(self.layers), bytes_done=sum(layer.done for layer in layers),
            bytes_total=sum(layer.total for layer in layers))
