"""The labels gpudock puts on every Docker object it owns, and the names it gives them.

Docker's limits are narrower than Kubernetes': an image reference is at most 255
characters and a hostname at most 63. Every name here is derived so that the longest
namespace (63) and name (253) the API server admits still fit; the human names stay in
the labels.
"""

from __future__ import annotations

import hashlib

PREFIX = "gpudock.dev/"
NAMESPACE = PREFIX + "namespace"
NAME = PREFIX + "name"
KIND = PREFIX + "kind"
REVISION = PREFIX + "revision"
UID = PREFIX + "uid"
NODE = PREFIX + "node"  # the node whose agent owns the object
GPUS = PREFIX + "gpus"  # comma-separated UUIDs; "" for none
# Its fixed address on the instance network (IPv4; absent: not on it). Every container
# of an instance, stopped ones too, keeps that address reserved for the instance.
ADDRESS = PREFIX + "address"
SPEC_HASH = PREFIX + "spec-hash"  # which spec the container was made for
IMAGE = PREFIX + "image"  # the spec's image the container's disk descends from
VOLUME_PATH = PREFIX + "volume-path"  # on an image VOLUME's Docker volume: its path

# "gpudock-preserved/" (18) + base + ":rev-NNNNNNNNNN" (14) must stay within 255.
MAX_BASE_LENGTH = 200
MAX_HOSTNAME_LENGTH = 63


def _digest(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def base_name(namespace: str, name: str) -> str:
    """``<namespace>_<name>``: ``_`` never occurs in Kubernetes names, so two namespaces
    never collide. Past :data:`MAX_BASE_LENGTH` the name is cut and a digest of the
    full pair appended, so it stays unique and fits Docker's reference limit."""
    full = f"{namespace}_{name}"
    if len(full) <= MAX_BASE_LENGTH:
        return full
    cut = full[:MAX_BASE_LENGTH - 11].rstrip("-.")
    return f"{cut}-{_digest(full)}"


def object_name(namespace: str, name: str, revision: int) -> str:
    """``<namespace>_<name>-<revision>`` (see :func:`base_name` for long names)."""
    return f"{base_name(namespace, name)}-{revision}"


def hostname(name: str) -> str:
    """The container's hostname: the resource's name, the same in every revision; a
    name longer than a hostname may be is cut and given a digest."""
    if len(name) <= MAX_HOSTNAME_LENGTH:
        return name
    return f"{name[:MAX_HOSTNAME_LENGTH - 11].rstrip('-.')}-{_digest(name)}"


def volume_name(namespace: str, name: str, uid: str, path: str) -> str:
    """The Docker volume that holds an image VOLUME at ``path`` for this resource in
    every revision (Docker would otherwise make a new anonymous one each time). The
    UID is part of it: a later resource of the same name never gets these files."""
    return f"{base_name(namespace, name)}-vol-{_digest(uid + ':' + path, 12)}"
