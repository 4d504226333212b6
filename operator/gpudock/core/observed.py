"""What the agent observed on the node, as plain values the core can decide on."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpudock.api.container_fields import Protocol
from gpudock.core.limits import ContainerLimits


@dataclass(frozen=True)
class ResourceKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class HostPort:
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class ObservedContainer:
    """A container on the node; ``owner`` is set for containers gpudock made."""

    id: str
    name: str
    status: str  # Docker's: created, running, paused, restarting, exited, dead
    owner: ResourceKey | None = None
    uid: str = ""
    revision: int = 0
    gpus: tuple[str, ...] = ()
    address: str = ""  # on the instance network, from its label ("": none)
    spec_hash: str = ""
    base_image: str = ""  # the spec image its disk descends from
    image: str = ""  # the image it was created from (a saved disk's, or base_image)
    image_id: str = ""  # the ID ``image`` had when the container was created
    # Its writable layer's directory on overlay2 (GraphDriver.Data.UpperDir); "" on
    # other storage drivers.
    upper_dir: str = ""
    # (container port, protocol) -> host port, from HostConfig.PortBindings
    port_bindings: dict[tuple[int, Protocol], int] = field(default_factory=dict)
    restart_policy: str = ""
    node: str = ""  # the gpudock.dev/node label ("" on containers made before it)
    volumes: dict[str, str] = field(default_factory=dict)  # mount path -> Docker volume
    # What Docker says of the process: the last exit, restarts by the restart policy
    # since the container was last started, when it last started and finished
    # (RFC 3339 with Docker's nanoseconds; "" when never).
    exit_code: int = 0
    restart_count: int = 0
    oom_killed: bool = False
    started_at: str = ""
    finished_at: str = ""
    # Its HostConfig's CPU, memory, pids and /dev/shm limits, as Docker has them now.
    limits: ContainerLimits = field(default_factory=ContainerLimits)

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting")

    @property
    def host_ports(self) -> set[HostPort]:
        return {HostPort(host, proto) for (_, proto), host in self.port_bindings.items()}


@dataclass(frozen=True)
class ImageInfo:
    """What Docker says of an image: its ID, tags and the gpudock owner its labels name
    (a saved disk carries its container's labels), if any."""

    id: str
    repo_tags: tuple[str, ...] = ()
    owner: tuple[str, str, str] | None = None  # (namespace, name, uid)
    volumes: tuple[str, ...] = ()  # the image config's VOLUME paths


def current_of(containers: tuple[ObservedContainer, ...], key: ResourceKey,
               uid: str) -> ObservedContainer | None:
    """A resource's container of the highest revision (older ones are leftovers of a
    rollout)."""
    return max((c for c in containers if c.owner == key and c.uid == uid),
               key=lambda c: c.revision, default=None)
