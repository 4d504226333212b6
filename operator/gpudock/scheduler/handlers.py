"""kopf registration of the scheduler: kopf's watches feed the fleet cache (events
only: no finalizer, no status of kopf's own), and one task elects the leader and runs
a scheduling pass whenever the fleet changed while it leads, and at least every
RESCHEDULE_SECONDS.

Imported by the agent when ``--scheduler auto`` (agent/main.py) and by ``gpudock
scheduler``; its state is kopf's memo entry ``scheduler`` (a ``Scheduler``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from gpudock.adapters.kube_api import KubeApi
from gpudock.adapters.kube_leases import Leases
from gpudock.api import GROUP, VERSION, gpu_replica_set, sized_volume
from gpudock.api.placement import SchedulingPolicy
from gpudock.core.times import utc_now
from gpudock.scheduler.binder import PassSettings, SchedulingPass
from gpudock.scheduler.fleet_cache import GPU_NODES, FleetCache, FleetSnapshot
from gpudock.scheduler.leader import RETRY_SECONDS, LeaderElector
from gpudock.settings import SchedulerSettings

MEMO_KEY = "scheduler"
RESCHEDULE_SECONDS = 60.0
logger = logging.getLogger(__name__)


@dataclass
class Scheduler:
    settings: SchedulerSettings
    cache: FleetCache = field(default_factory=FleetCache)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    indexes: dict[str, Any] = field(default_factory=dict)  # kopf's, by plural

    def watched(self) -> dict[str, list[Any]]:
        """What the indexes hold now; read on the event loop (kopf updates them there)."""
        return {plural: list(index.get(ALL, ())) for plural, index in self.indexes.items()}


def _of(memo: kopf.Memo) -> Scheduler | None:
    scheduler = memo.get(MEMO_KEY)
    return scheduler if isinstance(scheduler, Scheduler) else None


ALL = "all"  # the one key of the scheduler's indexes: every object of the kind


def _indexed(body: kopf.Body, memo: kopf.Memo) -> dict[str, dict[str, Any]] | None:
    """An index entry (kopf keeps it current, and drops it when the object goes) that
    also wakes the scheduler; nothing when this process runs no scheduler."""
    scheduler = _of(memo)
    if scheduler is None:
        return None
    scheduler.cache.wake.set()
    return {ALL: dict(body)}


# kopf's indexes, not event handlers: kopf logs (and would post as Events) every
# event handler's success; an index is kept silently.
@kopf.index(GROUP, VERSION, gpu_replica_set.PLURAL)
def scheduler_replica_sets(body: kopf.Body, memo: kopf.Memo, **_: Any,
                           ) -> dict[str, dict[str, Any]] | None:
    return _indexed(body, memo)


@kopf.index(GROUP, VERSION, sized_volume.PLURAL)
def scheduler_volumes(body: kopf.Body, memo: kopf.Memo, **_: Any,
                      ) -> dict[str, dict[str, Any]] | None:
    return _indexed(body, memo)


@kopf.index(GROUP, VERSION, GPU_NODES)
def scheduler_gpu_nodes(body: kopf.Body, memo: kopf.Memo, **_: Any,
                        ) -> dict[str, dict[str, Any]] | None:
    return _indexed(body, memo)


@kopf.on.startup()
async def start_scheduler(memo: kopf.Memo, **kwargs: Any) -> None:
    scheduler = _of(memo)
    if scheduler is not None:
        scheduler.indexes = {GPU_NODES: kwargs["scheduler_gpu_nodes"],
                             gpu_replica_set.PLURAL: kwargs["scheduler_replica_sets"],
                             sized_volume.PLURAL: kwargs["scheduler_volumes"]}
        scheduler.tasks.append(asyncio.create_task(_run(scheduler)))


@kopf.on.cleanup()
def stop_scheduler(memo: kopf.Memo, **_: Any) -> None:
    scheduler = _of(memo)
    for task in scheduler.tasks if scheduler is not None else ():
        task.cancel()


async def _run(scheduler: Scheduler) -> None:
    settings = scheduler.settings
    kube = await asyncio.to_thread(KubeApi, settings.kubeconfig)
    elector = LeaderElector(Leases(kube.api_client), settings.lease_namespace,
                            f"{settings.identity}_{uuid.uuid4().hex[:8]}")
    pass_settings = PassSettings(SchedulingPolicy(settings.policy),
                                 settings.heartbeat_seconds)
    await _elect_and_schedule(scheduler, elector, lambda fleet: asyncio.to_thread(
        _one_pass, kube, pass_settings, scheduler.cache, fleet))


async def _elect_and_schedule(scheduler: Scheduler, elector: LeaderElector,
                              one_pass: Callable[[FleetSnapshot], Awaitable[None]],
                              ) -> None:
    """Try the Lease every RETRY_SECONDS; while leading, a pass whenever the fleet
    changed and at least every RESCHEDULE_SECONDS. A follower only waits for its
    next try of the Lease: the fleet's changes (the cache's wake, which only a pass
    clears) are the leader's, and waiting on them would wake it at once, again and
    again (a follower spun a core so, found by the soak)."""
    cache = scheduler.cache
    loop = asyncio.get_running_loop()
    last_pass = last_try = -RESCHEDULE_SECONDS
    while True:
        try:
            if loop.time() - last_try >= RETRY_SECONDS:  # the Lease: every retry period
                last_try = loop.time()
                await asyncio.to_thread(elector.step)
            due = loop.time() - last_pass >= RESCHEDULE_SECONDS
            if elector.leading and (cache.wake.is_set() or due):
                cache.wake.clear()
                last_pass = loop.time()
                await one_pass(cache.snapshot(scheduler.watched()))
        except Exception as exc:  # the scheduler must outlive any one failure
            logger.warning("scheduling pass failed, will retry: %s", exc)
        wait = max(0.05, RETRY_SECONDS - (loop.time() - last_try))
        if elector.leading:  # until the fleet changes, or the next try of the Lease
            await asyncio.to_thread(cache.wake.wait, wait)
        else:
            await asyncio.sleep(wait)


def _one_pass(kube: KubeApi, settings: PassSettings, cache: FleetCache,
              fleet: FleetSnapshot) -> None:
    one = SchedulingPass(kube, settings, utc_now())
    logger.debug("scheduling pass over %d nodes, %d GpuReplicaSets, %d SizedVolumes",
                 len(fleet.gpu_nodes), len(fleet.replica_sets), len(fleet.volumes))
    one.run(fleet)
    for _plural, body in one.written:  # (wakes the loop: one more pass, which finds
        cache.note_written(body)       # nothing left to write)
