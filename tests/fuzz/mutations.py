"""Mutations of a valid spec, steered by the CRD schema: a wrong type, a boundary
value, a very long or a non-ASCII string, null, an unknown field, a value outside an
enum, an absent required field. Each returns what it did, for the counts."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator
from typing import Any

Path = tuple[str | int, ...]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # no .spec at all

# Strings that have broken parsers elsewhere: scripts, direction marks, combining
# characters, a NUL, a lone surrogate, Unicode digits and case, paths and shell.
ODD_STRINGS = [
    "ünïcødé", "日本語のテキスト", "😀🚀", "\u202eevil", "a\u0000b", "İı", "\uff11\uff12\uff13",
    "e\u0301",
    "\ud83d", " lead", "trail ", "tab\tnew\nline", "%00", "../../etc/passwd", "/proc/self",
    "${HOME}", "$(id)", "-", "", "a=b", "UPPER", "a" * 64 + "é",
]
LONG_LENGTHS = [254, 4097, 70_000, 400_000]
LONG_CHARS = ["a", "é", "😀", "-", "/", "0"]
WRONG_TYPES: dict[str, list[Any]] = {
    "integer": ["12", 1.5, True, [], {}, "1e3"],
    "string": [42, True, ["a"], {"a": "b"}, 1.5],
    "boolean": ["true", 1, "yes", [], 0],
    "array": ["x", {}, 1, [[]]],
    "object": ["x", [], 1, True],
}
BIG_INTEGERS = [0, -1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]


def walk(schema: dict[str, Any], path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every field the schema describes, parents first; an array's items at index 0."""
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], (*path, 0))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], (*path, "fuzz-key"))


