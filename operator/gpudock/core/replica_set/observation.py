"""The values a GpuReplicaSet planning pass works with: what it observed
(:class:`Observation`), what it aims the container at (:class:`Target`) and what it
returns (:class:`Plan`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, GpuReplicaSetStatus
from gpudock.core.container_config import ContainerConfig
from gpudock.core.gpu_attach import DEFAULT_ATTACHMENT, GpuAttachment
from gpudock.core.limits import LimitDefaults, NodeCapacity
from gpudock.core.observed import HostPort, ImageInfo, ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.saved_disks import Disk, SavedDisks
from gpudock.core.revision import Revision
from gpudock.errors import UserError


@dataclass(frozen=True)
class Observation:
    key: ResourceKey
    uid: str
    generation: int | None
    spec: GpuReplicaSetSpec
    previous_status: Mapping[str, Any]
    containers: tuple[ObservedContainer, ...]  # every container on the node
    inventory: tuple[str, ...]  # GPU UUIDs of the node, in index order
    port_range: tuple[int, int]
    allowed_host_paths: tuple[str, ...]  # the roots of this resource's namespace
    images_present: frozenset[str]  # of the spec's and the records' base images
    records: tuple[Revision, ...] = ()  # this name's revisions, oldest first
    preserved_tags: frozenset[str] = frozenset()  # saved disks that exist
    change_cause: str = ""
    now: str = ""
    volume_names: Mapping[str, str | None] = field(default_factory=dict)  # None: not ready
    # (hostPath, readOnly) -> the real path to mount, or why the node refuses it
    # (adapters/host_paths.py resolved it on the host).
    host_paths: Mapping[tuple[str, bool], str | UserError] = field(default_factory=dict)
    # What Docker says of the spec's and the records' base images, by name (absent:
    # not on the node).
    images: Mapping[str, ImageInfo] = field(default_factory=dict)
    # Explicit hostPorts must lie here (None: the node's port_range).
    explicit_port_range: tuple[int, int] | None = None
    node_name: str = ""  # this agent's node, labelled on what it creates
    # Host ports Docker could not bind although no container holds them (another
    # process on the node has them): never auto-allocated.
    busy_host_ports: frozenset[HostPort] = frozenset()
    # Containers that ran and that containerd refuses to start again (it kept a task
    # of a start cut short by a restart of Docker): saved and made again.
    stale_tasks: frozenset[str] = frozenset()
    gpu_attach: GpuAttachment = DEFAULT_ATTACHMENT  # how its container gets its GPUs
    # A retained history this resource asked to adopt (the gpudock.dev/adopt-history
    # annotation names the deleted resource's UID), as set aside; its saved disks.
    adoptable: tuple[Revision, ...] = ()
    retained_tags: frozenset[str] = frozenset()
    # The saved writable layers the records name that exist, and where a new one is
    # saved (None: disks are saved with docker commit).
    saved_layers: frozenset[str] = frozenset()
    layer_root: str | None = None
    # The instance network and its subnet: each instance gets a fixed address there
    # (core/allocation.py); "": containers go on Docker's default bridge.
    instance_network: str = ""
    instance_subnet: str = ""
    # The node's per-GPU limit defaults and its CPUs and memory (None: not known).
    limit_defaults: LimitDefaults = field(default_factory=LimitDefaults)
    node_capacity: NodeCapacity | None = None
    # The images this reconcile pulled (or proved access to) already: a container
    # made from one of them now needs no PullImage first (docs/fleet.md, "Image pulls").
    images_ensured: frozenset[str] = frozenset()
    # The base images whose ID on the node a pull with some Secret's credentials
    # brought (and none without): a container of one is made only once this
    # namespace's own credentials are proved (agent/replica_set_pulls.py).
    images_pulled_privately: frozenset[str] = frozenset()
    # The node's GPUs out of service (core/gpu_health.py): UUID -> what is wrong.
    # Never given to a new container; a holder is Degraded GPUUnhealthy.
    unhealthy_gpus: Mapping[str, str] = field(default_factory=dict)
    # Containers the GPU access probe found without their GPUs (agent/gpu_access.py):
    # container ID -> why. The instance is recreated as a new revision, disk kept.
    access_lost: Mapping[str, str] = field(default_factory=dict)
    # GPUs this node holds for instances a migration brings here (not yet running
    # here): UUID -> the instance. Others never get them; the arriving one gets them.
    reserved_gpus: Mapping[str, ResourceKey] = field(default_factory=dict)

    @property
    def own_records(self) -> tuple[Revision, ...]:
        return tuple(r for r in self.records if r.uid == self.uid)

    @property
    def saved(self) -> SavedDisks:
        return SavedDisks(self.preserved_tags, self.saved_layers, self.layer_root)


@dataclass(frozen=True)
class Target:
    """What the container should become: the spec, or a rollback's revision."""

    spec: GpuReplicaSetSpec
    cause: str
    rollback_of: int | None = None
    source: Disk | None = None  # the saved disk a rollback starts from


@dataclass(frozen=True)
class Plan:
    actions: tuple[act.Action, ...]
    status: GpuReplicaSetStatus
    drift: str | None = None  # what was found changed behind the agent's back
    # The container the next pass creates, when this pass stops a serving one for
    # it: what can be checked of it is checked before the stop.
    next_config: ContainerConfig | None = None
    next_carries_disk: bool = False  # next_config's disk is the serving container's
    recheck_after: float | None = None  # observe again then, even if nothing happens
