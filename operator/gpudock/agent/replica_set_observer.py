"""What a GpuReplicaSet's plan is made from: Docker's containers and images, the
revision records and saved disks, the node's settings, the hostPath policy and the
SizedVolumes it mounts, read into one core Observation (core/replica_set/observation.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from gpudock import metrics
from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.adapters.kube_api import ObjectNotFoundError
from gpudock.agent.commit_holds import CommitHolds
from gpudock.agent.disk_saves import DiskSaves
from gpudock.agent.migration_arrivals import Arrivals
from gpudock.agent.replica_set_pulls import ImagePulls
from gpudock.api import gpu_replica_set, sized_volume
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.core.observed import HostPort, ObservedContainer, ResourceKey
from gpudock.core.ports import ContainerRuntime, KubeClient, VolumeLookup
from gpudock.core.replica_set import saved_disks
from gpudock.core.replica_set.observation import Observation
from gpudock.core.revision import Revision, RevisionStore
from gpudock.errors import UserError
from gpudock.settings import Settings


class ReplicaSetObserver:
    def __init__(self, settings: Settings, docker: ContainerRuntime, kube: KubeClient,
                 store: RevisionStore, disks: DiskSaves, host_paths: HostPathPolicy,
                 clock: Callable[[], str], volumes: VolumeLookup | None,
                 busy_ports: set[HostPort], pulls: ImagePulls,
                 commit_holds: CommitHolds | None = None,
                 arrivals: Arrivals | None = None,
                 stale_tasks: set[str] | None = None) -> None:
        self._settings = settings
        self._docker = docker
        self._kube = kube
        self._store = store
        self._clock = clock
        self._volumes = volumes  # None: no SizedVolume can be mounted
        self._host_paths = host_paths
        self._busy_ports = busy_ports  # held outside Docker's view (the reconciler's)
        self._stale_tasks = stale_tasks if stale_tasks is not None else set()
        self._pulls = pulls
        self.disks = disks
        self._commit_holds = commit_holds or CommitHolds()
        self._arrivals = arrivals or Arrivals()

    def observe(self, key: ResourceKey, uid: str, generation: int | None,
                 spec: GpuReplicaSetSpec, previous: Mapping[str, Any],
                 inventory: tuple[str, ...], change_cause: str,
                 adopt_uid: str, volume_names: Mapping[str, str | None],
                 ensured: frozenset[str] = frozenset(),
                 unhealthy: Mapping[str, str] | None = None,
                 access_lost: Mapping[str, str] | None = None) -> Observation:
        metrics.OBSERVATIONS.labels(gpu_replica_set.KIND).inc()
        records = tuple(self._store.list(key.namespace, key.name))
        adoptable: tuple[Revision, ...] = ()
        if adopt_uid and adopt_uid != uid and not any(r.uid == uid for r in records):
            adoptable = tuple(self._store.list(key.namespace,
                                               saved_disks.retained_name(key.name, adopt_uid)))
        saved = self.disks.saved(key, (*records, *adoptable))
        base_images = {spec.image} | {str(r.spec.get("image")) for r in records
                                      if r.spec.get("image")}
        # What each base image's name points to now (a saved layer is only put back
        # over the image it was made over: admission.py).
        images = {i: found for i in sorted(base_images)
                  if (found := self._docker.image_info(i)) is not None}
        explicit = self._settings.explicit_port_range
        return Observation(
            key=key, uid=uid, generation=generation, spec=spec, previous_status=previous,
            containers=tuple(self._held_as_running(self._docker.list_containers())),
            inventory=inventory,
            port_range=(self._settings.port_range.first, self._settings.port_range.last),
            # The roots of this resource's namespace: templates expanded.
            allowed_host_paths=self._host_paths.roots(key.namespace),
            host_paths={(m.host_path, m.read_only): self._resolve(key.namespace, m.host_path,
                                                                  m.read_only)
                        for m in spec.mounts if m.host_path is not None},
            images=images,
            explicit_port_range=(explicit.first, explicit.last),
            node_name=self._settings.node_name,
            images_present=frozenset(images),
            records=records,
            preserved_tags=saved.tags,
            change_cause=change_cause,
            now=self._clock(),
            volume_names=dict(volume_names),
            gpu_attach=self._settings.gpu_attach,
            busy_host_ports=frozenset(self._busy_ports),
            stale_tasks=frozenset(self._stale_tasks),
            adoptable=adoptable,
            retained_tags=self._docker.preserved_tags(saved_disks.retained_repository(key))
            if adoptable else frozenset(),
            saved_layers=saved.layers,
            layer_root=saved.layer_root,
            instance_network=self._settings.instance_network,
            instance_subnet=self._settings.instance_subnet,
            limit_defaults=self._settings.limit_defaults,
            node_capacity=self._docker.node_capacity(),
            images_ensured=ensured,
            images_pulled_privately=frozenset(
                name for name, info in images.items() if self._pulls.pulled_privately(info.id)),
            unhealthy_gpus=dict(unhealthy or {}),
            access_lost=dict(access_lost or {}),
            reserved_gpus=self._arrivals.gpus(),
        )

    def _held_as_running(self, containers: Iterable[ObservedContainer],
                         ) -> Iterator[ObservedContainer]:
        """A container paused by an ImageCommit of this agent is observed as running:
        its pause is the commit's, never drift to repair (commit_holds.py)."""
        for container in containers:
            if container.status == "paused" and self._commit_holds.held(container.id):
                yield replace(container, status="running")
            else:
                yield container

    def _resolve(self, namespace: str, path: str, read_only: bool) -> str | UserError:
        try:
            return self._host_paths.resolve(path, namespace=namespace, read_only=read_only)
        except UserError as exc:
            return exc

    def volume_name(self, namespace: str, name: str) -> str | None:
        """The Docker volume of a mounted SizedVolume, when it can be mounted now: the
        volume is observed (VolumeReconciler.serving), not taken from its status."""
        try:
            body = self._kube.get(sized_volume.PLURAL, namespace, name)
        except ObjectNotFoundError:
            return None
        volume = self._volumes.serving(body) if self._volumes is not None else None
        return volume if volume is not None and self._docker.volume_mounted(volume) else None

