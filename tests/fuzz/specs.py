"""Specs drawn from the CRD schemas (hypothesis-jsonschema), then mutated.

Every kind's ``spec`` schema is read from ``crds/`` and turned into a JSON Schema that
``hypothesis_jsonschema.from_schema`` understands (the Kubernetes extensions dropped,
``x-kubernetes-int-or-string`` as an integer or a string). The valid specs are drawn
inside a ``@given`` test run with ``@seed(seed)``, no example database and the
generate phase only, so one seed always gives the same specs. The mutations
(mutations.py) use a ``random.Random`` seeded from the same seed.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import yaml
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from tests.fuzz import mutations

CRDS = Path(__file__).resolve().parents[2] / "crds"
# Kubernetes' own keywords that JSON Schema does not know (or that change nothing in
# what a spec may be).
_DROPPED = ("description", "default", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
            "x-kubernetes-preserve-unknown-fields", "format")


@dataclass(frozen=True)
class Kind:
    name: str  # GpuReplicaSet
    plural: str  # gpureplicasets
    namespaced: bool
    schema: dict[str, Any]  # the CRD's schema of .spec, as it is
    required_spec: bool  # the CRD requires .spec


@dataclass(frozen=True)
class Case:
    """One spec to send: ``how`` says what was done to it ("valid", "enum spec.state=
    Paused", "wrong type at spec.gpuCount", ...); ``body`` is the object's spec, or
    ``MISSING`` for an object without one."""

    index: int
    how: str
    spec: Any


MISSING = mutations.MISSING


def load_kinds() -> dict[str, Kind]:
    kinds = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        version = crd["spec"]["versions"][0]
        root = version["schema"]["openAPIV3Schema"]
        kinds[crd["spec"]["names"]["kind"]] = Kind(
            crd["spec"]["names"]["kind"], crd["spec"]["names"]["plural"],
            crd["spec"]["scope"] == "Namespaced", root["properties"]["spec"],
            "spec" in (root.get("required") or ()))
    return kinds


def json_schema(crd_schema: Any) -> Any:
    """The CRD's structural schema as plain JSON Schema: objects with properties take
    no other keys (the API server prunes them; the mutations add some on purpose)."""
    if isinstance(crd_schema, list):
        return [json_schema(item) for item in crd_schema]
    if not isinstance(crd_schema, dict):
        return crd_schema
    schema = {key: json_schema(value) for key, value in crd_schema.items()
              if key not in _DROPPED and key != "x-kubernetes-int-or-string"}
    if crd_schema.get("x-kubernetes-int-or-string"):
        pattern = schema.pop("pattern", None)
        schema = {"anyOf": [{"type": "integer"},
                            {"type": "string", **({"pattern": pattern} if pattern else {})}]}
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    if schema.get("nullable"):
        del schema["nullable"]
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def valid_specs(kind: Kind, count: int, seed: int) -> list[Any]:
    """``count`` specs the schema admits (fewer when hypothesis runs out), the same for
    the same seed."""
    drawn: list[Any] = []

    @hypothesis.settings(max_examples=count, database=None, deadline=None,
                         phases=[hypothesis.Phase.generate], derandomize=False,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.seed(seed)
    @hypothesis.given(st.data())
    def collect(data: st.DataObject) -> None:
        drawn.append(data.draw(from_schema(json_schema(kind.schema))))

    collect()
    return drawn


def cases(kind: Kind, count: int, seed: int, valid_share: float = 0.35) -> list[Case]:
    """``count`` cases: each value of each enum once on a valid spec, then valid specs
    and mutated ones (wrong types, boundary values, long and non-ASCII strings, nulls,
    unknown fields, absent required fields), in a fixed order for the seed."""
    base = valid_specs(kind, max(1, min(count, 250)), seed)
    rng = random.Random(f"{seed}:{kind.name}")
    out: list[Case] = []
    for path, value in mutations.enum_values(kind.schema):
        # A valid spec that has the enum's parent already, so only the value differs.
        with_parent = [s for s in base if mutations.has_parent(s, path)] or base
        spec = copy.deepcopy(with_parent[len(out) % len(with_parent)])
        out.append(Case(len(out), f"enum {_dotted(path)}={value!r}",
                        mutations.set_at(spec, path, value, kind.schema)))
    for index in range(len(out), count):
        spec = copy.deepcopy(base[index % len(base)])
        if rng.random() < valid_share:
            out.append(Case(index, "valid", spec))
            continue
        how, mutated = mutations.mutate(spec, kind.schema, rng,
                                        spec_required=kind.required_spec)
        out.append(Case(index, how, mutated))
    return out[:count]


def _dotted(path: tuple[str | int, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