def type_of(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return str(schema.get("type", "any"))


def enum_values(schema: dict[str, Any]) -> list[tuple[Path, Any]]:
    return [(path, value) for path, sub in walk(schema) for value in sub.get("enum") or ()]


def set_at(spec: Any, path: Path, value: Any, schema: dict[str, Any]) -> Any:
    """``spec`` with ``value`` at ``path``, the containers on the way made as needed
    (a missing array item is an empty object, or the value itself for scalars)."""
    if not path:
        return value
    root = spec if isinstance(spec, dict) else {}
    node: Any = root
    for step, following in itertools.pairwise(path):
        fresh: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            if not isinstance(node, list):
                return root
            if not node:
                node.append(fresh)
            node = node[0]
        else:
            if not isinstance(node, dict):
                return root
            if not isinstance(node.get(step), type(fresh)):
                node[step] = fresh
            node = node[step]
    last = path[-1]
    if isinstance(last, int):
        if isinstance(node, list):
            if node:
                node[0] = value
            else:
                node.append(value)
    elif isinstance(node, dict):
        node[last] = value
    return root


_NO_PARENT = object()


def _parent(spec: Any, path: Path) -> Any:
    """The node that holds the last step of ``path`` (a list's first item stands for
    its items); _NO_PARENT when the spec has no such node."""
    node = spec
    for step in path[:-1]:
        if isinstance(step, int):
            if not isinstance(node, list) or not node:
                return _NO_PARENT
            node = node[0]
        elif isinstance(node, dict) and step in node:
            node = node[step]
        else:
            return _NO_PARENT
    return node


def delete_at(spec: Any, path: Path) -> Any:
    node = _parent(spec, path)
    if isinstance(node, dict):
        node.pop(path[-1], None)
    return spec


def has_parent(spec: Any, path: Path) -> bool:
    return _parent(spec, path) is not _NO_PARENT


def mutate(spec: Any, schema: dict[str, Any], rng: random.Random, *,
           spec_required: bool) -> tuple[str, Any]:
    """One mutation of ``spec`` (a deep copy is changed), chosen by ``rng``."""
    spec = copy.deepcopy(spec)
    fields = [(p, s) for p, s in walk(schema) if p]
    op = rng.choices(["wrong type", "boundary", "long string", "non-ASCII", "null",
                      "unknown field", "absent required", "bad enum"],
                     weights=[18, 18, 12, 16, 8, 5, 15, 8])[0]
    if op == "absent required":
        return _absent_required(spec, schema, rng, spec_required)
    if op == "bad enum":
        enums = [(p, s) for p, s in fields if s.get("enum")]
        path, sub = rng.choice(enums) if enums else rng.choice(fields)
        value = rng.choice([str(v).lower() for v in sub.get("enum") or ["x"]] +
                           ["Unknown", " Running", "\uff32\uff35\uff2e"])
        return _done(op, path, value, spec, schema)
    if op == "unknown field":
        objects = [p for p, s in walk(schema) if type_of(s) == "object" and "properties" in s]
        path = (*rng.choice(objects), rng.choice(["zzUnknown", "Image", "gpu_count", "é"]))
        return _done(op, path, rng.choice(["x", 1, None, {"a": 1}]), spec, schema)
    if op == "null":
        path, _ = rng.choice(fields)
        return _done(op, path, None, spec, schema)
    if op == "wrong type":
        path, sub = rng.choice(fields)
        kind = type_of(sub)
        value = rng.choice(WRONG_TYPES.get(kind, [[1], {"a": []}, 3.25]))
        return _done(op, path, value, spec, schema)
    if op == "boundary":
        return _boundary(spec, schema, fields, rng)
    strings = [(p, s) for p, s in fields if type_of(s) in ("string", "int-or-string")]
    path, sub = rng.choice(strings or fields)
    if op == "long string":
        length = rng.choice(LONG_LENGTHS)
        char = rng.choice(LONG_CHARS)
        if length > 70_000 and char != "a":  # the whole object stays under etcd's limit
            length = 70_000
        return _done(f"{op} ({length} x {char!r})", path, char * length, spec, schema)
    return _done(op, path, rng.choice(ODD_STRINGS), spec, schema)


def _done(op: str, path: Path, value: Any, spec: Any, schema: dict[str, Any],
          ) -> tuple[str, Any]:
    return f"{op} at {dotted(path)}", set_at(spec, path, value, schema)


def _boundary(spec: Any, schema: dict[str, Any], fields: list[tuple[Path, dict[str, Any]]],
              rng: random.Random) -> tuple[str, Any]:
    bounded = [(p, s) for p, s in fields
               if type_of(s) in ("integer", "string", "array") or s.get("maxLength")]
    path, sub = rng.choice(bounded or fields)
    kind = type_of(sub)
    if kind == "integer":
        edges = [v for key, delta in (("minimum", 0), ("minimum", -1), ("maximum", 0),
                                      ("maximum", 1)) if key in sub
                 for v in [sub[key] + delta]]
        return _done("boundary", path, rng.choice(edges + BIG_INTEGERS), spec, schema)
    if kind == "array":
        limit = int(sub.get("maxItems", 300))
        item = _sample_item(spec, path)
        return _done(f"boundary ({limit + 1} items)", path,
                     [copy.deepcopy(item) for _ in range(limit + 1)], spec, schema)
    most = sub.get("maxLength")
    lengths = [0] + ([int(most), int(most) + 1] if most else [1, 253, 254])
    length = rng.choice(lengths)
    return _done(f"boundary (length {length})", path, "a" * length, spec, schema)


def _sample_item(spec: Any, path: Path) -> Any:
    node = spec
    for step in path:
        if isinstance(step, int):
            node = node[0] if isinstance(node, list) and node else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
    return node[0] if isinstance(node, list) and node else "x"


def _absent_required(spec: Any, schema: dict[str, Any], rng: random.Random,
                     spec_required: bool) -> tuple[str, Any]:
    required = [(p, key) for p, s in walk(schema) for key in s.get("required") or ()]
    if spec_required and (not required or rng.random() < 0.15):
        return "absent required .spec", MISSING
    if not required:
        return "absent required (none: valid)", spec
    path, key = rng.choice(required)
    if not has_parent(spec, (*path, key)):
        spec = set_at(spec, path, {}, schema) if path else spec
    return f"absent required {dotted((*path, key))}", delete_at(spec, (*path, key))


def dotted(path: Path) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
