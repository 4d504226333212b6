"""The ports the reconcilers drive the outside world through.

The reconcilers (reconciler.py with disk_saves.py, volume_reconciler.py) decide in
the pure core and act through these: a container runtime (the node's Docker) and a
Kubernetes client. The adapters implement them (adapters/docker/runtime.py's
DockerRuntime, adapters/kube_api.py's KubeApi); the unit tests run the real
reconcilers through in-memory fakes of the same ports (tests/unit/fakes/).

The revision store and the GPU inventory have their ports already:
:class:`gpudock.core.revision.RevisionStore` and :class:`gpudock.core.gpus.GpuInventory`.

Each method's signature is the adapter's, word for word (a unit test compares
them). What an implementation raises is part of the contract, although a Protocol
cannot say it in types:

* the runtime raises :class:`gpudock.errors.TransientError` subclasses when it
  cannot answer (DockerUnavailableError) or a container vanished under a step
  (ContainerGoneError), and :class:`gpudock.errors.UserError` (HostPortBusyError,
  DiskFullError, "ImageNotPresent", "ContainerCreateFailed", "CommandNotFound", ...)
  when it refuses a request because of the spec;
* the Kubernetes client raises ObjectNotFoundError (adapters/kube_api.py) for an
  object that does not exist, and a TransientError when the API server does not
  answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gpudock.core.container_config import ContainerConfig
from gpudock.core.limits import ContainerLimits, NodeCapacity
from gpudock.core.observed import ImageInfo, ObservedContainer


class ContainerRuntime(Protocol):
    """The node's container engine, as the reconcilers and the volume backends use it."""

    # ------------------------------------------------------------------ events
    def follow_events(self, on_event: Callable[[str], None] | None = None,
                      on_reconnect: Callable[[], None] | None = None) -> None:
        """From now on, tell ``on_event`` the resource UID of every change of a
        gpudock container, and call ``on_reconnect`` when changes are followed again
        after a break (those of the break were missed), from whatever thread sees
        it."""
        ...

    def events_followed(self) -> bool:
        """Whether changes are followed now (a periodic look is then a safety net)."""
        ...

    # ------------------------------------------------------------- observation
    def list_containers(self) -> list[ObservedContainer]:
        """Every container on the node; gpudock's carry their owner from the labels."""
        ...

    def image_exists(self, image: str) -> bool: ...

    def image_info(self, image: str) -> ImageInfo | None:
        """What the engine says of ``image`` (a tag, an ID or a digest); None when absent."""
        ...

    def preserved_tags(self, repository: str) -> frozenset[str]:
        """The tags (``repo:tag``) of the images in ``repository``."""
        ...

    def writable_layer_bytes(self, container_id: str) -> int:
        """The size of the container's own files (its writable layer)."""
        ...

    def writable_layer_entries(self, container_id: str) -> int:
        """The paths the container added, changed or deleted."""
        ...

    def writable_layer_dir(self, container_id: str) -> str | None:
        """Where the container's writable layer is; None when not on overlay2."""
        ...

    def storage(self) -> tuple[str, str]:
        """The storage driver and the engine's root directory."""
        ...

    def free_bytes(self) -> int | None:
        """Free space where a saved disk is written; None when it cannot be seen."""
        ...

    def free_inodes(self) -> int | None:
        """Inodes left where a saved disk is written; None when it cannot be seen or
        the filesystem has no fixed number."""
        ...

    def layer_count(self, image: str) -> int: ...

    def command_missing(self, container_id: str, command: str,
                        env: list[str]) -> bool | None:
        """Whether ``command`` cannot be found in a running container (True), can
        (False), or cannot tell (None)."""
        ...

    # ------------------------------------------------------------- containers
    def create_and_start(self, config: ContainerConfig, *, start: bool = True,
                         prepare: Callable[[str], Callable[[], None] | None] | None = None,
                         ) -> str:
        """Create the container, run ``prepare`` on its ID before it ever starts,
        start it unless ``start`` is False; a container that fails any of it is
        removed, after what ``prepare`` returned (if anything) undid its work; when
        that undo fails the container is kept. Returns its ID."""
        ...

    def start(self, container_id: str, name: str) -> None: ...

    def stop(self, container_id: str, name: str) -> None: ...

    def unpause(self, container_id: str, name: str) -> None: ...

    def rename(self, container_id: str, new_name: str) -> None: ...

    def set_restart_policy(self, container_id: str, name: str, policy: str) -> None: ...

    def update_limits(self, container_id: str, name: str, limits: ContainerLimits) -> None:
        """Change the CPU, memory (swap the same) and pids limits of the container as
        it is (running or not): the same container."""
        ...

    def node_capacity(self) -> NodeCapacity | None:
        """The node's CPUs and memory as the engine reports them; None when unknown."""
        ...

    def remove(self, container_id: str, name: str) -> None:
        """Remove the container (never its volumes); already gone is fine."""
        ...

    # ----------------------------------------------------------------- images
    def commit(self, container_id: str, name: str, image: str) -> None:
        """Save the container's filesystem as ``image`` (repository:tag)."""
        ...

    def flatten(self, container_id: str, name: str, image: str) -> None:
        """Replace ``image`` (committed from the container) with a one-layer image of
        the container's filesystem and the same config."""
        ...

    def tag_image(self, source: str, target: str) -> bool:
        """Tag ``source``'s image as ``target`` too; False when ``source`` is absent."""
        ...

    def remove_image(self, image: str) -> bool:
        """Remove an image (or untag it); True when it is gone, False when a
        container still uses it."""
        ...

    def remove_dangling_images(self, namespace: str, name: str) -> int:
        """Remove untagged images a failed save of this resource left; how many."""
        ...

    def pull_image(self, image: str, auth: Mapping[str, str] | None,
                   on_message: Callable[[Mapping[str, Any]], None]) -> str:
        """Pull ``image`` with ``auth`` (None: none), telling ``on_message`` each
        progress message; its image ID. The registry's refusal: a UserError
        (ErrImagePull) with its words."""
        ...

    def check_pull_access(self, image: str, auth: Mapping[str, str] | None) -> None:
        """Whether ``auth`` may pull ``image`` as it is on the node, asked of its
        registry (nothing is downloaded); a UserError (ErrImagePull) when not."""
        ...

    # ---------------------------------------------------------------- volumes
    def remove_volumes(self, namespace: str, name: str, uid: str | None = None) -> int:
        """Remove the volumes made for a resource's image VOLUMEs; how many."""
        ...

    def volume_exists(self, name: str) -> bool: ...

    def volume_mounted(self, name: str) -> bool:
        """The volume exists and, when it binds a host directory, that directory is
        a mount point now."""
        ...

    def create_volume(self, name: str, options: dict[str, str],
                      extra_labels: dict[str, str] | None = None) -> None:
        """A volume of the local driver with these options; one that exists is kept."""
        ...

    def volume_info(self, name: str) -> dict[str, Any] | None:
        """The engine's inspect of a volume (Mountpoint, Options, Labels); None if gone."""
        ...

    def remove_volume(self, name: str) -> None:
        """Remove a volume; already gone is fine."""
        ...


class KubeClient(Protocol):
    """The Kubernetes API calls made besides kopf's own."""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        """A namespaced object of this API group; ObjectNotFoundError when absent."""
        ...

    def patch_spec(self, plural: str, namespace: str, name: str,
                   spec: dict[str, Any]) -> None:
        """A JSON merge patch of the spec (lists are replaced, None removes a field)."""
        ...

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> str:
        """A merge patch of the status; the object's resourceVersion after it."""
        ...

    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        """As :meth:`patch_status`, only while the object is at ``resource_version``
        (the adapter's ConflictError otherwise); the object after it."""
        ...

    def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        """A Secret's ``type``, ``uid`` and ``data`` (base64 values, as the API gives
        them); ObjectNotFoundError when absent. Only ``get`` (no list or watch)."""
        ...

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """A namespaced object of this API group made (as the API server returns it);
        ConflictError when one of that name exists."""
        ...


class VolumeLookup(Protocol):
    """What a GpuReplicaSet's plan asks of the SizedVolumes it mounts (the node's
    VolumeReconciler answers it by observing the volume)."""

    def serving(self, body: Mapping[str, Any]) -> str | None:
        """The Docker volume to mount, when the volume can be mounted now."""
        ...
