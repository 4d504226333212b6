"""A simulated GPU inventory for hosts without GPUs (development, tests)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

from gpudock.core.gpu_health import Fault
from gpudock.core.gpus import GpuDevice

log = logging.getLogger(__name__)

# A fixed namespace, so a node's simulated UUIDs are the same across agent restarts.
_SIMULATED_NAMESPACE = uuid.UUID("6f1c3a52-7d1e-4a8e-9a43-5b3d2f0c9e11")


class SimulatedGpuInventory:
    """``count`` GPUs with UUIDs derived from the node name: stable and node-unique."""

    def __init__(self, node_name: str, count: int, usage_file: str | None = None) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        self._usage_file = usage_file
        self._devices = [
            GpuDevice(
                index=i,
                uuid=f"GPU-{uuid.uuid5(_SIMULATED_NAMESPACE, f'{node_name}/{i}')}",
                name="Simulated GPU",
                memory_bytes=80 * 1024**3,
            )
            for i in range(count)
        ]

    def list_gpus(self) -> list[GpuDevice]:
        """The GPUs, with the usage --simulated-usage FILE says now: a JSON object
        by GPU index or UUID, ``{"0": {"utilization": 40, "memoryUsedMiB": 1024,
        "processes": 1}}``; a GPU it does not name is idle (0, 0, 0)."""
        usage = self._usage()
        return [dataclasses.replace(
            d, utilization=int(u.get("utilization") or 0),
            memory_used_bytes=int(u.get("memoryUsedMiB") or 0) * 2**20,
            processes=int(u.get("processes") or 0))
            for d in self._devices
            for u in [usage.get(str(d.index)) or usage.get(d.uuid) or {}]]

    def _usage(self) -> dict[str, dict[str, Any]]:
        if not self._usage_file:
            return {}
        try:
            with open(self._usage_file) as file:
                raw = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("simulated usage %s not read: %s", self._usage_file, exc)
            return {}
        return {str(k): v for k, v in raw.items() if isinstance(v, dict)} \
            if isinstance(raw, dict) else {}


POLL_SECONDS = 0.2  # how often the fault file is looked at for new lines


class SimulatedFaults:
    """``--simulated-faults FILE``: one JSON object a line, read as the file grows
    (``{"gpu": 2, "xid": 79}``; ``{"gpu": 2, "kind": "ECCUncorrectable"}`` or
    ``"Lost"`` for the other kinds; ``gpu`` an index or a UUID). ``offset``: where
    reading starts (what an earlier run of the agent read already is not read again)."""

    def __init__(self, path: str, offset: int = 0) -> None:
        self._path = path
        self.offset = offset

    def watch_events(self, report: Callable[[Fault], None], stop: threading.Event,
                     tick: Callable[[], None]) -> None:
        while not stop.is_set():
            for fault in self.read_new():
                report(fault)
            tick()
            stop.wait(POLL_SECONDS)

    def read_new(self) -> list[Fault]:
        """The faults of the complete lines added since the last read."""
        try:
            with open(self._path, "rb") as file:
                if os.fstat(file.fileno()).st_size < self.offset:
                    self.offset = 0  # truncated or replaced: from its start
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        faults = []
        for line in complete.decode(errors="replace").splitlines():
            fault = _fault(line)
            if fault is not None:
                faults.append(fault)
        return faults


def _fault(line: str) -> Fault | None:
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
        gpu = raw["gpu"]
        xid = raw.get("xid")
        if not isinstance(gpu, int | str) or not (xid is None or isinstance(xid, int)):
            raise ValueError("gpu must be an index or UUID, xid a number")
        return Fault(gpu, xid=xid, kind=str(raw.get("kind") or ""))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("simulated faults: line %r skipped: %s", line[:200], exc)
        return None
