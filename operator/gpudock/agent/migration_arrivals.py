"""GPUs held on a migration's target for the instance it brings (docs/migration.md).

The target checks its room when the source asks (Reserving) and, from then on, holds
the GPUs it found free for that instance: another migration, or an instance the
scheduler binds here meanwhile, cannot take them (the GpuNode shows them held, with
``arriving: true``, so the scheduler counts them taken). The arriving instance gets
them when it is resumed here. A hold ends when the instance has a container here,
when its GpuMigration has ended or is gone, or when the transfer session fails.

Holds live in the agent's memory: an agent restarted during a migration forgets
them (the source's session fails then anyway, unless only the switch was left).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpudock.core.observed import ObservedContainer, ResourceKey


@dataclass(frozen=True)
class Arrival:
    key: ResourceKey
    uid: str  # the GpuReplicaSet's
    migration: tuple[str, str]  # the GpuMigration's namespace and name
    gpus: tuple[str, ...]
    # The SizedVolumes it brings, as the GpuMigration's status.sizedVolumes lists them.
    volumes: tuple[dict[str, str], ...] = ()


class Arrivals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, Arrival] = {}  # by the instance's UID

    def hold(self, arrival: Arrival) -> None:
        with self._lock:
            self._held[arrival.uid] = arrival

    def drop(self, uid: str, migration: tuple[str, str] | None = None) -> None:
        """The hold for ``uid``'s arrival ends; with ``migration``, only when it is
        that migration's (a late failure of an earlier one keeps a newer one's)."""
        with self._lock:
            held = self._held.get(uid)
            if held is not None and migration in (None, held.migration):
                del self._held[uid]

    def held(self) -> list[Arrival]:
        with self._lock:
            return list(self._held.values())

    def gpus(self) -> dict[str, ResourceKey]:
        """Every held GPU's UUID -> the instance it is held for."""
        return {gpu: a.key for a in self.held() for gpu in a.gpus}

    def gpus_for_others(self, key: ResourceKey, uid: str = "") -> set[str]:
        """The GPUs held for other instances than ``key`` (or than the arrival of
        ``uid``, when a new hold for it is being made)."""
        return {gpu for a in self.held() if a.key != key and a.uid != uid for gpu in a.gpus}

    def settle(self, containers: Iterable[ObservedContainer],
               ended: Callable[[tuple[str, str]], bool]) -> list[Arrival]:
        """Drop the holds whose instance has a container here now or whose
        migration ``ended`` (finished, or gone); returns those dropped."""
        here = {c.uid for c in containers if c.uid}
        dropped = [a for a in self.held() if a.uid in here or ended(a.migration)]
        for arrival in dropped:
            self.drop(arrival.uid, arrival.migration)
        return dropped
