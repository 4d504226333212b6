"""Runs gitops/argocd/health.lua as Argo CD does (Lua 5.1, the resource as ``obj``),
with Debian's lua5.1 (tests/stack/install-prereqs.sh)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "gitops" / "argocd" / "health.lua"


def lua_value(value: Any) -> str:
    """A JSON value as a Lua literal (null: nil, so the key is absent as in Argo CD)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string literal
    if isinstance(value, list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    items = (f"[{json.dumps(str(k))}] = {lua_value(v)}" for k, v in value.items()
             if v is not None)
    return "{" + ", ".join(items) + "}"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) the health script gives ``obj``."""
    program = (f"obj = {lua_value(obj)}\nlocal function check()\n{SCRIPT.read_text()}\nend\n"
               "local hs = check()\nio.write(hs.status, '\\n', hs.message or '')\n")
    done = subprocess.run(["lua5.1", "-"], input=program, capture_output=True, text=True,
                          check=True, timeout=30)
    status, _, message = done.stdout.partition("\n")
    return status, message
