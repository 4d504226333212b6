"""Names and values as the Go service's clients see them: ``<name>-<version>``,
times as ``YYYY-MM-DD HH:MM:SS``, sizes as ``20GB``; and the Kubernetes name behind
a Go name that Kubernetes does not take (upper case, ``_``, too long)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

ORIGINAL_NAME = "gpudock.dev/rest-name"  # annotation: the name the client gave
CALLER = "gpudock.dev/rest-caller"  # annotation: who made the last change through the API
_K8S_NAME = re.compile(r"^[a-z0-9]([a-z0-9.]*[a-z0-9])?$")
_UNITS = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_SIZE = re.compile(r"^([0-9]+)(KB|MB|GB|TB)$")


def object_name(name: str) -> str:
    """The Kubernetes object of Go name ``name``: itself when Kubernetes takes it,
    else a lower-case form with a hash of the original after a dash (no Go name has
    a dash, so a derived name never meets a plain one)."""
    if len(name) <= 253 and _K8S_NAME.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    base = re.sub(r"[^a-z0-9]", "x", name.lower())[:200].strip("x") or "x"
    return f"{base}-{digest}"


def versioned(name: str, version: int | None) -> str:
    return f"{name}-{version or 0}"


def base_name(versioned_name: str) -> str:
    """``bar-2`` -> ``bar``: a bind's volume names a version, the volume is its base."""
    match = re.match(r"^(.*)-[0-9]+$", versioned_name)
    return match.group(1) if match else versioned_name


def go_time(kube_time: str | None) -> str:
    """A Kubernetes (RFC 3339) time as the Go service writes times, in UTC."""
    if not kube_time:
        return ""
    try:
        moment = datetime.fromisoformat(kube_time.replace("Z", "+00:00"))
    except ValueError:
        return kube_time
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def go_size_bytes(text: str) -> int | None:
    """Bytes of a Go size (``20GB``, any case, powers of 1024); None when its unit is
    not one of KB, MB, GB, TB or it has no number."""
    match = _SIZE.match(text.strip().upper())
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def has_go_unit(text: str) -> bool:
    return len(text) >= 2 and text[-2:].upper() in _UNITS


def go_size(size_bytes: int) -> str:
    """Bytes as the largest exact Go unit (``21474836480`` -> ``20GB``)."""
    for unit in ("TB", "GB", "MB", "KB"):
        if size_bytes % _UNITS[unit] == 0 and size_bytes >= _UNITS[unit]:
            return f"{size_bytes // _UNITS[unit]}{unit}"
    return f"{size_bytes}"
