"""Path grammar shared by the CRD schema and the Python models."""

from __future__ import annotations

import re

# An absolute path of one or more segments, none of them "." or "..", no "//".
# RE2-compatible (no look-ahead), because the API server validates with Go regexp.
ABSOLUTE_PATH_PATTERN = r"^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+/?$"
_ABSOLUTE_PATH_RE = re.compile(ABSOLUTE_PATH_PATTERN)


def is_clean_absolute_path(path: str) -> bool:
    """True for ``/a/b``; false for ``a/b``, ``/a/../b``, ``/a//b`` and ``/``."""
    return _ABSOLUTE_PATH_RE.match(path) is not None


def is_under(path: str, root: str) -> bool:
    """True when clean absolute ``path`` is ``root`` or inside it."""
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


# A hostPath root (--allowed-host-path, --read-only-host-path) may hold this
# placeholder: the root is then one per namespace, the placeholder replaced by the
# resource's namespace. A root without it is shared by every namespace.
NAMESPACE_PLACEHOLDER = "{namespace}"
# A namespace is a DNS-1123 label: no "/", no ".", so an expansion adds no level.
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def root_problem(root: str) -> str | None:
    """Why ``root`` cannot be a hostPath root (None: it can). A template's
    placeholder may not be in the first directory: ``/{namespace}`` would make a
    namespace named ``etc`` the host's /etc."""
    plain = root.replace(NAMESPACE_PLACEHOLDER, "x")
    if "{" in plain or "}" in plain:
        return f"may hold no placeholder other than {NAMESPACE_PLACEHOLDER}"
    if not is_clean_absolute_path(plain):
        return "must be a clean absolute path"
    if NAMESPACE_PLACEHOLDER in root.split("/")[1]:
        return f"may not have {NAMESPACE_PLACEHOLDER} in its first directory"
    return None


def is_per_namespace(root: str) -> bool:
    return NAMESPACE_PLACEHOLDER in root


def expand_roots(roots: tuple[str, ...], namespace: str) -> tuple[str, ...]:
    """The roots as they apply to a resource of ``namespace``: each template with the
    namespace put in; shared roots as they are. A namespace that is not a namespace
    name gets no template root at all."""
    valid = _NAMESPACE_RE.match(namespace) is not None
    return tuple(root.replace(NAMESPACE_PLACEHOLDER, namespace) for root in roots
                 if valid or not is_per_namespace(root))

