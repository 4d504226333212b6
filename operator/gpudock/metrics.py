"""The agent's Prometheus metrics (prometheus_client), served on --metrics-port.

Each metric is documented in docs/metrics.md. They live in one registry of their own,
so a test (or a second agent in one process) reads exactly this agent's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

T = TypeVar("T")
REGISTRY = CollectorRegistry(auto_describe=True)
_STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

GPUS_TOTAL = Gauge("gpudock_gpus_total", "GPUs of the node", ["node"], registry=REGISTRY)
GPU_HEALTH = Gauge("gpudock_gpu_health",
                   "1 for the health state each GPU is in (Healthy, Unhealthy), else 0 "
                   "(docs/gpu-health.md)", ["node", "gpu", "uuid", "state"], registry=REGISTRY)
GPU_UTILIZATION = Gauge("gpudock_gpu_utilization_percent",
                        "Percent of the last sample period a kernel ran on the GPU",
                        ["node", "gpu", "uuid"], registry=REGISTRY)
GPU_MEMORY_USED = Gauge("gpudock_gpu_memory_used_bytes", "GPU memory used now",
                        ["node", "gpu", "uuid"], registry=REGISTRY)
# Metrics that name instances: served only with --instance-metrics (instance_metrics()),
# as whoever can scrape the node reads them (docs/security.md).
INSTANCE_GPU_UTILIZATION = Gauge("gpudock_instance_gpu_utilization_percent",
                                 "Percent of the last sample period a kernel ran on each "
                                 "GPU an instance holds", ["namespace", "name", "gpu", "uuid"],
                                 registry=None)
INSTANCE_GPU_MEMORY_USED = Gauge("gpudock_instance_gpu_memory_used_bytes",
                                 "GPU memory used now on each GPU an instance holds",
                                 ["namespace", "name", "gpu", "uuid"], registry=None)
INSTANCE_GPU_SECONDS = Counter("gpudock_instance_gpu_seconds",
                               "GPU-seconds held by each instance's running container "
                               "(GPUs x seconds, counted at each GpuNode write)",
                               ["namespace", "name"], registry=None)
INSTANCE_METRICS = (INSTANCE_GPU_UTILIZATION, INSTANCE_GPU_MEMORY_USED, INSTANCE_GPU_SECONDS)
GPUS_ALLOCATED = Gauge("gpudock_gpus_allocated",
                       "GPUs held by gpudock containers on the node (from Docker's labels)",
                       ["node"], registry=REGISTRY)
RESOURCES = Gauge("gpudock_resources", "Resources this agent handles, by kind and phase",
                  ["kind", "phase"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("gpudock_reconcile_duration_seconds",
                              "Time of one reconcile of one resource (all its steps)",
                              ["kind"], buckets=_STEP_BUCKETS, registry=REGISTRY)
RECONCILE_ERRORS = Counter("gpudock_reconcile_errors_total",
                           "Reconciles that ended on an error, by the condition reason",
                           ["kind", "reason"], registry=REGISTRY)
STEP_SECONDS = Histogram("gpudock_rollout_step_duration_seconds",
                         "Time of one step of a rollout (StopContainer, PreserveDisk, ...)",
                         ["step"], buckets=_STEP_BUCKETS, registry=REGISTRY)
EXEC_SECONDS = Histogram("gpudock_exec_duration_seconds",
                         "Time of an ExecRequest's command, start to exit", [],
                         buckets=_STEP_BUCKETS, registry=REGISTRY)
COMMIT_SECONDS = Histogram("gpudock_commit_duration_seconds",
                           "Time of an ImageCommit", [], buckets=_STEP_BUCKETS,
                           registry=REGISTRY)
DISK_SECONDS = Histogram("gpudock_disk_save_duration_seconds",
                         "Time of a GpuReplicaSet's disk work between revisions: a "
                         "writable layer saved or put into the next container, or a "
                         "commit (and its flattening)", ["how"], buckets=_STEP_BUCKETS,
                         registry=REGISTRY)
DOCKER_REQUESTS = Counter("gpudock_docker_requests_total",
                          "Requests the agent made to Docker's API, by HTTP method",
                          ["method"], registry=REGISTRY)
STATUS_WRITES = Counter("gpudock_status_writes_total",
                        "Status patches the agent wrote, by kind (a patch is made only "
                        "when the status changed)", ["kind"], registry=REGISTRY)
OBSERVATIONS = Counter("gpudock_observations_total",
                       "Observation passes of a reconcile (Docker, the revision store "
                       "and the node read, then planned), by kind", ["kind"],
                       registry=REGISTRY)
STORE_SECONDS = Histogram("gpudock_revision_store_duration_seconds",
                          "Latency of revision store operations", ["operation"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25, 0.5, 1, 2.5),
                          registry=REGISTRY)


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(*labels) if labels else histogram).observe(
            time.perf_counter() - started)


def timed_call(histogram: Histogram, label: str, call: Callable[[], T]) -> T:
    with timed(histogram, label):
        return call()


def set_phases(kind: str, phases: dict[str, str]) -> None:
    """The resources of a kind by phase, from {uid: phase}; phases no resource has
    any more drop to 0."""
    counts: dict[str, int] = {}
    for phase in phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for seen_kind, phase in list(_SEEN_PHASES):
        if seen_kind == kind and phase not in counts:
            RESOURCES.labels(kind, phase).set(0)
    for phase, count in counts.items():
        _SEEN_PHASES.add((kind, phase))
        RESOURCES.labels(kind, phase).set(count)


_SEEN_PHASES: set[tuple[str, str]] = set()


def instance_metrics() -> None:
    """Serve the metrics that name instances too (--instance-metrics)."""
    for collector in INSTANCE_METRICS:
        if collector not in REGISTRY._collector_to_names:
            REGISTRY.register(collector)


def serve(port: int) -> None:
    """Serve /metrics on all addresses (the DaemonSet's pod IP) at ``port``."""
    start_http_server(port, registry=REGISTRY)
