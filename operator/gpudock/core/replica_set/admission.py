"""Whether a revision's container can be made on this node now: the spec checked
against the node (allowed host paths, the image's owner, explicit host ports, GPU
capacity) and GPUs and ports allocated, the ones it holds first. Each refusal is a
UserError that says what to change; nothing is stopped before these pass."""

from __future__ import annotations

from collections.abc import Mapping

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, PortBinding
from gpudock.api.paths import is_under
from gpudock.api.reasons import Reason
from gpudock.core.allocation import (
    Ledger,
    address_count,
    allocate_address,
    allocate_gpus,
    allocate_ports,
)
from gpudock.core.container_config import ContainerConfig, build_container_config
from gpudock.core.limits import check_on_node
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.saved_disks import Disk, is_reserved_reference
from gpudock.errors import UserError


def container_for(obs: Observation, spec: GpuReplicaSetSpec, revision: int,
                  disk: Disk | None, held_gpus: tuple[str, ...],
                  held_ports: tuple[PortBinding, ...],
                  carried_volumes: Mapping[str, str] | None = None,
                  held_address: str = "") -> ContainerConfig:
    """The container of a revision, with GPUs and ports allocated (the ones held first);
    raises UserError when it cannot be made now."""
    host_paths = _check_mounts(obs, spec)
    _check_image_owner(obs, spec.image)
    if spec.image not in obs.images_present:
        raise UserError(Reason.IMAGE_NOT_PRESENT, f"image {spec.image} is not on the node and "
                        f"imagePullPolicy is {spec.image_pull_policy}: load it there, or "
                        "set imagePullPolicy to IfNotPresent or Always to pull it")
    _check_disk_image(obs, disk)
    _check_explicit_ports(obs, spec)
    limits = check_on_node(spec, obs.limit_defaults, obs.node_capacity)
    if spec.gpu_count > len(obs.inventory):
        raise UserError(Reason.EXCEEDS_NODE_CAPACITY,
                        f"asks for {_gpus(spec.gpu_count)}; node "
                        f"{obs.node_name or spec.node_name} has {_gpus(len(obs.inventory))} "
                        "in all")
    ledger = Ledger.from_containers(obs.containers)
    # An Unhealthy GPU is never handed out, not even to the instance that holds it.
    taken = ledger.gpus_held_by_others(obs.key) | set(obs.unhealthy_gpus) | {
        gpu for gpu, key in obs.reserved_gpus.items() if key != obs.key}
    arriving = tuple(gpu for gpu, key in obs.reserved_gpus.items() if key == obs.key)
    gpus = allocate_gpus(spec.gpu_count, obs.inventory, taken, held_gpus or arriving)
    if gpus is None:
        free = len(obs.inventory) - len(taken & set(obs.inventory))
        sick = len(set(obs.unhealthy_gpus) & set(obs.inventory))
        raise UserError(Reason.INSUFFICIENT_GPUS,
                        f"needs {_gpus(spec.gpu_count)}; {free} of {len(obs.inventory)} "
                        f"on node {obs.node_name or spec.node_name} are free"
                        f"{f' ({sick} Unhealthy)' if sick else ''}. Waiting for "
                        "GPUs to be released")
    ports = allocate_ports(spec.ports, ledger.ports_held_by_others(obs.key)
                           | obs.busy_host_ports, *obs.port_range, held=held_ports)
    address = _address(obs, ledger, held_address)
    return build_container_config(
        obs.key, obs.uid, spec, revision=revision, gpus=gpus, ports=ports,
        volume_names={n: v for n, v in obs.volume_names.items() if v},
        host_paths=host_paths, gpu_attach=obs.gpu_attach,
        image=disk.image if disk else None,
        image_volumes=obs.images[spec.image].volumes if spec.image in obs.images else (),
        carried_volumes=dict(carried_volumes or {}), node_name=obs.node_name,
        network=obs.instance_network, address=address, limits=limits)


