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
