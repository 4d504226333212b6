"""The labels gpudock puts on every Docker object it owns, and the names it gives them."""

from __future__ import annotations

PREFIX = "gpudock.dev/"
NAMESPACE = PREFIX + "namespace"
NAME = PREFIX + "name"
KIND = PREFIX + "kind"
REVISION = PREFIX + "revision"
UID = PREFIX + "uid"
GPUS = PREFIX + "gpus"  # comma-separated UUIDs; "" for none
SPEC_HASH = PREFIX + "spec-hash"  # which spec the container was made for
IMAGE = PREFIX + "image"  # the spec's image the container's disk descends from


def object_name(namespace: str, name: str, revision: int) -> str:
    """``<namespace>_<name>-<revision>``: ``_`` never occurs in Kubernetes names, so two
    namespaces never collide."""
    return f"{namespace}_{name}-{revision}"
