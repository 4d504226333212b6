"""A GpuReplicaSet's CPU, memory, /dev/shm and process limits: ``spec.resources``
(``requests``/``limits`` of ``cpu`` and ``memory``, Kubernetes quantities),
``spec.shmSize`` (a quantity) and ``spec.pidsLimit``.

The parser refuses what no node could run, each with its own reason: a limit below
its request (LimitBelowRequest), a memory limit below Docker's minimum or a CPU limit
below Docker's 0.01 CPU (BelowDockerMinimum). What depends on the node (its CPUs, the
per-GPU defaults) is core/limits.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from gpudock.api.parsing import RawDict, as_dict
from gpudock.api.quantity import format_size, parse_size
from gpudock.api.reasons import Reason
from gpudock.errors import SpecError

# Kubernetes' CPU quantities: whole or decimal CPUs (at most millicore precision) or
# millicores. The CRD schema uses the same grammar (checked in the tests).
CPU_PATTERN = r"^([0-9]+(\.[0-9]{1,3})?|[0-9]+m)$"
_CPU_RE = re.compile(CPU_PATTERN)
DOCKER_MIN_MEMORY = 6 * 1024 * 1024  # dockerd refuses a smaller memory limit
DOCKER_MIN_MILLICPUS = 10  # dockerd's smallest NanoCpus: 0.01 CPU
# Fields of the spec's shape that change on the running container (Docker's update),
# with no new revision: a change of only these is not a new revision.
IN_PLACE_FIELDS = ("resources", "pidsLimit")
LIMIT_FIELDS = ("resources", "shmSize", "pidsLimit")  # every field of this module


def parse_cpu(value: Any, where: str = "cpu") -> int:
    """Millicores of a Kubernetes CPU quantity (``2``, ``1.5``, ``500m``); an int or
    float from YAML is read as CPUs. Raises SpecError."""
    text = str(value).strip() if isinstance(value, (str, int, float)) and \
        not isinstance(value, bool) else ""
    if not _CPU_RE.match(text):
        raise SpecError(f"{where} {value!r} is not a CPU quantity such as 2, 1.5 or 500m")
    if text.endswith("m"):
        return int(text[:-1])
    try:
        return int(Decimal(text) * 1000)
    except InvalidOperation as exc:  # pragma: no cover - the regex forbids it
        raise SpecError(f"{where} {value!r} cannot be read: {exc}") from exc


def format_cpu(millis: int) -> str:
    """A CPU quantity as Kubernetes writes it: whole CPUs, else millicores."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def parse_memory(value: Any, where: str = "memory") -> int:
    """Bytes of a memory quantity (``1Gi``, ``512Mi``; a plain number is bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SpecError(f"{where} {value!r} is not a quantity such as 1Gi or 512Mi")
    try:
        return parse_size(value)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc.message}") from exc


@dataclass(frozen=True)
class Resources:
    """``spec.resources`` as given (None: not set); CPU in millicores, memory in bytes."""

    cpu_request: int | None = None
    cpu_limit: int | None = None
    memory_request: int | None = None
    memory_limit: int | None = None

    def shape(self) -> dict[str, Any]:
        """The normalized form a revision records (only what is set)."""
        def part(cpu: int | None, memory: int | None) -> dict[str, str]:
            return {**({"cpu": format_cpu(cpu)} if cpu is not None else {}),
                    **({"memory": format_size(memory)} if memory is not None else {})}
        requests = part(self.cpu_request, self.memory_request)
        limits = part(self.cpu_limit, self.memory_limit)
        return {**({"requests": requests} if requests else {}),
                **({"limits": limits} if limits else {})}


def parse_resources(raw: Any) -> Resources:
    if raw is None:
        return Resources()
    entry = as_dict(raw, "spec.resources")
    values: dict[str, int | None] = {}
    for part in ("requests", "limits"):
        found: RawDict = as_dict(entry.get(part) or {}, f"spec.resources.{part}")
        cpu, memory = found.get("cpu"), found.get("memory")
        values[f"cpu_{part}"] = None if cpu is None else \
            parse_cpu(cpu, f"spec.resources.{part}.cpu")
        values[f"memory_{part}"] = None if memory is None else \
            parse_memory(memory, f"spec.resources.{part}.memory")
    resources = Resources(values["cpu_requests"], values["cpu_limits"],
                          values["memory_requests"], values["memory_limits"])
    _check(resources)
    return resources


def _check(r: Resources) -> None:
    for what, request, limit, show in (
            ("cpu", r.cpu_request, r.cpu_limit, format_cpu),
            ("memory", r.memory_request, r.memory_limit, format_size)):
        if request is not None and limit is not None and limit < request:
            raise SpecError(f"spec.resources.limits.{what} {show(limit)} is below "
                            f"spec.resources.requests.{what} {show(request)}; a limit must "
                            "be at least its request (nothing was changed)",
                            reason=Reason.LIMIT_BELOW_REQUEST)
    if r.memory_limit is not None and r.memory_limit < DOCKER_MIN_MEMORY:
        raise SpecError(f"spec.resources.limits.memory {format_size(r.memory_limit)} is "
                        f"below Docker's minimum of {format_size(DOCKER_MIN_MEMORY)} "
                        "(nothing was changed)", reason=Reason.BELOW_DOCKER_MINIMUM)
    if r.cpu_limit is not None and r.cpu_limit < DOCKER_MIN_MILLICPUS:
        raise SpecError(f"spec.resources.limits.cpu {format_cpu(r.cpu_limit)} is below "
                        f"Docker's minimum of {format_cpu(DOCKER_MIN_MILLICPUS)} "
                        "(nothing was changed)", reason=Reason.BELOW_DOCKER_MINIMUM)


def parse_shm_size(raw: Any) -> int | None:
    """``spec.shmSize`` in bytes; None when not set (the node's default)."""
    if raw is None:
        return None
    size = parse_memory(raw, "spec.shmSize")
    if size <= 0:
        raise SpecError("spec.shmSize must be more than 0")
    return size


def parse_pids_limit(raw: Any) -> int | None:
    """``spec.pidsLimit``: processes and threads the container may have at once."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise SpecError(f"spec.pidsLimit must be a whole number of at least 1, got {raw!r}")
    return raw
