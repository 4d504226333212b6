"""Where a resource may run: its binding to a node and what it asks of the node.

A GpuReplicaSet or SizedVolume that names ``spec.nodeName`` is pinned there. One that
does not is bound by the scheduler, which writes ``status.nodeName`` once (with a
resourceVersion precondition); the node's agent serves it from then on. The fields
below say which nodes may take it (docs/fleet.md, "Placement").
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpudock.api.container_limits import parse_resources
from gpudock.api.parsing import RawDict, as_dict, get_choice, get_int, get_list
from gpudock.errors import SpecError

# The labels every agent puts on its GpuNode (nodeSelector matches against them and
# any label an administrator adds; an agent never overwrites another label).
LABEL_GPU_PRODUCT = "gpudock.dev/gpu-product"
LABEL_GPU_COUNT = "gpudock.dev/gpu-count"
LABEL_GPU_MEMORY = "gpudock.dev/gpu-memory-mib"
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class SchedulingPolicy(enum.StrEnum):
    BINPACK = "Binpack"  # the fullest node that fits: whole nodes stay free for big asks
    SPREAD = "Spread"    # the emptiest node: instances apart


@dataclass(frozen=True)
class Toleration:
    key: str = ""         # "" with Exists: every taint
    operator: str = "Equal"
    value: str = ""
    effect: str = ""      # "": every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:  # as kube-scheduler prints it
        return f"{{{self.key}: {self.value}}}"


@dataclass(frozen=True)
class Placement:
    """What a resource asks of the node it is placed on, besides GPUs and ports."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_models: tuple[str, ...] = ()
    gpu_min_memory_mib: int = 0
    tolerations: tuple[Toleration, ...] = ()
    policy: SchedulingPolicy | None = None  # None: the scheduler's default
    cpu_millis: int = 0     # spec.resources.requests.cpu (or limits when only those)
    memory_bytes: int = 0   # spec.resources.requests.memory (or limits)

    @classmethod
    def parse(cls, raw: RawDict) -> Placement:
        where = "spec"
        selector = as_dict(raw.get("nodeSelector") or {}, "spec.nodeSelector")
        if not all(isinstance(v, str) for v in selector.values()):
            raise SpecError("spec.nodeSelector values must be strings")
        gpu = as_dict(raw.get("gpuSelector") or {}, "spec.gpuSelector")
        models = tuple(get_list(gpu, "models", "spec.gpuSelector"))
        if not all(isinstance(m, str) and m for m in models):
            raise SpecError("spec.gpuSelector.models must be non-empty strings")
        cpu_millis, memory_bytes = _requests(raw)
        policy = get_choice(raw, "schedulingPolicy", where, tuple(SchedulingPolicy),
                            SchedulingPolicy.BINPACK) if raw.get("schedulingPolicy") else ""
        return cls(
            node_selector={str(k): str(v) for k, v in selector.items()},
            gpu_models=models,
            gpu_min_memory_mib=get_int(gpu, "minMemoryMiB", "spec.gpuSelector", default=0,
                                       minimum=0),
            tolerations=tuple(parse_toleration(as_dict(t, "spec.tolerations[]"))
                              for t in get_list(raw, "tolerations", where)),
            policy=SchedulingPolicy(policy) if policy else None,
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
        )


def parse_toleration(raw: RawDict) -> Toleration:
    operator = get_choice(raw, "operator", "spec.tolerations[]", ("Equal", "Exists"), "Equal")
    return Toleration(key=str(raw.get("key") or ""), operator=operator,
                      value=str(raw.get("value") or ""), effect=str(raw.get("effect") or ""))


def parse_taints(raw: Any) -> tuple[Taint, ...]:
    """GpuNode spec.taints, leniently: an entry without a key is skipped."""
    taints = []
    for entry in raw if isinstance(raw, list) else ():
        if isinstance(entry, Mapping) and entry.get("key"):
            taints.append(Taint(str(entry["key"]), str(entry.get("value") or ""),
                                str(entry.get("effect") or "NoSchedule")))
    return tuple(taints)


def _requests(raw: RawDict) -> tuple[int, int]:
    """CPU (millicores) and memory (bytes) requested, as Kubernetes defaults them:
    the request, else the limit, else 0 (the node's per-GPU defaults are the node's:
    the scheduler does not count them)."""
    resources = parse_resources(raw.get("resources"))
    cpu = resources.cpu_request if resources.cpu_request is not None else resources.cpu_limit
    memory = resources.memory_request if resources.memory_request is not None \
        else resources.memory_limit
    return cpu or 0, memory or 0


def bound_node(body: Mapping[str, Any]) -> str:
    """The node a resource is pinned or bound to ("" while the scheduler has not
    placed it): spec.nodeName wins, else status.nodeName."""
    spec_node = (body.get("spec") or {}).get("nodeName")
    if isinstance(spec_node, str) and spec_node:
        return spec_node
    status_node = (body.get("status") or {}).get("nodeName")
    return status_node if isinstance(status_node, str) else ""


def label_value(text: str) -> str:
    """``text`` as a label value (at most 63 of [A-Za-z0-9._-], alphanumeric at both
    ends): "NVIDIA H100 80GB HBM3" becomes "NVIDIA-H100-80GB-HBM3", as NVIDIA's
    feature discovery labels it."""
    return _LABEL_VALUE_BAD.sub("-", text)[:63].strip("-._")
