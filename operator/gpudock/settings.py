"""The agent's settings: one frozen object, read from flags or GPUDOCK_* variables.

Every setting has a flag and an environment variable (``--node-name`` and
``GPUDOCK_NODE_NAME``); a flag wins over the variable, the variable over the default.
Repeatable flags (``--allowed-host-path``) take a ``:``-separated list in the variable.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpudock import crash_points
from gpudock.adapters.volumes.registry import BACKENDS as VOLUME_BACKENDS
from gpudock.api.image_commit import DEFAULT_REPOSITORY_TEMPLATE, template_problem
from gpudock.api.paths import root_problem
from gpudock.core.gpu_attach import (
    DEFAULT_ATTACHMENT,
    DEFAULT_GPU_ATTACH,
    GPU_ATTACHMENTS,
    GpuAttachment,
)
from gpudock.core.limits import LimitDefaults
from gpudock.settings_values import (
    SettingsError as SettingsError,  # raised by settings_from; its callers catch it here
)
from gpudock.settings_values import (
    instance_metrics_on,
    migration_values,
    on_off,
    one_of,
    per_gpu_defaults,
    port_or_off,
    positive,
    probe_command,
    probe_period,
)

ENV_PREFIX = "GPUDOCK_"


class GpuBackend(enum.StrEnum):
    NVML = "nvml"
    SIMULATED = "simulated"


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        try:
            first_text, last_text = text.split("-")
            first, last = int(first_text), int(last_text)
        except ValueError as exc:
            raise SettingsError(f"port range {text!r} must look like 40000-65535") from exc
        if not 1 <= first <= last <= 65535:
            raise SettingsError(f"port range {text!r} must satisfy 1 <= first <= last <= 65535")
        return cls(first, last)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


DEFAULT_INSTANCE_SUBNET = "172.30.252.0/22"  # 1021 instances


def instance_subnet(text: str) -> str:
    """An IPv4 subnet of at least one instance address (a /30 or larger), normalized."""
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise SettingsError(f"--instance-subnet {text!r} must be an IPv4 subnet such as "
                            f"{DEFAULT_INSTANCE_SUBNET} (host bits zero)") from exc
    if subnet.prefixlen > 30:
        raise SettingsError(f"--instance-subnet {text!r} holds no instance address: the "
                            "network, gateway and broadcast addresses need a /30 or larger")
    return str(subnet)


# How a stopped container's disk is saved: "layer" copies its overlay2 writable layer
# (docker commit where that cannot be done), "commit" always commits.
# layer: copied while the container runs, the rest after the stop, its own layer moved
# into the next container; layer-stopped: both copies after the stop (the way before
# #23 item 6, kept to compare); commit: docker commit.
DISK_SAVES = ("layer", "layer-stopped", "commit")


@dataclass(frozen=True)
class Settings:
    node_name: str
    kubeconfig: str | None = None  # None: in-cluster, then ~/.kube/config
    docker_host: str | None = None  # None: the Docker SDK's default (DOCKER_HOST, socket)
    gpu_backend: GpuBackend = GpuBackend.NVML
    simulated_gpus: int = 0
    nvml_library: str | None = None  # load this libnvidia-ml.so.1 first (tests, odd hosts)
    # How a container gets its GPUs: the --gpu-attach way (core/gpu_attach.py).
    gpu_attach: GpuAttachment = DEFAULT_ATTACHMENT
    store: str = ""  # "sqlite:PATH" or "etcd://HOST:PORT"; "" is sqlite under state_dir
    port_range: PortRange = field(default_factory=lambda: PortRange(40000, 65535))
    # hostPath roots; one with {namespace} is a root per namespace (api/paths.py),
    # one without it is shared by every namespace.
    allowed_host_paths: tuple[str, ...] = ()
    read_only_host_paths: tuple[str, ...] = ()  # allowed too, for readOnly mounts only
    allowed_host_ports: PortRange | None = None  # explicit hostPorts; None: port_range
    state_dir: Path = Path("/var/lib/gpudock")
    resync_seconds: float = 30.0
    heartbeat_seconds: float = 30.0  # GpuNode status; a node silent 3x this is NotReady
    metrics_port: int = 0  # Prometheus metrics; 0: off
    # GpuNode holders say only that a GPU or port is held, not by which namespace/name.
    hide_holder_names: bool = False
    volume_backend: str = "loopfile"  # SizedVolume backend for new volumes
    volume_root: Path | None = None  # where volumes live; None: <state_dir>/volumes

    @property
    def volumes_at(self) -> Path:
        return self.volume_root or self.state_dir / "volumes"
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    stop_timeout: float = 30.0  # seconds between SIGTERM and SIGKILL when stopping
    max_image_layers: int = 100  # a saved disk with more layers is flattened to one
    disk_saves: str = "layer"  # one of DISK_SAVES
    liveness_endpoint: str | None = None  # e.g. http://0.0.0.0:8080/healthz
    crash_at: tuple[str, ...] = ()  # crash tests: SIGKILL itself at these points
    # ExecRequests and ImageCommits running at once on the node, each on a thread of
    # their own pool (never the reconciles'); more wait Pending.
    max_running_requests: int = 32
    # ExecRequests of one namespace running at once on the node; more wait Pending.
    max_running_execs_per_namespace: int = 8
    # Where a namespace's ImageCommits may write images ({namespace} replaced).
    commit_repository_template: str = DEFAULT_REPOSITORY_TEMPLATE
    # The Docker bridge network the agent makes for its instances, and its subnet: each
    # instance has a fixed address there, the same in every revision; the subnet's
    # size caps the instances of the node (docs/security.md).
    instance_network: str = "gpudock"
    instance_subnet: str = DEFAULT_INSTANCE_SUBNET
    # Per-GPU CPU, memory and /dev/shm of an instance that sets none (0: none).
    limit_defaults: LimitDefaults = field(default_factory=LimitDefaults)
    # The cluster scheduler in this agent (auto: a candidate for the Lease; off: none).
    scheduler: str = "auto"
    scheduling_policy: str = "Binpack"  # for resources that name no policy
    release_namespace: str = "default"  # where the scheduler's Lease lives
    # #26: `kubectl gpudock logs` streams, served over TLS at this address:port (port
    # 0: off), each caller's token and permission checked by the API server.
    stream_port: int = 0
    stream_address: str = "127.0.0.1"
    stream_idle_seconds: float = 300.0
    # GPU health (docs/gpu-health.md): a JSON-lines file of simulated faults (the
    # simulated backend), and how long a transient fault keeps a GPU out of service.
    simulated_faults: str | None = None
    simulated_usage: str | None = None  # a JSON file of each GPU's usage (tests)
    # Serve the usage metrics that name instances (docs/security.md): off by default.
    instance_metrics: bool = False
    gpu_readmit_seconds: float = 600.0
    # The GPU access probe (agent/gpu_access.py): its period (0: off) and command.
    gpu_access_probe_seconds: float = 0.0
    gpu_access_probe_command: tuple[str, ...] = ("nvidia-smi", "-L")
    # Migration (#23, docs/migration.md): where this agent receives migrated disks
    # ("" listens on every address and advertises the node's first address), the
    # cap on what it sends (bytes/s, 0: none), migrations out of the node at once.
    transfer_address: str = ""
    transfer_port: int = 9465
    migration_bandwidth: int = 0
    max_outbound_migrations: int = 2
    # How long a migration waits for a node with room (none can take it, or the one
    # chosen refuses for room) before it fails TargetUnschedulable.
    migration_target_wait: float = 300.0
    # How long the target must have served a moved instance, Ready, before the source
    # lets go of its stopped container, GPUs, ports and disk; and how long the target
    # may say it cannot run it before it gives it back (docs/migration.md).
    migration_hold_seconds: float = 10.0

    def scheduler_settings(self) -> SchedulerSettings:
        return SchedulerSettings(self.node_name, self.kubeconfig, self.namespaces,
                                 self.release_namespace, self.scheduling_policy,
                                 self.heartbeat_seconds)

    @property
    def explicit_port_range(self) -> PortRange:
        """Where an explicit spec hostPort may lie."""
        return self.allowed_host_ports or self.port_range

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:{self.state_dir / 'revisions.sqlite3'}"


@dataclass(frozen=True)
class SchedulerSettings:
    """The cluster scheduler's, in an agent or alone (``gpudock scheduler``)."""

    identity: str                   # this candidate's name for the Lease (+ a suffix)
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all
    lease_namespace: str = "default"
    policy: str = "Binpack"
    heartbeat_seconds: float = 30.0  # a GpuNode silent 3x this is not Ready


