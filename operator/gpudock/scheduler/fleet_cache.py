"""What the scheduler knows of the fleet: the GpuNodes, GpuReplicaSets and
SizedVolumes as kopf's watches last showed them (its indexes, scheduler/handlers.py),
overlaid with the scheduler's own writes until the watch brings them, so a pass never
works from an older view than its last binding."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpudock.api import gpu_replica_set, sized_volume

GPU_NODES = "gpunodes"
PLURALS = (GPU_NODES, gpu_replica_set.PLURAL, sized_volume.PLURAL)


@dataclass(frozen=True)
class FleetSnapshot:
    gpu_nodes: list[dict[str, Any]]
    replica_sets: list[dict[str, Any]]
    volumes: list[dict[str, Any]]


class FleetCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: dict[str, dict[str, Any]] = {}  # by uid: the pass's own writes
        self.wake = threading.Event()  # set by every watch event of the three kinds

    def note_written(self, body: Mapping[str, Any]) -> None:
        with self._lock:
            self._written[_uid(body)] = dict(body)
        self.wake.set()

    def snapshot(self, watched: Mapping[str, Iterable[Mapping[str, Any]]]) -> FleetSnapshot:
        """``watched``: by plural, the objects the watches show now. An own write
        newer than what the watch shows stands in for it; older ones are dropped."""
        lists: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for plural in PLURALS:
                lists[plural] = []
                for body in watched.get(plural, ()):
                    mine = self._written.get(_uid(body))
                    if mine is not None and _version(mine) > _version(body):
                        lists[plural].append(mine)
                        continue
                    self._written.pop(_uid(body), None)
                    lists[plural].append(dict(body))
        return FleetSnapshot(*(lists[p] for p in PLURALS))


def _uid(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid"))


def _version(body: Mapping[str, Any]) -> int:
    """resourceVersions are opaque to clients, but etcd's are increasing integers;
    anything else counts as oldest (the watch's view wins)."""
    text = str((body.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else -1