def _address(obs: Observation, ledger: Ledger, held: str) -> str:
    """The instance's address on the instance network: the one its containers (or,
    with none, its record) have, else a free one; refused when none is left. An
    address stays the instance's while any container of it is labelled with it, so a
    rollout or a Paused instance never gives it up."""
    if not obs.instance_network:
        return ""
    mine = [c.address for c in obs.containers if c.owner == obs.key and c.address]
    taken = ledger.addresses_held_by_others(obs.key)
    address = allocate_address(obs.instance_subnet, taken, [held, *mine])
    if address is None:
        raise UserError(Reason.ADDRESSES_EXHAUSTED, (
            f"every address of the node's instance network {obs.instance_network} "
            f"({obs.instance_subnet}: {address_count(obs.instance_subnet)} instances) is "
            "held by another instance; waiting for one to be released (a resource "
            "deleted or Stopped). Instances running now are not affected"))
    return address


def image_id_for(obs: Observation, disk: Disk | None, image: str) -> str | None:
    """The ID a revision's container is made over: a saved layer's own (checked by
    _check_disk_image), else what ``image`` names now."""
    if disk is not None and disk.image_id:
        return disk.image_id
    found = obs.images.get(image)
    return found.id if found is not None else None


def _check_disk_image(obs: Observation, disk: Disk | None) -> None:
    """A saved writable layer goes back only over the image it was made over: when
    its image's name now points to another image (re-tagged, by a pull or by
    anyone), the layer would lie over files it never saw."""
    if disk is None or disk.layer is None or not disk.image_id:
        return
    now = obs.images.get(disk.image)
    if now is not None and now.id != disk.image_id:
        raise UserError(Reason.IMAGE_CHANGED, f"the saved disk is over image {disk.image} "
                        f"as it was ({_short(disk.image_id)}); that name now points to "
                        f"another image ({_short(now.id)}). Tag {_short(disk.image_id)} "
                        f"as {disk.image} again to go on; nothing was changed")


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def _check_mounts(obs: Observation, spec: GpuReplicaSetSpec) -> dict[str, str]:
    """Each hostPath's real path on the host; raises UserError for the first mount the
    node refuses (outside the allowed roots, missing, ...) or a volume not ready."""
    resolved: dict[str, str] = {}
    for mount in spec.mounts:
        if mount.host_path is not None:
            if not any(is_under(mount.host_path, root) for root in obs.allowed_host_paths):
                allowed = ", ".join(obs.allowed_host_paths) or "none"
                raise UserError(Reason.HOST_PATH_NOT_ALLOWED,
                                f"hostPath {mount.host_path} is not under an allowed root "
                                f"(allowed: {allowed})")
            verdict = obs.host_paths.get((mount.host_path, mount.read_only))
            if isinstance(verdict, UserError):
                raise verdict
            resolved[mount.host_path] = verdict or mount.host_path
        if mount.volume is not None and not obs.volume_names.get(mount.volume):
            raise UserError(Reason.VOLUME_NOT_READY,
                            f"SizedVolume {mount.volume} does not exist or is not ready yet")
    return resolved


def _check_image_owner(obs: Observation, image: str) -> None:
    """The agent's own images (saved disks) are never a user's image, except for the
    resource they belong to: refused by repository, and by the labels every saved disk
    carries, which also catch an image ID or another tag of the same image."""
    info = obs.images.get(image)
    owner = info.owner if info is not None else None
    mine = owner == (obs.key.namespace, obs.key.name, obs.uid)
    reserved = is_reserved_reference(image) or owner is not None or (
        info is not None and any(is_reserved_reference(t) for t in info.repo_tags))
    if reserved and not mine:
        raise UserError(Reason.RESERVED_IMAGE, f"image {image} is a disk saved by gpudock for "
                        "another resource; only that resource may use it")


def _check_explicit_ports(obs: Observation, spec: GpuReplicaSetSpec) -> None:
    first, last = obs.explicit_port_range or obs.port_range
    for port in spec.ports:
        if port.host_port is not None and not first <= port.host_port <= last:
            raise UserError(Reason.HOST_PORT_NOT_ALLOWED, f"hostPort {port.host_port} is outside "
                            f"the host ports this node allows ({first}-{last}); omit "
                            "hostPort to get one from the node's range")
