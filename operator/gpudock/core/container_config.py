"""Pure builder: the Docker container a GpuReplicaSet revision should be.

The adapter turns a :class:`ContainerConfig` into Docker SDK calls; nothing here talks
to Docker, so what a container will look like is testable as plain data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from gpudock.api import gpu_replica_set
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, PortBinding
from gpudock.core import labels
from gpudock.core.gpu_attach import DEFAULT_ATTACHMENT, GpuAttachment
from gpudock.core.limits import ContainerLimits
from gpudock.core.observed import ResourceKey

RESTART_POLICY = "unless-stopped"  # a Docker restart brings running containers back


@dataclass(frozen=True)
class BindMount:
    source: str  # a host path or a Docker volume name
    target: str
    read_only: bool = False
    is_volume: bool = False
    # (device, inode) of a bind source when it was checked; the adapter compares it
    # with what the started container really has mounted.
    identity: tuple[int, int] | None = None


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # "name" or "name:value", as Docker's --dns-option


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    image: str
    command: tuple[str, ...] | None
    env: dict[str, str]
    labels: dict[str, str]
    ports: tuple[PortBinding, ...]
    mounts: tuple[BindMount, ...]
    runtime: str | None  # "nvidia", or None for Docker's default
    gpu_device_ids: tuple[str, ...] = ()  # for Docker device requests (--gpus)
    restart_policy: str = RESTART_POLICY
    gpus: tuple[str, ...] = field(default=())
    base_image: str = ""  # the spec's image; differs from image for a preserved disk
    hostname: str = ""
    # Docker volume per image VOLUME path not covered by a mount: the same volume in
    # every revision, so files written there carry over (docs/revisions.md).
    image_volumes: tuple[BindMount, ...] = ()
    volume_labels: dict[str, str] = field(default_factory=dict)
    extra_hosts: tuple[str, ...] = ()  # "hostname:ip", from spec.hostAliases
    dns: DnsSettings | None = None
    init: bool = True  # Docker's init process as PID 1 (spec.init)
    # The instance network (a Docker bridge network the agent made) and the container's
    # fixed address on it, the same in every revision; "": Docker's default bridge.
    network: str = ""
    address: str = ""
    # NanoCpus, Memory (= MemorySwap), PidsLimit, ShmSize (core/limits.py).
    limits: ContainerLimits = field(default_factory=ContainerLimits)


def exact_env(base_env: list[str], source_env: list[str], wanted: dict[str, str]) -> list[str]:
    """The env list that makes a container from a preserved image see exactly the
    base image's variables overlaid with ``wanted``.

    ``docker commit`` bakes the old container's variables into the image and Docker
    merges an image's variables under the ones given at create, so a variable removed
    from the spec would live on. An entry without ``=`` makes Docker drop the inherited
    variable: every variable of ``source_env`` that should not be there gets one.
    """
    result: dict[str, str] = {}
    for entry in base_env:
        name, _, value = entry.partition("=")
        result[name] = value
    result.update(wanted)
    inherited = {entry.partition("=")[0] for entry in source_env}
    return [f"{k}={v}" for k, v in result.items()] + sorted(inherited - result.keys())


# Set in every container's environment to its revision (as gpu-docker-api did).
VERSION_VARIABLE = "CONTAINER_VERSION"


def spec_hash(spec: GpuReplicaSetSpec) -> str:
    """A digest of everything in the spec that shapes the container (not state, history
    or rollback; nor what changes in place, the limits): equal hashes mean the
    container was made for the spec."""
    return shape_hash(spec.revision_shape())


def shape_hash(shape: dict[str, Any]) -> str:
    """:func:`spec_hash` of a recorded revision's shape."""
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def build_container_config(
    key: ResourceKey, uid: str, spec: GpuReplicaSetSpec, *, revision: int,
    gpus: tuple[str, ...], ports: tuple[PortBinding, ...], volume_names: dict[str, str],
    gpu_attach: GpuAttachment = DEFAULT_ATTACHMENT, image: str | None = None,
    host_paths: dict[str, str] | None = None, image_volumes: tuple[str, ...] = (),
    carried_volumes: dict[str, str] | None = None, node_name: str = "",
    network: str = "", address: str = "", limits: ContainerLimits | None = None,
) -> ContainerConfig:
    """``volume_names`` maps a SizedVolume name to its current Docker volume;
    ``image`` overrides the spec's (a preserved revision's disk); ``host_paths`` maps a
    hostPath to the real path to mount; ``image_volumes`` are the image's VOLUME
    paths; ``carried_volumes`` maps such a path to the volume the previous revision
    had there (an anonymous one, made before gpudock named them); ``gpu_attach`` is
    how the container gets ``gpus`` (core/gpu_attach.py); ``address`` is its fixed
    address on the instance network ``network``."""
    resolved = host_paths or {}
    carried = carried_volumes or {}
    attached = gpu_attach.attach(gpus)
    env = {e.name: e.value for e in spec.env}
    for name in attached.unset_env:
        env.pop(name, None)
    env.update(attached.env)
    env[VERSION_VARIABLE] = str(revision)  # every container knows its revision
    mounts = tuple(
        BindMount(source=resolved.get(m.host_path, m.host_path), target=m.mount_path,
                  read_only=m.read_only)
        if m.host_path is not None
        else BindMount(source=volume_names[m.volume or ""], target=m.mount_path,
                       read_only=m.read_only, is_volume=True)
        for m in spec.mounts
    )
    mounted = {m.mount_path.rstrip("/") for m in spec.mounts}
    owned = {labels.NAMESPACE: key.namespace, labels.NAME: key.name,
             labels.KIND: gpu_replica_set.KIND, labels.UID: uid}
    if node_name:
        owned[labels.NODE] = node_name
    return ContainerConfig(
        name=labels.object_name(key.namespace, key.name, revision),
        image=image or spec.image,
        command=spec.command or None,
        env=env,
        labels={
            labels.NAMESPACE: key.namespace, labels.NAME: key.name,
            labels.KIND: gpu_replica_set.KIND, labels.REVISION: str(revision),
            labels.UID: uid, labels.GPUS: ",".join(gpus), labels.SPEC_HASH: spec_hash(spec),
            labels.IMAGE: spec.image, **({labels.NODE: node_name} if node_name else {}),
            **({labels.ADDRESS: address} if address else {}),
        },
        ports=ports,
        mounts=mounts,
        runtime=attached.runtime,
        gpu_device_ids=attached.device_ids,
        gpus=gpus,
        base_image=spec.image,
        hostname=labels.hostname(key.name),
        image_volumes=tuple(
            BindMount(source=carried.get(path) or labels.volume_name(
                key.namespace, key.name, uid, path), target=path, is_volume=True)
            for path in sorted(set(image_volumes)) if path.rstrip("/") not in mounted),
        volume_labels=owned,
        extra_hosts=tuple(f"{name}:{alias.ip}" for alias in spec.host_aliases
                          for name in alias.hostnames),
        init=spec.init,
        dns=DnsSettings(spec.dns.nameservers, spec.dns.searches, spec.dns.options)
        if spec.dns is not None else None,
        network=network if address else "",
        address=address,
        limits=limits or ContainerLimits(),
    )
