"""GPU health marks: which GPUs are out of service, why, since when, and for how long.

Pure: a fault (an XID, an uncorrectable ECC error, a lost GPU) is classified and turned
into a mark; marks are kept by the agent (agent/gpu_health.py, persisted in its state
directory) and laid over the inventory, so the GpuNode, the allocator and the scheduler
all see the same health. docs/gpu-health.md has the classes as a table.

Classes of XID (from NVIDIA's XID catalog, "XID Errors", r555):

* ignored: an event only, the GPU stays in service. The NVIDIA device plugin's default
  skip list: 13 (graphics engine exception: an application fault), 31 (GPU memory page
  fault: an application fault), 43 (GPU stopped processing: the application's own
  reset), 45 (preemptive cleanup after a fault elsewhere), 68 (video processor
  exception), 109 (context switch timeout: an application fault).
* fatal: the GPU needs a reset or service; it comes back only when a person says so
  (``kubectl gpudock readmit NODE GPU``): 48 (double-bit ECC error), 62 (internal
  micro-controller halt), 64 (ECC page retirement or row remapping failure), 74 (NVLink
  error), 79 (GPU has fallen off the bus), 95 (uncontained ECC error), 119 and 120 (GSP
  RPC timeout, GSP error), 140 (unrecovered ECC error); an uncorrectable ECC event
  (ECCUncorrectable) and a GPU NVML calls lost (Lost) too.
* transient: any other XID (e.g. 63: a page retirement / row remap was recorded, 92: a
  high single-bit ECC error rate, 94: a contained ECC error, whose application is
  killed while the GPU goes on): out of service until ``--gpu-readmit-seconds`` pass
  without another error, then re-admitted (event GPUReadmitted).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpudock.core.gpus import GpuDevice
from gpudock.core.times import seconds_between

IGNORED_XIDS = frozenset({13, 31, 43, 45, 68, 109})
FATAL_XIDS = frozenset({48, 62, 64, 74, 79, 95, 119, 120, 140})
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
ECC_UNCORRECTABLE = "ECCUncorrectable"
LOST = "Lost"


class FaultClass(enum.StrEnum):
    IGNORED = "ignored"
    TRANSIENT = "transient"
    FATAL = "fatal"


@dataclass(frozen=True)
class Fault:
    """An error one GPU raised: ``gpu`` is its index or UUID; ``xid`` the XID, or None
    for an ECC event (``kind`` ECCUncorrectable) or a lost GPU (``kind`` Lost)."""

    gpu: int | str
    xid: int | None = None
    kind: str = ""

    @property
    def mark_reason(self) -> str:
        return f"XID{self.xid}" if self.xid is not None else self.kind or UNHEALTHY

    @property
    def fault_class(self) -> FaultClass:
        if self.xid is None:
            return FaultClass.FATAL
        if self.xid in IGNORED_XIDS:
            return FaultClass.IGNORED
        return FaultClass.FATAL if self.xid in FATAL_XIDS else FaultClass.TRANSIENT


@dataclass(frozen=True)
class Mark:
    """A GPU out of service: ``since`` its first error, ``last`` its latest one (a
    transient mark is lifted ``readmit_seconds`` after that)."""

    uuid: str
    reason: str
    fatal: bool
    since: str
    last: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Mark:
        return cls(str(raw["uuid"]), str(raw["reason"]), bool(raw["fatal"]),
                   str(raw["since"]), str(raw.get("last") or raw["since"]))


def resolve(gpu: int | str, devices: Sequence[GpuDevice]) -> GpuDevice | None:
    """The device a fault or a readmit names, by index or UUID; None when none is."""
    for device in devices:
        if device.uuid == gpu or str(device.index) == str(gpu):
            return device
    return None


def marked(marks: Mapping[str, Mark], fault: Fault, uuid: str, now: str) -> Mark | None:
    """The mark a fault leaves on GPU ``uuid`` (None: an ignored one leaves none). A
    fatal mark stays fatal; a later error moves ``last`` on (a transient mark waits
    again); the first error's reason and time stay."""
    if fault.fault_class is FaultClass.IGNORED:
        return None
    fatal = fault.fault_class is FaultClass.FATAL
    before = marks.get(uuid)
    if before is None:
        return Mark(uuid, fault.mark_reason, fatal, now, now)
    reason = fault.mark_reason if fatal and not before.fatal else before.reason
    return Mark(uuid, reason, before.fatal or fatal, before.since, now)


def expired(marks: Mapping[str, Mark], now: str, readmit_seconds: float) -> list[Mark]:
    """The transient marks with no error for ``readmit_seconds``: to be lifted."""
    found = []
    for mark in marks.values():
        quiet = seconds_between(mark.last, now)
        if not mark.fatal and quiet is not None and quiet >= readmit_seconds:
            found.append(mark)
    return found


def with_health(devices: Iterable[GpuDevice], marks: Mapping[str, Mark]) -> list[GpuDevice]:
    """The inventory as the allocator, the GpuNode and the scheduler see it: a marked
    GPU is Unhealthy with its mark's reason and time."""
    seen = []
    for device in devices:
        mark = marks.get(device.uuid)
        if mark is not None:
            device = dataclasses.replace(device, health=UNHEALTHY, health_reason=mark.reason,
                                         since=mark.since)
        seen.append(device)
    return seen


def unhealthy(devices: Iterable[GpuDevice]) -> dict[str, str]:
    """UUID -> what is wrong with it, for each GPU not in service."""
    return {d.uuid: describe(d) for d in devices if d.health != HEALTHY}


def describe(device: GpuDevice) -> str:
    why = device.health_reason or device.health
    since = f" since {device.since}" if device.since else ""
    return f"GPU {device.index} ({device.uuid}) is {UNHEALTHY}: {why}{since}"
