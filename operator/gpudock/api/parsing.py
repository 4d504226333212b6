"""Small typed readers for raw Kubernetes dicts; each failure is a SpecError."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gpudock.errors import SpecError

RawDict = Mapping[str, Any]

# A DNS-1123 subdomain, as Kubernetes node and object names are.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_SUBDOMAIN_RE = re.compile(DNS_SUBDOMAIN_PATTERN)


def is_object_name(name: str) -> bool:
    """A name a namespaced gpudock object can have (a DNS-1123 subdomain): no ``/``,
    no upper case, at most 253 characters."""
    return len(name) <= 253 and _DNS_SUBDOMAIN_RE.match(name) is not None


def get_object_name(raw: RawDict, key: str, where: str) -> str:
    """A field that names another object (``replicaSetName``); SpecError otherwise."""
    name = get_str(raw, key, where)
    if not is_object_name(name):
        raise SpecError(f"{where}.{key} {name!r} is not a Kubernetes object name (lower-case "
                        "letters, digits, '-' and '.', at most 253 characters)")
    return name


def get_node_name(raw: RawDict) -> str:
    """spec.nodeName, or "" when the resource leaves its node to the scheduler."""
    node_name = raw.get("nodeName")
    if node_name is None or node_name == "":
        return ""
    if not isinstance(node_name, str) or not _DNS_SUBDOMAIN_RE.match(node_name) or \
            len(node_name) > 253:
        raise SpecError(f"spec.nodeName {node_name!r} is not a valid node name")
    return node_name


def get_str(raw: RawDict, key: str, where: str, *, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and value == ""):
        raise SpecError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def get_optional_str(raw: RawDict, key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value == "":
        raise SpecError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def get_int(
    raw: RawDict, key: str, where: str, *, default: int | None = None,
    minimum: int | None = None, maximum: int | None = None,
) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{where}.{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{where}.{key} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SpecError(f"{where}.{key} must be <= {maximum}, got {value}")
    return value


def get_bool(raw: RawDict, key: str, where: str, *, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def get_list(raw: RawDict, key: str, where: str, *,
             max_items: int | None = None) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{where}.{key} must be a list, got {value!r}")
    if max_items is not None and len(value) > max_items:
        raise SpecError(f"{where}.{key} has {len(value)} entries; at most {max_items} "
                        "are allowed")
    return value


def as_dict(value: Any, where: str) -> RawDict:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be an object, got {value!r}")
    return value


def get_choice(raw: RawDict, key: str, where: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise SpecError(f"{where}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)
