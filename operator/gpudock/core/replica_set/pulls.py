"""Whether a container the plan makes needs its image pulled first (docs/fleet.md,
"Image pulls"): pure, from the Observation.

Pulls happen only when a container is made, never for one that runs. A container made
over a saved writable layer sits on the image ID its layer was saved over: nothing is
pulled while that ID is on the node (a pull could move the tag under the disk; the
admission check ImageChanged refuses a moved one), only when the image is gone."""

from __future__ import annotations

from string import hexdigits

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, PullPolicy
from gpudock.core.observed import ImageInfo
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.saved_disks import Disk, is_reserved_reference


def pull_first(obs: Observation, spec: GpuReplicaSetSpec,
               disk: Disk | None) -> act.PullImage | None:
    """The PullImage a container made now from ``spec`` over ``disk`` needs first;
    None when it needs none (or the admission check refuses it anyway)."""
    if disk is not None and disk.image != spec.image and disk.layer is None:
        return None  # a committed disk (an image of gpudock's own): never pulled
    image = disk.image if disk is not None else spec.image
    if image in obs.images_ensured or is_reserved_reference(image):
        return None
    present = image in obs.images_present
    info = obs.images.get(image)
    if info is not None and (info.owner is not None or _names_by_id(image, info)
                             or any(is_reserved_reference(t) for t in info.repo_tags)):
        # A saved disk of gpudock's (admission refuses it for anyone else), or an image
        # named by its ID, which no registry serves: never pulled, whatever the policy.
        return None
    if disk is not None and disk.layer is not None and present:
        return None  # over a saved layer: its own image ID, checked by admission
    if not present and spec.image_pull_policy is PullPolicy.NEVER:
        return None  # admission says ImageNotPresent
    from_image_alone = disk is None or disk.layer is None  # no saved files over it
    pull = not present or (spec.image_pull_policy is PullPolicy.ALWAYS and from_image_alone)
    if not pull and image not in obs.images_pulled_privately:
        return None  # anyone's: loaded or built on the node, or pulled without credentials
    return act.PullImage(image, pull, spec.image_pull_secrets)


def _names_by_id(image: str, info: ImageInfo) -> bool:
    """Whether ``image`` is the image's ID, whole or a prefix of it (``docker run
    a9b23e4ad31b``) rather than one of its names: a reference with no tag, which
    Kubernetes' defaulting would otherwise pull Always."""
    digits = image.removeprefix("sha256:")
    named = any(tag.rsplit(":", 1)[0] == image for tag in info.repo_tags)
    return bool(digits) and all(c in hexdigits for c in digits) and not named and \
        info.id.removeprefix("sha256:").startswith(digits)
