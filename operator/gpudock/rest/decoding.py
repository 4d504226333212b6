"""Bodies read as gin's ShouldBindJSON reads them into the Go service's structs.

Whatever the Content-Type, the body's first JSON value is decoded (anything after it
is ignored, as Go's json.Decoder does); object keys match a field exactly or else
case-insensitively (``ImageName`` fills ``imageName``), the last one wins; unknown keys
are ignored; ``null`` leaves the zero value; a wrong type, a number that is no int64,
text that is no JSON or an empty body is an error (code 1000). The same schemas give
the OpenAPI document its request bodies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpudock.errors import SpecError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class BodyError(SpecError):
    """The body cannot be decoded into the endpoint's struct."""


@dataclass(frozen=True)
class Kind:
    """One Go type: "string", "int", "list" (of ``item``), "struct" (``fields``),
    "pointer" (a struct pointer: None when absent or null)."""

    name: str
    item: Kind | None = None
    fields: Mapping[str, Kind] | None = None

    def zero(self) -> Any:
        return {"string": "", "int": 0, "list": [], "pointer": None}.get(self.name) \
            if self.name != "struct" else {k: f.zero() for k, f in (self.fields or {}).items()}

    def decode(self, value: Any, where: str) -> Any:
        if value is None:
            return self.zero()
        if self.name == "string":
            if not isinstance(value, str):
                raise BodyError(f"{where}: cannot unmarshal {type(value).__name__} into string")
            return value
        if self.name == "int":
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not INT64_MIN <= value <= INT64_MAX:
                raise BodyError(f"{where}: cannot unmarshal {value!r} into int")
            return value
        if self.name == "list":
            if not isinstance(value, list):
                raise BodyError(f"{where}: cannot unmarshal {type(value).__name__} into slice")
            assert self.item is not None
            return [self.item.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            raise BodyError(f"{where}: cannot unmarshal {type(value).__name__} into struct")
        fields = self.fields or {}
        result = {k: f.zero() for k, f in fields.items()}
        folded = {k.lower(): k for k in fields}
        for key, item in value.items():
            name = key if key in fields else folded.get(key.lower())
            if name is not None:
                result[name] = fields[name].decode(item, f"{where}.{name}")
        return result

    def schema(self) -> dict[str, Any]:
        """This type as an OpenAPI schema."""
        if self.name == "string":
            return {"type": "string"}
        if self.name == "int":
            return {"type": "integer", "format": "int64"}
        if self.name == "list":
            assert self.item is not None
            return {"type": "array", "items": self.item.schema()}
        return {"type": "object",
                "properties": {k: f.schema() for k, f in (self.fields or {}).items()}}


STRING, INT = Kind("string"), Kind("int")
STRINGS = Kind("list", item=STRING)


def struct(**fields: Kind) -> Kind:
    return Kind("struct", fields=fields)


def pointer(**fields: Kind) -> Kind:
    return Kind("pointer", fields=fields)


def decode_body(raw: bytes, kind: Kind) -> dict[str, Any]:
    """``raw`` decoded into ``kind`` (a struct); raises BodyError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("the body is not UTF-8") from exc
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise BodyError("EOF")
    try:
        value, _ = json.JSONDecoder(parse_constant=_no_constant).raw_decode(stripped)
    except json.JSONDecodeError as exc:
        raise BodyError(str(exc)) from exc
    except RecursionError as exc:  # Go's decoder refuses past 10000 levels too
        raise BodyError("the body nests too deep") from exc
    decoded = kind.decode(value, "body")
    assert isinstance(decoded, dict)
    return decoded



def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is no JSON value")
