"""The GpuReplicaSet resource: spec and status models.

``GpuReplicaSetSpec.parse`` turns ``body["spec"]`` into a frozen, normalized value; the
CRD schema already refuses most bad input, the parser refuses the rest (and anything an
older schema let through) with a :class:`~gpudock.errors.SpecError`. The container
fields below the spec's top level (env, ports, mounts, ...) are in container_fields.py.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gpudock.api.conditions import Condition
from gpudock.api.container_fields import (
    MAX_COMMAND_ITEMS,
    MAX_ENV_ITEMS,
    MAX_HOST_ALIASES,
    MAX_TOTAL_BYTES,
    MAX_VALUE_LENGTH,
    DnsConfig,
    EnvVar,
    HostAlias,
    MountSpec,
    PortSpec,
    Protocol,
    dns_option_dict,
    parse_dns,
    parse_env,
    parse_host_aliases,
    parse_mounts,
    parse_ports,
)
from gpudock.api.container_limits import (
    IN_PLACE_FIELDS,
    Resources,
    parse_pids_limit,
    parse_resources,
    parse_shm_size,
)
from gpudock.api.parsing import (
    RawDict,
    as_dict,
    get_bool,
    get_choice,
    get_int,
    get_list,
    get_node_name,
    get_object_name,
    get_str,
)
from gpudock.api.quantity import format_size
from gpudock.api.reasons import Reason
from gpudock.errors import SpecError

KIND = "GpuReplicaSet"
PLURAL = "gpureplicasets"
MAX_GPU_COUNT = 64


class DesiredState(enum.StrEnum):
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPED = "Stopped"


class HistoryPolicy(enum.StrEnum):
    RETAIN = "Retain"
    PURGE = "Purge"


class PullPolicy(enum.StrEnum):
    """When the image is pulled, as a container is created (Kubernetes' values)."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


def default_pull_policy(image: str) -> PullPolicy:
    """Kubernetes' defaulting: Always for ``:latest`` or no tag (and no digest), else
    IfNotPresent."""
    if "@" in image:
        return PullPolicy.IF_NOT_PRESENT
    last = image.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else ""
    return PullPolicy.ALWAYS if tag in ("", "latest") else PullPolicy.IF_NOT_PRESENT


MAX_PULL_SECRETS = 16


def _parse_pull_secrets(items: list[Any]) -> tuple[str, ...]:
    names = []
    for i, item in enumerate(items):
        names.append(get_object_name(as_dict(item, f"spec.imagePullSecrets[{i}]"), "name",
                                     f"spec.imagePullSecrets[{i}]"))
    return tuple(dict.fromkeys(names))
class GpuFailurePolicy(enum.StrEnum):
    """What happens to an instance whose GPU turns Unhealthy (docs/gpu-health.md)."""

    KEEP = "Keep"  # it keeps running on it, Degraded GPUUnhealthy
    REPLACE = "Replace"  # a new revision on a healthy free GPU, the disk kept


@dataclass(frozen=True)
class GpuReplicaSetSpec:
    node_name: str
    image: str
    command: tuple[str, ...] = ()
    gpu_count: int = 0
    env: tuple[EnvVar, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    state: DesiredState = DesiredState.RUNNING
    revision_history_limit: int = 10
    history_policy: HistoryPolicy = HistoryPolicy.RETAIN
    rollback_to: int | None = None
    host_aliases: tuple[HostAlias, ...] = ()
    dns: DnsConfig | None = None
    # Docker's init (tini) as PID 1, reaping zombies and passing SIGTERM on: a shell
    # or `sleep infinity` as PID 1 ignores SIGTERM, and every stop would wait out the
    # whole stop timeout (docs/gpu-replica-sets.md, "PID 1").
    init: bool = True
    # CPU, memory, /dev/shm and process limits (api/container_limits.py; None or
    # unset: the node's per-GPU defaults, core/limits.py).
    resources: Resources = field(default_factory=Resources)
    shm_size: int | None = None
    pids_limit: int | None = None
    # Pulls (docs/fleet.md, "Image pulls"): not part of the shape, so changing them
    # never makes a new revision; they apply when a container is next created.
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    image_pull_secrets: tuple[str, ...] = ()
    gpu_failure_policy: GpuFailurePolicy = GpuFailurePolicy.KEEP  # not part of the shape
    # The annotation gpudock.dev/redeploy's value (core/replica_set/redeploy.py): in
    # the shape when set (a new value, a new revision); unset, any record's matches.
    redeploy: str = ""

    @classmethod
    def parse(cls, raw: RawDict) -> GpuReplicaSetSpec:
        where = "spec"
        command = tuple(get_list(raw, "command", where))
        if not all(isinstance(arg, str) for arg in command):
            raise SpecError("spec.command must be a list of strings")
        if len(command) > MAX_COMMAND_ITEMS or any(len(a) > MAX_VALUE_LENGTH for a in command):
            raise SpecError(f"spec.command may have at most {MAX_COMMAND_ITEMS} arguments "
                            f"of at most {MAX_VALUE_LENGTH} characters")
        rollback_raw = raw.get("rollbackTo")
        rollback_to = (
            None if rollback_raw is None
            else get_int(as_dict(rollback_raw, "spec.rollbackTo"), "revision",
                         "spec.rollbackTo", minimum=1)
        )
        return cls(
            node_name=get_node_name(raw),
            image=get_str(raw, "image", where),
            command=command,
            gpu_count=get_int(raw, "gpuCount", where, default=0, minimum=0,
                              maximum=MAX_GPU_COUNT),
            env=parse_env(get_list(raw, "env", where, max_items=MAX_ENV_ITEMS)),
            ports=parse_ports(get_list(raw, "ports", where)),
            mounts=parse_mounts(get_list(raw, "mounts", where)),
            state=DesiredState(get_choice(raw, "state", where,
                                          tuple(DesiredState), DesiredState.RUNNING)),
            revision_history_limit=get_int(raw, "revisionHistoryLimit", where, default=10,
                                           minimum=0),
            history_policy=HistoryPolicy(get_choice(raw, "historyPolicy", where,
                                                    tuple(HistoryPolicy),
                                                    HistoryPolicy.RETAIN)),
            rollback_to=rollback_to,
            host_aliases=parse_host_aliases(get_list(raw, "hostAliases", where,
                                                      max_items=MAX_HOST_ALIASES)),
            dns=parse_dns(raw.get("dnsConfig")),
            init=get_bool(raw, "init", where, default=True),
            resources=parse_resources(raw.get("resources")),
            shm_size=parse_shm_size(raw.get("shmSize")),
            pids_limit=parse_pids_limit(raw.get("pidsLimit")),
            image_pull_policy=PullPolicy(get_choice(
                raw, "imagePullPolicy", where, tuple(PullPolicy),
                default_pull_policy(get_str(raw, "image", where)))),
            image_pull_secrets=_parse_pull_secrets(get_list(
                raw, "imagePullSecrets", where, max_items=MAX_PULL_SECRETS)),
            gpu_failure_policy=GpuFailurePolicy(get_choice(
                raw, "gpuFailurePolicy", where, tuple(GpuFailurePolicy),
                GpuFailurePolicy.KEEP)),
        )._checked_size()

    def _checked_size(self) -> GpuReplicaSetSpec:
        total = sum(len(e.name.encode()) + len(e.value.encode()) for e in self.env) + \
            sum(len(a.encode()) for a in self.command)
        if total > MAX_TOTAL_BYTES:
            raise SpecError(f"spec.env and spec.command hold {total} bytes together; at "
                            f"most {MAX_TOTAL_BYTES} are allowed (keep large data in a "
                            "file on a volume)")
        return self


    def shape(self) -> dict[str, Any]:
        """The fields that shape the container, normalized, in the resource's own
        camelCase form: what a revision records, what a rollback writes back, what the
        spec hash covers (state, history and rollback settings are not part of it)."""
        return {
            "image": self.image,
            "command": list(self.command),
            "gpuCount": self.gpu_count,
            "env": [{"name": e.name, "value": e.value} for e in self.env],
            "ports": [{"containerPort": p.container_port, "protocol": str(p.protocol),
                       **({} if p.host_port is None else {"hostPort": p.host_port})}
                      for p in self.ports],
            "mounts": [{"mountPath": m.mount_path, "readOnly": m.read_only,
                        **({"volume": m.volume} if m.volume is not None
                           else {"hostPath": m.host_path})}
                       for m in self.mounts],
            # Added later: only in the shape when set, so a container made before these
            # fields existed still matches its spec (no restart on an agent upgrade).
            **({"hostAliases": [{"ip": a.ip, "hostnames": list(a.hostnames)}
                                for a in self.host_aliases]} if self.host_aliases else {}),
            **({"dnsConfig": {"nameservers": list(self.dns.nameservers),
                              "searches": list(self.dns.searches),
                              "options": [dns_option_dict(o) for o in self.dns.options]}}
               if self.dns is not None else {}),
            **({} if self.init else {"init": False}),
            **({"resources": self.resources.shape()} if self.resources.shape() else {}),
            **({"shmSize": format_size(self.shm_size)} if self.shm_size else {}),
            **({"pidsLimit": self.pids_limit} if self.pids_limit else {}),
            **({REDEPLOY_FIELD: self.redeploy} if self.redeploy else {}),
        }

    def matches(self, recorded: Mapping[str, Any]) -> bool:
        """True when a revision recorded with shape ``recorded`` (by any version of
        the agent) is this spec's shape: fields the record lacks count as their
        default, so a field added later does not make every container differ."""
        theirs = _essential(recorded)
        if not self.redeploy:
            theirs.pop(REDEPLOY_FIELD, None)
        return theirs == _essential(self.shape())

    def revision_shape(self) -> dict[str, Any]:
        """The shape without the fields that change in place (what needs a new
        revision when it changes)."""
        return {k: v for k, v in self.shape().items() if k not in IN_PLACE_FIELDS}

    def with_shape(self, shape: RawDict) -> GpuReplicaSetSpec:
        """This spec with another revision's shape (a rollback); raises SpecError."""
        other = GpuReplicaSetSpec.parse({**shape, "nodeName": self.node_name})
        return replace(self, image=other.image, command=other.command,
                       gpu_count=other.gpu_count, env=other.env, ports=other.ports,
                       mounts=other.mounts, rollback_to=None,
                       host_aliases=other.host_aliases, dns=other.dns, init=other.init,
                       resources=other.resources, shm_size=other.shm_size,
                       pids_limit=other.pids_limit)


# What each shape field is when a spec leaves it out. A field added in a later version
# must be listed with its default, so records and containers made before it existed
# still match a spec that leaves it at that default (no restart on an agent upgrade).
SHAPE_DEFAULTS: dict[str, Any] = {
    "command": [], "gpuCount": 0, "env": [], "ports": [], "mounts": [],
    "hostAliases": [], "dnsConfig": None, "init": True,
    "resources": {}, "shmSize": None, "pidsLimit": None,
}


# gpudock.dev/redeploy: its value's key in a shape (core/replica_set/redeploy.py).
REDEPLOY_ANNOTATION, REDEPLOY_FIELD = "gpudock.dev/redeploy", "redeploy"
SHAPE_DEFAULTS[REDEPLOY_FIELD] = ""


def _essential(shape: Mapping[str, Any]) -> dict[str, Any]:
    """The shape's fields that need a new revision when they change, less defaults."""
    return {k: v for k, v in shape.items() if k not in IN_PLACE_FIELDS
            and (k not in SHAPE_DEFAULTS or v != SHAPE_DEFAULTS[k])}



@dataclass(frozen=True)
class PortBinding:
    container_port: int
    host_port: int
    protocol: Protocol = Protocol.TCP

    def to_dict(self) -> dict[str, Any]:
        return {"containerPort": self.container_port, "hostPort": self.host_port,
                "protocol": str(self.protocol)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PortBinding:
        """The inverse of :meth:`to_dict`; KeyError/TypeError/ValueError when malformed."""
        return cls(int(raw["containerPort"]), int(raw["hostPort"]),
                   Protocol(raw.get("protocol", "TCP")))


@dataclass(frozen=True)
class RevisionSummary:
    """One line of ``status.history``: what ``gpudock history`` prints."""

    revision: int
    created_at: str
    change_cause: str
    image: str
    gpu_count: int
    rollback_of: int | None = None
    failed: str | None = None  # why its container never ran ("Reason: message")

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "createdAt": self.created_at,
                # An empty string reaches the API server as null (as for a
                # condition's message), so "no change-cause" is null outright.
                "changeCause": self.change_cause or None, "image": self.image,
                "gpuCount": self.gpu_count, "rollbackOf": self.rollback_of,
                "failed": self.failed}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RevisionSummary:
        """The inverse of :meth:`to_dict`; KeyError/TypeError/ValueError when malformed."""
        return cls(int(raw["revision"]), str(raw.get("createdAt", "")),
                   str(raw.get("changeCause") or ""), str(raw.get("image", "")),
                   int(raw.get("gpuCount", 0)), raw.get("rollbackOf"),
                   raw.get("failed"))


@dataclass(frozen=True)
class GpuReplicaSetStatus:
    phase: str
    observed_generation: int | None = None
    revision: int | None = None
    container_name: str | None = None
    container_id: str | None = None
    gpus: tuple[str, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    # The current container's address on the node's instance network (the same in
    # every revision); None when it has none.
    ip: str | None = None
    conditions: tuple[Condition, ...] = field(default=())
    history: tuple[RevisionSummary, ...] = ()
    reason: Reason | None = None  # of the condition that matters (REASON column)
    process: ProcessStatus | None = None  # of the current container, when there is one
    image_pull: ImagePullProgress | None = None  # the pull under way, when there is one

    def to_dict(self) -> dict[str, Any]:
        """The status as Kubernetes stores it (camelCase; absent values are null)."""
        process = self.process or ProcessStatus()
        return {
            "phase": self.phase,
            "reason": self.reason,
            "observedGeneration": self.observed_generation,
            "revision": self.revision,
            "containerName": self.container_name,
            "containerID": self.container_id,
            "gpus": list(self.gpus),
            "gpuCount": len(self.gpus),
            "ports": [p.to_dict() for p in self.ports],
            "ip": self.ip,
            "restartCount": process.restart_count,
            "lastExitCode": process.last_exit_code,
            "oomKilled": process.oom_killed,
            "startedAt": process.started_at,
            "conditions": [c.to_dict() for c in self.conditions],
            "history": [h.to_dict() for h in self.history],
            "imagePull": self.image_pull.to_dict() if self.image_pull else None,
        }


@dataclass(frozen=True)
class ImagePullProgress:
    """``status.imagePull``: how far the pull of a container's image is."""

    image: str
    layers_done: int = 0
    layers_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "layersDone": self.layers_done,
                "layersTotal": self.layers_total, "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total}


@dataclass(frozen=True)
class ProcessStatus:
    """How the container's process fares: restarts by Docker's restart policy since
    the agent last started it, the last exit (None when it never exited), whether the
    kernel killed it for memory, when it last started."""

    restart_count: int = 0
    last_exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
