"""The ImageCommit resource: save a GpuReplicaSet's running container as an image
(the REST service's "commit"), the container running on, unchanged."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from gpudock.api.parsing import RawDict, get_choice, get_object_name, get_str
from gpudock.errors import SpecError

KIND = "ImageCommit"
PLURAL = "imagecommits"
# repository[:tag], Docker's grammar (lower-case path components, optional registry
# host and port); the tag is required here so the image is found by it.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?/)?"
IMAGE_PATTERN = rf"^{_HOST}{_COMPONENT}(?:/{_COMPONENT})*:[\w][\w.-]{{0,127}}$"
_IMAGE_RE = re.compile(IMAGE_PATTERN)


class DeletionPolicy(enum.StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


@dataclass(frozen=True)
class ImageCommitSpec:
    replica_set_name: str
    image: str
    pause: bool = True
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN

    @classmethod
    def parse(cls, raw: RawDict) -> ImageCommitSpec:
        image = get_str(raw, "image", "spec")
        if not _IMAGE_RE.match(image) or len(image) > 255:
            raise SpecError(f"spec.image {image!r} is not an image reference with a tag "
                            "(repository:tag, lower-case repository)")
        pause = raw.get("pause", True)
        if not isinstance(pause, bool):
            raise SpecError("spec.pause must be true or false")
        return cls(
            replica_set_name=get_object_name(raw, "replicaSetName", "spec"),
            image=image, pause=pause,
            deletion_policy=DeletionPolicy(get_choice(raw, "deletionPolicy", "spec",
                                                      tuple(DeletionPolicy),
                                                      DeletionPolicy.RETAIN)))