SCHEDULER_MODES = ("auto", "off")
POLICIES = ("Binpack", "Spread")


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Combine parsed flags with GPUDOCK_* variables; raises SettingsError."""
    env = os.environ if environ is None else environ

    def pick(name: str) -> str | None:
        value = getattr(args, name, None)
        if value is None:
            value = env.get(ENV_PREFIX + name.upper()) or None
        return None if value is None else str(value)

    def pick_list(name: str, env_name: str) -> tuple[str, ...]:
        values: Sequence[str] | None = getattr(args, name, None)
        if values is None:
            raw = env.get(ENV_PREFIX + env_name, "")
            values = [v for v in raw.split(":") if v]
        return tuple(values)

    backend = GpuBackend(pick("gpu_backend") or GpuBackend.NVML)
    simulated = int(pick("simulated_gpus") or 8)
    if simulated < 0:
        raise SettingsError("--simulated-gpus must be >= 0")
    allowed = pick_list("allowed_host_path", "ALLOWED_HOST_PATHS")
    read_only = pick_list("read_only_host_path", "READ_ONLY_HOST_PATHS")
    for flag, roots in (("--allowed-host-path", allowed), ("--read-only-host-path", read_only)):
        for root in roots:
            problem = root_problem(root)
            if problem is not None:
                raise SettingsError(f"{flag} {root!r} {problem}")
    explicit_ports = pick("allowed_host_ports")
    store = pick("store") or ""
    if store and not (store.startswith("sqlite:") or store.startswith("etcd://")):
        raise SettingsError(f"--store {store!r} must be sqlite:PATH or etcd://HOST:PORT")
    stop_timeout = float(pick("stop_timeout") or 30.0)
    if stop_timeout < 0:
        raise SettingsError("--stop-timeout must be >= 0")
    max_layers = int(pick("max_image_layers") or 100)
    if not 1 <= max_layers <= 120:
        raise SettingsError("--max-image-layers must be between 1 and 120")
    disk_saves = pick("disk_saves") or "layer"
    if disk_saves not in DISK_SAVES:
        raise SettingsError(f"--disk-saves must be one of {', '.join(DISK_SAVES)}")
    try:
        crash_at = crash_points.check(pick_list("crash_at", "CRASH_AT"))
    except crash_points.UnknownCrashPointError as exc:
        raise SettingsError(str(exc)) from exc
    resync = float(pick("resync_seconds") or 30.0)
    if resync <= 0:
        raise SettingsError("--resync-seconds must be > 0")
    volume_backend = pick("volume_backend") or "loopfile"
    if volume_backend not in VOLUME_BACKENDS:
        raise SettingsError(f"--volume-backend must be one of {', '.join(VOLUME_BACKENDS)}")
    volume_root = pick("volume_root")
    metrics_port = int(pick("metrics_port") or 0)
    if not 0 <= metrics_port <= 65535:
        raise SettingsError("--metrics-port must be 0 (off) or a port")
    gpu_attach = pick("gpu_attach") or DEFAULT_GPU_ATTACH
    if gpu_attach not in GPU_ATTACHMENTS:
        raise SettingsError(f"--gpu-attach must be one of {', '.join(GPU_ATTACHMENTS)}")
    hide_holder_names = on_off(pick("hide_holder_names"), "--hide-holder-names")
    heartbeat = float(pick("heartbeat_seconds") or 30.0)
    if heartbeat <= 0:
        raise SettingsError("--heartbeat-seconds must be > 0")
    max_requests = int(pick("max_running_requests") or 32)
    if max_requests < 1:
        raise SettingsError("--max-running-requests must be >= 1")
    max_execs = int(pick("max_running_execs_per_namespace") or 8)
    if max_execs < 1:
        raise SettingsError("--max-running-execs-per-namespace must be >= 1")
    commit_template = pick("commit_repository_template") or DEFAULT_REPOSITORY_TEMPLATE
    problem = template_problem(commit_template)
    if problem is not None:
        raise SettingsError(f"--commit-repository-template {commit_template!r} {problem}")
    limit_defaults = per_gpu_defaults(pick("cpus_per_gpu"), pick("memory_per_gpu"),
                                     pick("shm_per_gpu"))
    return Settings(
        node_name=pick("node_name") or socket.gethostname(),
        kubeconfig=pick("kubeconfig"),
        docker_host=pick("docker_host"),
        gpu_backend=backend,
        simulated_gpus=simulated,
        nvml_library=pick("nvml_library"),
        gpu_attach=GPU_ATTACHMENTS[gpu_attach],
        store=store,
        port_range=PortRange.parse(pick("port_range") or "40000-65535"),
        allowed_host_paths=allowed,
        read_only_host_paths=read_only,
        allowed_host_ports=PortRange.parse(explicit_ports) if explicit_ports else None,
        state_dir=Path(pick("state_dir") or "/var/lib/gpudock"),
        resync_seconds=resync,
        heartbeat_seconds=heartbeat,
        metrics_port=metrics_port,
        hide_holder_names=hide_holder_names,
        volume_backend=volume_backend,
        volume_root=Path(volume_root) if volume_root else None,
        namespaces=pick_list("namespace", "NAMESPACES"),
        liveness_endpoint=pick("liveness_endpoint"),
        stop_timeout=stop_timeout,
        max_image_layers=max_layers,
        disk_saves=disk_saves,
        crash_at=crash_at,
        max_running_requests=max_requests,
        max_running_execs_per_namespace=max_execs,
        commit_repository_template=commit_template,
        instance_network=pick("instance_network") or "gpudock",
        instance_subnet=instance_subnet(pick("instance_subnet") or DEFAULT_INSTANCE_SUBNET),
        limit_defaults=limit_defaults,
        scheduler=one_of(pick("scheduler") or "auto", SCHEDULER_MODES, "--scheduler"),
        scheduling_policy=one_of(pick("scheduling_policy") or "Binpack", POLICIES,
                                  "--scheduling-policy"),
        release_namespace=pick("release_namespace") or env.get("POD_NAMESPACE") or "default",
        stream_port=port_or_off(pick("stream_port"), "--stream-port"),
        stream_address=pick("stream_address") or "127.0.0.1",
        stream_idle_seconds=float(pick("stream_idle_seconds") or 300.0),
        simulated_faults=pick("simulated_faults"),
        simulated_usage=pick("simulated_usage"),
        instance_metrics=instance_metrics_on(pick("instance_metrics"), hide_holder_names),
        gpu_readmit_seconds=positive(pick("gpu_readmit_seconds"), 600.0,
                                      "--gpu-readmit-seconds"),
        gpu_access_probe_seconds=probe_period(pick("gpu_access_probe_seconds")),
        gpu_access_probe_command=probe_command(pick("gpu_access_probe_command")),
        **migration_values(pick),
    )
