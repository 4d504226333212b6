"""The node's GPU health: the marks of the GPUs out of service, kept in the agent's
state directory (they survive restarts), laid over the inventory every part of the
agent lists GPUs from (the GpuNode, the allocator), and fed by the backend's faults
(NVML's event loop, or the --simulated-faults file) on a thread of its own.

What a fault does is core/gpu_health.py's: ignored, transient (lifted after
--gpu-readmit-seconds without another error) or fatal (lifted only by a readmit: the
``gpudock.dev/readmit`` annotation on the GpuNode, set by ``kubectl gpudock readmit``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpudock import metrics
from gpudock.adapters.gpu_inventory import FaultSource
from gpudock.adapters.simulated_gpus import SimulatedFaults
from gpudock.api.reasons import Reason
from gpudock.core.gpu_health import (
    ECC_UNCORRECTABLE,
    HEALTHY,
    LOST,
    Fault,
    FaultClass,
    Mark,
    expired,
    marked,
    resolve,
    with_health,
)
from gpudock.core.gpus import GpuDevice, GpuInventory
from gpudock.errors import InternalError

log = logging.getLogger(__name__)
STATE_FILE = "gpu-health.json"
READMIT = "gpudock.dev/readmit"  # on the GpuNode: GPUs to take back (kubectl gpudock readmit)
RESTART_SECONDS = 5.0  # a fault source that failed is started again after this
Announce = Callable[[str, Reason, str], None]  # (event type, reason, message)


class GpuHealth:
    """A GpuInventory: the backend's GPUs with the marks over them."""

    def __init__(self, inventory: GpuInventory, state_dir: Path, readmit_seconds: float,
                 clock: Callable[[], str], node_name: str = "") -> None:
        self._inner = inventory
        self._path = state_dir / STATE_FILE
        self._readmit_seconds = readmit_seconds
        self._clock = clock
        self._node = node_name
        self._lock = threading.Lock()
        self._marks, self.faults_offset = self._load()
        self._devices: list[GpuDevice] = []
        self._stop = threading.Event()
        self._source: FaultSource | None = None
        self._announce: Announce = lambda type_, reason, message: None
        self._on_change: Callable[[], None] = lambda: None

    @property
    def backend(self) -> GpuInventory:
        """The inventory the marks are laid over."""
        return self._inner

    # ------------------------------------------------------------------ the inventory
    def list_gpus(self) -> list[GpuDevice]:
        devices = self._inner.list_gpus()
        self._devices = devices
        for device in devices:  # the periodic check: what the listing found wrong
            if device.health != HEALTHY and device.health_reason in (LOST, ECC_UNCORRECTABLE) \
                    and device.uuid not in self.marks():
                self.report(Fault(device.uuid, kind=device.health_reason))
        seen = with_health(devices, self.marks())
        for device in seen:
            for state in (HEALTHY, "Unhealthy"):
                metrics.GPU_HEALTH.labels(self._node, str(device.index), device.uuid,
                                          state).set(1 if device.health == state else 0)
        return seen

    def marks(self) -> dict[str, Mark]:
        with self._lock:
            return dict(self._marks)

    # ------------------------------------------------------------------ the faults
    def report(self, fault: Fault) -> None:
        """A fault of one GPU, from the backend's thread (or the periodic check)."""
        device = resolve(fault.gpu, self._devices or self._inner.list_gpus())
        if device is None:
            log.warning("a fault of GPU %s, which this node does not have: %s", fault.gpu,
                        fault)
            return
        what = f"GPU {device.index} ({device.uuid})"
        if fault.fault_class is FaultClass.IGNORED:
            self._announce("Normal", Reason.GPU_FAULT_IGNORED,
                           f"{what} raised {fault.mark_reason}, of the ignored class "
                           "(an application's fault): it stays in service")
            return
        now = self._clock()
        with self._lock:
            before = self._marks.get(device.uuid)
            mark = marked(self._marks, fault, device.uuid, now)
            assert mark is not None
            self._marks[device.uuid] = mark
            self._save()
        if before is None or (mark.fatal and not before.fatal):
            how = ("fatal: it is back only by `kubectl gpudock readmit "
                   f"{self._node} {device.index}`" if mark.fatal else
                   f"transient: it is back after {self._readmit_seconds:g}s without "
                   "another error")
            self._announce("Warning", Reason.GPU_UNHEALTHY,
                           f"{what} is Unhealthy: {mark.reason} ({how}); it is given "
                           "to no new instance, its holder is told (Degraded)")
            self._on_change()
        else:
            log.info("%s: another error (%s) while Unhealthy", what, fault.mark_reason)

    def tick(self) -> None:
        """Lift the transient marks that waited long enough; keep the fault file's
        offset (the next agent does not read its lines again)."""
        now = self._clock()
        offset = self._source.offset if isinstance(self._source, SimulatedFaults) else 0
        with self._lock:
            lifted = expired(self._marks, now, self._readmit_seconds)
            for mark in lifted:
                del self._marks[mark.uuid]
            if lifted or offset != self.faults_offset:
                self.faults_offset = offset
                self._save()
        for mark in lifted:
            self._announce("Normal", Reason.GPU_READMITTED, (
                f"GPU {self._index(mark.uuid)} ({mark.uuid}) is back in service: no error "
                f"for {self._readmit_seconds:g}s since {mark.last} ({mark.reason})"))
        if lifted:
            self._on_change()

    def readmit(self, names: str) -> list[str]:
        """Lift the marks of the GPUs ``names`` lists (indexes or UUIDs, separated by
        commas or spaces); returns what was done, for the log."""
        devices = self._devices or self._inner.list_gpus()
        done = []
        for name in names.replace(",", " ").split():
            device = resolve(name, devices)
            with self._lock:
                mark = self._marks.pop(device.uuid, None) if device is not None else None
                if mark is not None:
                    self._save()
            if device is None or mark is None:
                done.append(f"GPU {name}: not found or not Unhealthy, nothing done")
                continue
            self._announce("Normal", Reason.GPU_READMITTED, (
                f"GPU {device.index} ({device.uuid}) is back in service: readmitted "
                f"(it was Unhealthy: {mark.reason} since {mark.since})"))
            done.append(f"GPU {device.index} ({device.uuid}) readmitted")
        if any(line.endswith("readmitted") for line in done):
            self._on_change()
        return done

    # ------------------------------------------------------------------ the thread
    def start(self, source: FaultSource | None, announce: Announce,
              on_change: Callable[[], None]) -> None:
        """Follow ``source`` on a daemon thread (None: only the periodic check and
        the re-admission clock run)."""
        self._source, self._announce, self._on_change = source, announce, on_change
        threading.Thread(target=self._follow, name="gpudock-gpu-health", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.is_set():
            if self._source is None:
                self.tick()
                self._stop.wait(1.0)
                continue
            try:
                self._source.watch_events(self.report, self._stop, self.tick)
            except Exception as exc:  # the watch must outlive any one failure
                log.warning("GPU fault source failed, starting it again in %gs: %s",
                            RESTART_SECONDS, exc)
                self._stop.wait(RESTART_SECONDS)

    # ------------------------------------------------------------------ the state
    def _index(self, uuid: str) -> str:
        device = resolve(uuid, self._devices)
        return str(device.index) if device is not None else "?"

    def _load(self) -> tuple[dict[str, Mark], int]:
        try:
            raw: dict[str, Any] = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}, 0
        except (OSError, ValueError) as exc:
            # Never start as if every GPU were fine when the marks cannot be read.
            raise InternalError(f"the GPU health marks in {self._path} cannot be read: "
                               f"{exc}; fix or remove the file") from exc
        marks = [Mark.from_dict(m) for m in raw.get("marks") or ()]
        return {m.uuid: m for m in marks}, int(raw.get("faultsOffset") or 0)

    def _save(self) -> None:
        """Written whole to a new file and renamed over the old (never half a file)."""
        self._path.parent.mkdir(exist_ok=True)  # never a removed tree made again
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"marks": [m.to_dict() for m in self._marks.values()],
                                   "faultsOffset": self.faults_offset}, indent=1))
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, self._path)
