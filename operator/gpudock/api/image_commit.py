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


# Where a namespace's commits go: this template with {namespace} replaced. The host
# part ends in ".invalid", a name that never resolves (RFC 6761), so no committed
# image can ever mean a registry's (busybox:latest is docker.io/library/busybox).
NAMESPACE_FIELD = "{namespace}"
DEFAULT_REPOSITORY_TEMPLATE = "gpudock.invalid/{namespace}/"


def template_problem(template: str) -> str | None:
    """What is wrong with a --commit-repository-template; None when usable: it holds
    {namespace} once, ends with "/" and starts with a registry host (a name with a dot
    or a port, or localhost), so no prefix is a Docker Hub name."""
    if template.count(NAMESPACE_FIELD) != 1:
        return f"must hold {NAMESPACE_FIELD} once"
    if not template.endswith("/"):
        return 'must end with "/" (a repository path, not part of a name)'
    host = template.split("/", 1)[0]
    if NAMESPACE_FIELD in host or not ("." in host or ":" in host or host == "localhost"):
        return ("must start with a registry host (e.g. gpudock.invalid/), so that no "
                "committed image can mean a Docker Hub image")
    example = repository_prefix(template, "team-a") + "name:tag"
    if not _IMAGE_RE.match(example):
        return f"gives names Docker does not take (e.g. {example})"
    return None


def repository_prefix(template: str, namespace: str) -> str:
    """Where the ImageCommits of ``namespace`` may write images."""
    return template.replace(NAMESPACE_FIELD, namespace)


def name_problem(image: str, template: str, namespace: str) -> str | None:
    """Why an ImageCommit of ``namespace`` may not write ``image``; None when it may."""
    prefix = repository_prefix(template, namespace)
    if image.startswith(prefix):
        return None
    return (f"an ImageCommit of namespace {namespace} writes only images under {prefix} "
            f"(e.g. {prefix}{image.rsplit('/', 1)[-1]}), never a name another namespace "
            "or a registry may mean; nothing was changed")
