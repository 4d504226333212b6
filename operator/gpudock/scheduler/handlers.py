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
from dataclasses import dataclass, field
from typing import Any

import kopf

from gpudock.adapters.kube_api import KubeApi
from gpudock.adapters.kube_leases import Leases
from gpudock.api import GROUP, VERSION, gpu_replica_set, sized_volume
from gpudock.api.placement import SchedulingPolicy
from gpudock.core.times import utc_now
from gpudock.scheduler.binder import PassSettings, SchedulingPass
from gpudock.scheduler.fleet_cache import GPU_NODES, FleetCache
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


def _of(memo: kopf.Memo) -> Scheduler | None:
    scheduler = memo.get(MEMO_KEY)
    return scheduler if isinstance(scheduler, Scheduler) else None


def _note(plural: str, event: kopf.RawEvent, memo: kopf.Memo) -> None:
    scheduler = _of(memo)
    body = event.get("object") if isinstance(event, dict) else None
    if scheduler is not None and isinstance(body, dict):
        scheduler.cache.note(plural, str(event.get("type")), body)


@kopf.on.event(GROUP, VERSION, gpu_replica_set.PLURAL)
def watch_replica_sets(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _note(gpu_replica_set.PLURAL, event, memo)


@kopf.on.event(GROUP, VERSION, sized_volume.PLURAL)
def watch_volumes(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _note(sized_volume.PLURAL, event, memo)


@kopf.on.event(GROUP, VERSION, GPU_NODES)
def watch_gpu_nodes(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _note(GPU_NODES, event, memo)


@kopf.on.startup()
async def start_scheduler(memo: kopf.Memo, **_: Any) -> None:
    scheduler = _of(memo)
    if scheduler is not None:
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
                await asyncio.to_thread(_one_pass, kube, pass_settings, cache)
        except Exception as exc:  # the scheduler must outlive any one failure
            logger.warning("scheduling pass failed, will retry: %s", exc)
        # Until the fleet changes, or the next try of the Lease.
        wait = max(0.05, RETRY_SECONDS - (loop.time() - last_try))
        await asyncio.to_thread(cache.wake.wait, wait)


def _one_pass(kube: KubeApi, settings: PassSettings, cache: FleetCache) -> None:
    one = SchedulingPass(kube, settings, utc_now())
    fleet = cache.snapshot()
    logger.debug("scheduling pass over %d nodes, %d GpuReplicaSets, %d SizedVolumes",
                 len(fleet.gpu_nodes), len(fleet.replica_sets), len(fleet.volumes))
    one.run(fleet)
    for plural, body in one.written:  # (wakes the loop: one more pass, which finds
        cache.note(plural, "MODIFIED", body)  # nothing left to write)
