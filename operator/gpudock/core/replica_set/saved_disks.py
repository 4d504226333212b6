"""A GpuReplicaSet's saved disks: how they are named, which exist, and the steps
that save one.

A disk is saved when a container stops for good: on overlay2 a copy of its writable
layer (a directory under the layer root, by resource UID), elsewhere ``docker commit``
to ``gpudock-preserved/<ns>_<name>:rev-N``. A deleted resource's disks kept by
historyPolicy Retain move to ``<repository>__retained``. Pure: the names and the
choice of disk; disk_saves.py does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpudock.core import labels
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.revision import Revision

PRESERVED_REPOSITORY = "gpudock-preserved"


@dataclass(frozen=True)
class SavedDisks:
    """A resource's saved disks that exist on the node (committed images by tag,
    writable layers by directory) and where a container's layer is saved (None:
    saves commit)."""

    tags: frozenset[str]
    layers: frozenset[str] = frozenset()
    layer_root: str | None = None


@dataclass(frozen=True)
class Disk:
    """A container's filesystem when it is made: an image, and on overlay2 a saved
    writable layer copied into the container before it first starts."""

    image: str
    layer: str | None = None
    # The ID of ``image`` the layer was made over: it is only put back over that one
    # (None: not known, a record of an older agent).
    image_id: str | None = None


# ----------------------------------------------------------------------------- names
def preserved_repository(key: ResourceKey) -> str:
    return f"{PRESERVED_REPOSITORY}/{labels.base_name(key.namespace, key.name)}"


def is_reserved_reference(image: str) -> bool:
    """True for a reference into the agent's own repository, however it is written
    (``docker.io/``, ``library/``, a tag or a digest)."""
    name = image.lower()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/", "library/"):
        name = name.removeprefix(prefix)
    return name.startswith(PRESERVED_REPOSITORY + "/") or name.startswith(
        PRESERVED_REPOSITORY + ":") or name.startswith(PRESERVED_REPOSITORY + "@") or \
        name == PRESERVED_REPOSITORY


def preserved_image(key: ResourceKey, revision: int) -> str:
    """The image that keeps revision ``revision``'s disk."""
    return f"{preserved_repository(key)}:rev-{revision}"


def saved_layer_path(root: str, container: ObservedContainer) -> str:
    """Where a container's writable layer is saved: by the resource's UID (a later
    resource of the same name never meets it), revision and container (a revision
    made again after a stop is saved anew)."""
    return f"{root}/{container.uid}/rev-{container.revision}-{container.id[:12]}"


def retained_repository(key: ResourceKey) -> str:
    """Where the saved disks of deleted resources of this name are kept ("__" never
    occurs in a base name, so no resource's own repository is ever this one)."""
    return f"{preserved_repository(key)}__retained"


def retained_name(name: str, uid: str) -> str:
    """The store name a deleted resource's history is kept under ("@" never occurs
    in a Kubernetes name)."""
    return f"{name}@{uid}"


# ------------------------------------------------------------------------------ saves
def save(key: ResourceKey, saved: SavedDisks, container: ObservedContainer,
         record: Revision | None) -> tuple[act.Action, ...]:
    previous = record.layer if record is not None and record.layer in saved.layers else None
    layer = save_target(key, saved, container, record).layer
    stop = (act.StopContainer(container.id, container.name, saving=True, layer=layer,
                              previous=previous),) if (
        container.running or container.status == "paused") else ()
    return (*stop, act.PreserveDisk(container.id, container.name,
                                    preserved_image(key, container.revision), record,
                                    layer=layer, previous=previous))


def save_target(key: ResourceKey, saved: SavedDisks, container: ObservedContainer,
                record: Revision | None) -> Disk:
    """The disk saving ``container`` makes: its writable layer copied under the layer
    root, over the image it was made from, when the node allows (overlay2, the agent
    reaches Docker's root) and a record can keep the path; else a committed image."""
    if saved.layer_root and container.upper_dir and container.image and record is not None:
        return Disk(container.image, saved_layer_path(saved.layer_root, container),
                    container.image_id or None)
    return Disk(preserved_image(key, container.revision))


def is_preserved(saved: SavedDisks, container: ObservedContainer,
                 record: Revision | None) -> bool:
    if record is None or record.preserved_from != container.id or container.running:
        return False
    if record.saved_layer:
        return record.saved_layer in saved.layers
    return record.preserved_image in saved.tags


# -------------------------------------------------------------------- what is there
def _has_image(saved: SavedDisks, images_present: frozenset[str], image: str) -> bool:
    return image in saved.tags or image in images_present


def saved_disk_of(saved: SavedDisks, images_present: frozenset[str],
                  record: Revision) -> Disk | None:
    """The disk saved at a revision's end (its last save), if it is still there."""
    if record.saved_layer:
        if record.saved_layer in saved.layers and _has_image(saved, images_present,
                                                             record.image):
            return Disk(record.image, record.saved_layer, record.image_id)
        return None
    if record.preserved_image and record.preserved_image in saved.tags:
        return Disk(record.preserved_image)
    return None


def disk_of(saved: SavedDisks, images_present: frozenset[str],
            record: Revision) -> Disk | None:
    """Where a revision's disk is: saved at its end, else where it started; None when
    neither is left (start from the spec's image)."""
    found = saved_disk_of(saved, images_present, record)
    if found is not None:
        return found
    if record.image and _has_image(saved, images_present, record.image) and (
            record.layer is None or record.layer in saved.layers):
        return Disk(record.image, record.layer, record.image_id)
    return None
