"""What each instance does with its GPUs, at each GpuNode write: per-GPU utilization
and memory used as metrics labelled with the holder, GPU-seconds held per instance (a
counter a platform can bill by), and how long each instance's GPUs have been idle,
for spec.idleStopSeconds (docs/gpu-health.md, "Usage" and "Idle stop")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gpudock import metrics
from gpudock.adapters.kube_api import KubeApi
from gpudock.api import GROUP, VERSION, gpu_replica_set
from gpudock.api.reasons import Reason
from gpudock.core.gpus import GpuDevice
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.errors import GpudockError

log = logging.getLogger(__name__)


class UsageMeter:
    """Kept across GpuNode writes: when the last one was, and since when each
    instance's GPUs are idle (monotonic seconds)."""

    def __init__(self, node_name: str, name_instances: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._node = node_name
        self._named = name_instances  # --instance-metrics
        self._clock = clock
        self._last: float | None = None
        self._idle_since: dict[ResourceKey, float] = {}

    def record(self, devices: Sequence[GpuDevice],
               containers: Iterable[ObservedContainer]) -> dict[ResourceKey, float]:
        """Write the metrics; returns, for each running instance holding GPUs that
        are all idle (no utilization, no process), how long they have been so."""
        running = [c for c in containers if c.owner is not None and c.running and c.gpus]
        holders = {gpu: c.owner for c in running for gpu in c.gpus}
        for gauge in (metrics.INSTANCE_GPU_UTILIZATION, metrics.INSTANCE_GPU_MEMORY_USED):
            gauge.clear()  # holders change
        for device in devices:
            labels = (self._node, str(device.index), device.uuid)
            owner = holders.get(device.uuid)
            named = (owner.namespace, owner.name, str(device.index), device.uuid) \
                if owner is not None and self._named else None
            if device.utilization is not None:
                metrics.GPU_UTILIZATION.labels(*labels).set(device.utilization)
                if named:
                    metrics.INSTANCE_GPU_UTILIZATION.labels(*named).set(device.utilization)
            if device.memory_used_bytes is not None:
                metrics.GPU_MEMORY_USED.labels(*labels).set(device.memory_used_bytes)
                if named:
                    metrics.INSTANCE_GPU_MEMORY_USED.labels(*named).set(
                        device.memory_used_bytes)
        now = self._clock()
        elapsed = 0.0 if self._last is None else now - self._last
        self._last = now
        by_uuid = {d.uuid: d for d in devices}
        idle: dict[ResourceKey, float] = {}
        for container in running:
            owner = container.owner
            assert owner is not None
            if self._named:
                metrics.INSTANCE_GPU_SECONDS.labels(owner.namespace, owner.name).inc(
                    len(container.gpus) * elapsed)
            if all(_idle(by_uuid.get(gpu)) for gpu in container.gpus):
                idle[owner] = now - self._idle_since.setdefault(owner, now)
        self._idle_since = {k: v for k, v in self._idle_since.items() if k in idle}
        return idle

    def forget(self, key: ResourceKey) -> None:
        self._idle_since.pop(key, None)


def _idle(device: GpuDevice | None) -> bool:
    """Idle: the backend says no utilization and no process (unknown is not idle)."""
    return device is not None and device.utilization == 0 and device.processes == 0


def idle_stop_seconds(entry: Mapping[str, Any]) -> int:
    """spec.idleStopSeconds of a watched GpuReplicaSet (node_health.watched); 0: never."""
    value = (entry.get("spec") or {}).get("idleStopSeconds")
    return value if isinstance(value, int) and value > 0 else 0


def stop_idle(kube: KubeApi, meter: UsageMeter, idle: Mapping[ResourceKey, float],
              watched: Iterable[Mapping[str, Any]], now: str) -> list[str]:
    """Set spec.state Stopped on each instance idle for its spec.idleStopSeconds
    (the disk is saved and its GPUs freed as for any Stopped), with an event
    IdleStopped; returns what was done, for the log."""
    done = []
    for entry in watched:
        meta = entry.get("metadata") or {}
        key = ResourceKey(str(meta.get("namespace")), str(meta.get("name")))
        limit = idle_stop_seconds(entry)
        if not limit or key not in idle or idle[key] < limit:
            continue
        if (entry.get("spec") or {}).get("state", "Running") != "Running":
            continue
        message = (f"its GPUs had no utilization and no process for {idle[key]:.0f}s "
                   f"(spec.idleStopSeconds {limit}): spec.state set to Stopped; the disk "
                   "is kept, the GPUs are freed. Set spec.state Running to start it again")
        try:
            kube.patch_spec(gpu_replica_set.PLURAL, key.namespace, key.name,
                            {"state": "Stopped"})
            kube.post_event({"apiVersion": f"{GROUP}/{VERSION}",
                             "kind": gpu_replica_set.KIND, "metadata": dict(meta)},
                            "Normal", Reason.IDLE_STOPPED, message, "gpudock-agent", now)
        except GpudockError as exc:
            log.warning("idle stop of %s/%s: %s", key.namespace, key.name, exc)
            continue
        meter.forget(key)
        done.append(f"{key.namespace}/{key.name}: {message}")
    return done
