"""The GpuMigration resource: move a GpuReplicaSet, with its disk and history, to
another node (docs/migration.md)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpudock.api.parsing import RawDict, as_dict, get_object_name
from gpudock.errors import SpecError

KIND = "GpuMigration"
PLURAL = "gpumigrations"
# After the switch, a target that cannot run the instance gives it back to the source
# (docs/migration.md, "Falling back"): the source records why in the GpuMigration's
# status.fallback, then asks the target by this annotation on the GpuReplicaSet (its
# value: the GpuMigration's name).
FALLBACK_FIELD = "fallback"
FALLBACK_ANNOTATION = "gpudock.dev/migration-fallback"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RESERVING = "Reserving"  # a target is chosen and asked; nothing stopped yet
    TRANSFERRING = "Transferring"  # the disk and history travel; the source is stopped
    SWITCHING = "Switching"  # the binding moves: from here on it is not undone
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


ACTIVE = frozenset({Phase.PENDING, Phase.RESERVING, Phase.TRANSFERRING, Phase.SWITCHING})
FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
UNDOABLE = frozenset({Phase.PENDING, Phase.RESERVING, Phase.TRANSFERRING})


@dataclass(frozen=True)
class GpuMigrationSpec:
    replica_set_name: str
    target_node: str = ""  # "": any node that fits
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: RawDict) -> GpuMigrationSpec:
        target = raw.get("targetNode") or ""
        if not isinstance(target, str):
            raise SpecError("spec.targetNode must be a node name")
        selector = as_dict(raw.get("nodeSelector") or {}, "spec.nodeSelector")
        if not all(isinstance(v, str) for v in selector.values()):
            raise SpecError("spec.nodeSelector values must be strings")
        return cls(get_object_name(raw, "replicaSetName", "spec"), target,
                   {str(k): str(v) for k, v in selector.items()})


def phase_of(body: Mapping[str, Any]) -> Phase:
    raw = (body.get("status") or {}).get("phase") or Phase.PENDING
    return Phase(raw) if raw in tuple(Phase) else Phase.PENDING


def source_of(body: Mapping[str, Any]) -> str:
    return str((body.get("status") or {}).get("sourceNode") or "")


def made_before(other: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """``other`` was made first (two GpuMigrations of one instance at once: the
    earlier one goes first, the later one fails MigrationInProgress)."""
    def order(item: Mapping[str, Any]) -> tuple[str, str]:
        meta = item.get("metadata") or {}
        return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")
    return order(other) < order(body)
