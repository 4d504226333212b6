"""Images: what is on the node, and committing, flattening, loading, tagging and
removing them.

Answers about images are remembered until an image changes on the node
(container_events.py); every call that changes one goes through ``_image_step``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker.errors
import docker.utils

from gpudock.adapters.docker.connection import DockerConnection
from gpudock.adapters.docker.errors import (
    DockerRefusedError,
    ImageNotPresentError,
    PullRefusedError,
    _translated,
)
from gpudock.adapters.docker.inspect import import_changes
from gpudock.api import gpu_replica_set
from gpudock.core import labels
from gpudock.core.observed import ImageInfo


class ImageMixin(DockerConnection):
    # ------------------------------------------------------------------ observation
    def image_exists(self, image: str) -> bool:
        return self.image_info(image) is not None

    def preserved_tags(self, repository: str) -> frozenset[str]:
        """The tags (``repo:tag``) of the images in ``repository``."""
        def ask() -> frozenset[str]:
            images = self._call("list images", lambda: self.client.api.images(
                name=repository))
            return frozenset(tag for image in images for tag in image.get("RepoTags") or ()
                             if tag.startswith(repository + ":"))
        return self._containers.remembered(("tags", repository), ask)

    def image_info(self, image: str) -> ImageInfo | None:
        """What Docker says of ``image`` (a tag, an ID or a digest); None when absent.
        Remembered until an image changes on the node (container_events.py)."""
        return self._containers.remembered(("info", image),
                                           functools.partial(self._image_info, image))

    def _image_info(self, image: str) -> ImageInfo | None:
        try:
            attrs = self._inspect_image(image)
        except (ImageNotPresentError, DockerRefusedError):
            return None  # none by that name: Docker has none, or takes no image by it
        config = attrs.get("Config") or {}
        found = config.get("Labels") or {}
        owner = None
        if found.get(labels.KIND) == gpu_replica_set.KIND:
            owner = (found.get(labels.NAMESPACE, ""), found.get(labels.NAME, ""),
                     found.get(labels.UID, ""))
        return ImageInfo(id=str(attrs.get("Id", "")),
                         repo_tags=tuple(attrs.get("RepoTags") or ()), owner=owner,
                         volumes=tuple(sorted(config.get("Volumes") or {})))

    def disk_use(self) -> dict[str, int]:
        """Bytes each tagged image holds that no other image shares (what removing
        it would free), by tag."""
        images = self._call("disk use", lambda: self.client.api.df()).get("Images") or ()
        return {tag: max(int(i.get("Size") or 0) - max(int(i.get("SharedSize") or 0), 0), 0)
                for i in images for tag in i.get("RepoTags") or ()}

    def layer_count(self, image: str) -> int:
        return len(self._inspect_image(image).get("RootFS", {}).get("Layers") or ())

    def image_config(self, image: str) -> tuple[str, int, dict[str, Any]]:
        """An image's ID, size and config (None-free)."""
        attrs = self._inspect_image(image)
        return str(attrs.get("Id", "")), int(attrs.get("Size") or 0), dict(
            attrs.get("Config") or {})

    # ----------------------------------------------------------------------- pulls
    def pull_image(self, image: str, auth: Mapping[str, str] | None,
                   on_message: Callable[[Mapping[str, Any]], None]) -> str:
        """``docker pull`` of ``image`` with ``auth`` (username, password,
        serveraddress; None: none); ``on_message`` is given each message of Docker's
        progress stream. Returns the image's ID. The registry's refusal is a
        PullRefusedError with its words; the credentials are never in a message."""
        repository, tag = docker.utils.parse_repository_tag(image)

        def pull() -> None:
            try:
                for message in self.client.api.pull(
                        repository, tag or "latest", stream=True, decode=True,
                        auth_config=dict(auth) if auth else None):
                    if not isinstance(message, Mapping):
                        continue
                    if message.get("error"):
                        raise PullRefusedError(f"pull {image}: {message['error']}")
                    on_message(message)
            except docker.errors.APIError as exc:
                raise PullRefusedError(f"pull {image}: {exc.explanation or exc}") from exc

        self._image_step(f"pull {image}", pull)
        return str(self._inspect_image(image).get("Id", ""))

    def check_pull_access(self, image: str, auth: Mapping[str, str] | None) -> None:
        """Whether ``auth`` may pull ``image`` as it is on the node: its registry is
        asked for the manifest of the node's digest of it (of its tag when it has no
        digest), nothing is downloaded. PullRefusedError with the registry's words."""
        repository, _ = docker.utils.parse_repository_tag(image)
        digests = self._inspect_image(image).get("RepoDigests") or ()
        reference = next((d for d in digests if str(d).split("@", 1)[0] == repository),
                         image)
        with _translated(f"inspect {reference} in its registry"):
            try:
                self.client.api.inspect_distribution(
                    reference, auth_config=dict(auth) if auth else None)
            except docker.errors.APIError as exc:
                raise PullRefusedError(f"pull {image}: {exc.explanation or exc}") from exc

    # ---------------------------------------------------------------------- actions
    def commit(self, container_id: str, name: str, image: str) -> None:
        """Save the container's filesystem (added, changed and deleted files)."""
        repository, tag = image.rsplit(":", 1)
        self._image_step(f"commit {name}", lambda: self.client.api.commit(
            container_id, repository=repository, tag=tag, pause=True,
            message=f"gpudock: disk of {name} ({container_id})"))

    def commit_to(self, container_id: str, name: str, image: str, *, pause: bool) -> None:
        """``docker commit`` of a container that keeps running (paused during the
        commit when ``pause``), to ``image`` (repository:tag)."""
        repository, tag = image.rsplit(":", 1)
        self._image_step(f"commit {name}", lambda: self.client.api.commit(
            container_id, repository=repository, tag=tag, pause=pause,
            message=f"committed from {name}"))

    def flatten(self, container_id: str, name: str, image: str) -> None:
        """Replace ``image`` (committed from the container) with a one-layer image of
        the container's filesystem and the same config: export + import."""
        api = self.client.api
        committed = self._inspect_image(image)
        changes = import_changes(committed.get("Config") or {})
        repository, tag = image.rsplit(":", 1)
        self._image_step(f"flatten {name}", lambda: api.import_image(
            src=api.export(container_id), repository=repository, tag=tag, changes=changes,
            stream_src=True))
        self.remove_image(committed["Id"])  # the many-layer commit, now untagged

    def save_image(self, image: str, chunk_size: int) -> Iterator[bytes]:
        """``docker save`` of one image, as a stream of chunks of at most
        ``chunk_size`` bytes (errors translated, on the way too)."""
        chunks = self._call(f"save {image}", lambda: self.client.api.get_image(
            image, chunk_size=chunk_size))

        def translated() -> Iterator[bytes]:
            with _translated(f"save {image}"):
                yield from chunks
        return translated()

    def load_image(self, chunks: Iterator[bytes], what: str) -> None:
        """``docker load`` of a tar stream given as chunks. Docker answers 200 before
        it reads the stream, so a failure (a full disk) comes as a message in its
        answer: raised as Docker's refusal would be."""
        def load() -> None:
            for message in self.client.api.load_image(chunks, quiet=True):
                error = message.get("error") if isinstance(message, dict) else None
                if error:
                    raise docker.errors.APIError(str(error), explanation=str(error))

        self._image_step(what, load)

    def tag_image(self, source: str, target: str) -> bool:
        """Give the image ``source`` names the tag ``target`` as well; False when
        ``source`` does not exist (a crash after a re-tag removed it: nothing to do)."""
        repository, tag = target.rsplit(":", 1)
        try:
            self._image_step(f"tag {source} as {target}", lambda: self.client.api.tag(
                source, repository, tag, force=True))
        except (ImageNotPresentError, DockerRefusedError):
            return False
        return True

    def remove_image(self, image: str) -> bool:
        """Remove an image (or untag it); True when it is gone, already gone included
        (a crash between removing it and noting that), False when a container still
        uses it."""
        def remove() -> bool:
            try:
                self.client.api.remove_image(image)
            except docker.errors.NotFound:  # ImageNotFound is one
                return True
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    return False
                raise
            return True

        return self._image_step(f"remove image {image}", remove)

    def remove_dangling_images(self, namespace: str, name: str) -> int:
        """Remove untagged images a failed save of this resource left behind (a saved
        disk carries the container's labels); returns how many."""
        api = self.client.api
        found = self._call("list images", lambda: api.images(filters={
            "dangling": True, "label": [f"{labels.NAMESPACE}={namespace}",
                                        f"{labels.NAME}={name}"]}))
        for image in found:
            self.remove_image(image["Id"])
        return len(found)
