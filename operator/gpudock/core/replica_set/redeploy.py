"""Redeploy: a new revision of the same spec (docs/revisions.md, "Redeploy").

The annotation ``gpudock.dev/redeploy`` carries a token (any string; ``kubectl gpudock
restart`` writes the time). The agent puts its value into the spec model
(:func:`with_redeploy`), where it is part of the shape: a value the current revision
was not made for is a changed shape, so the plan rolls out a new revision exactly as
for a spec change (the disk carried, GPUs and ports kept), and records the value in
that revision's shape. The decision is made from the revision records alone, so the
same value seen again (a resync, an agent restart) changes nothing. Without the
annotation (never set, or removed) the token is no change at all: any record matches.

A rollback restores an earlier revision's spec but keeps the current annotation's
value (``with_shape`` keeps the token), so the rollback's record matches the
annotation and the finished rollback is not followed by a redeploy; the token is
never written into the spec (:func:`spec_fields`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gpudock.api.gpu_replica_set import REDEPLOY_ANNOTATION, REDEPLOY_FIELD, GpuReplicaSetSpec


def fresh_token() -> str:
    """A value no earlier redeploy used (``kubectl gpudock restart``, the REST API's
    /restart and PATCH): the time to the microsecond, UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def with_redeploy(spec: GpuReplicaSetSpec,
                  annotations: Mapping[str, Any]) -> GpuReplicaSetSpec:
    """``spec`` with the redeploy token of the resource's annotations ("" if none)."""
    return replace(spec, redeploy=str(annotations.get(REDEPLOY_ANNOTATION) or ""))


def only_redeploy(spec: GpuReplicaSetSpec, recorded: Mapping[str, Any]) -> bool:
    """True when a revision of shape ``recorded`` is ``spec`` but for the token: a new
    revision for ``spec`` is a redeploy."""
    return bool(spec.redeploy) and not spec.matches(recorded) and \
        replace(spec, redeploy="").matches(recorded)


def redeploy_cause(spec: GpuReplicaSetSpec) -> str:
    """The change cause of a redeploy's revision (status.history, kubectl gpudock
    history)."""
    return f"redeploy ({REDEPLOY_ANNOTATION}={spec.redeploy})"


def spec_fields(shape: Mapping[str, Any]) -> dict[str, Any]:
    """A revision's shape as spec fields (what a finished rollback writes back)."""
    return {k: v for k, v in shape.items() if k != REDEPLOY_FIELD}
