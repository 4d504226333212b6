"""An image copied under a new tag with its config rewritten: how image_commits.py
makes a running container's commit a clean image, its filesystem with none of what
belongs to the running instance in the image's config.

``docker commit`` merges the container's config into the image's (its GPUs in
NVIDIA_VISIBLE_DEVICES, gpudock's labels), and Docker has no verb that removes a
label or a variable from an image. So the commit goes to a temporary tag, and the
image is then passed through ``docker save`` / ``docker load`` with its config
rewritten: the layers are the committed ones (Docker already has them and keeps
them; only their bytes are read again), the config is the cleaned one.
"""

from __future__ import annotations

import collections
import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from gpudock.adapters.docker.errors import DockerUnavailableError
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.errors import GpudockError

ConfigEdit = Callable[[dict[str, Any]], dict[str, Any]]
_CHUNK = 1 << 20
# What the copy may hold between docker save and docker load: the agent's memory
# stays this (and a chunk or two in flight), whatever the image's size.
PIPE_BYTES = 4 * _CHUNK


class _GeneratorReader(io.RawIOBase):
    """A read()able file over an iterator of byte chunks (docker save's stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            try:
                self._rest = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]  # a view: no copy of the rest
        return size


class BoundedPipe(io.RawIOBase):
    """Bytes written on one thread, read as an iterator of chunks on another; a
    writer waits while ``limit`` bytes are unread, so the pipe never holds more. A
    reader that gives up (``abandon``) makes every write fail: the writer ends."""

    def __init__(self, limit: int = PIPE_BYTES) -> None:
        self._cond = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._limit = limit
        self._closed = False
        self._abandoned = False

    def writable(self) -> bool:
        return True

    @property
    def held(self) -> int:
        """The bytes written and not read yet."""
        with self._cond:
            return self._held

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        with self._cond:
            while self._held >= self._limit and not self._abandoned:
                self._cond.wait()
            if self._abandoned:
                raise BrokenPipeError("docker load stopped reading")
            self._chunks.append(chunk)
            self._held += len(chunk)
            self._cond.notify_all()
        return len(chunk)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        super().close()

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._chunks.clear()
            self._held = 0
            self._cond.notify_all()

    def chunks(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._chunks and not self._closed:
                    self._cond.wait()
                if not self._chunks:
                    return
                chunk = self._chunks.popleft()
                self._held -= len(chunk)
                self._cond.notify_all()
            yield chunk


def rewrite_image(runtime: DockerRuntime, source: str, target: str,
                  edit: ConfigEdit) -> None:
    """Load a copy of image ``source`` tagged ``target``, its config passed through
    ``edit`` (the legacy container_config with it). The image streams from docker
    save to docker load through a bounded pipe: never whole in the agent's memory."""
    saved = runtime.save_image(source, _CHUNK)
    pipe = BoundedPipe()
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            with tarfile.open(fileobj=io.BufferedReader(_GeneratorReader(saved), _CHUNK),
                              mode="r|") as inside, \
                    tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT,
                                 bufsize=_CHUNK) as out:
                for member in inside:
                    data = inside.extractfile(member) if member.isfile() else None
                    if member.name == "repositories":
                        continue  # the tag comes from the manifest
                    if member.name == "manifest.json" and data is not None:
                        manifest = json.loads(data.read())
                        for entry in manifest:
                            entry["RepoTags"] = [target]
                        _add(out, member, json.dumps(manifest).encode())
                    elif member.name.endswith(".json") and "/" not in member.name \
                            and data is not None:
                        config = json.loads(data.read())
                        config["config"] = edit(dict(config.get("config") or {}))
                        config.pop("container_config", None)
                        config.pop("container", None)
                        _add(out, member, json.dumps(config).encode())
                    else:
                        out.addfile(member, data)
        except BaseException as exc:
            failure.append(exc)
        finally:
            pipe.close()

    copier = threading.Thread(target=copy, name=f"rewrite {source}", daemon=True)
    copier.start()
    refused: GpudockError | None = None
    try:
        runtime.load_image(pipe.chunks(), f"load {target}")
    except GpudockError as exc:
        pipe.abandon()  # the copy stops at its next write
        refused = exc
    except BaseException:
        pipe.abandon()
        raise
    finally:
        copier.join()
    cause = next((f for f in failure if not isinstance(f, BrokenPipeError)), None)
    if isinstance(cause, GpudockError):  # docker save failed: load only saw the end
        raise cause
    if refused is not None:
        raise refused
    if cause is not None:
        raise DockerUnavailableError(f"copying docker save of {source} into docker load: "
                                     f"{cause!r}") from cause


def _add(out: tarfile.TarFile, member: tarfile.TarInfo, data: bytes) -> None:
    info = tarfile.TarInfo(member.name)
    info.size, info.mode, info.mtime = len(data), member.mode, member.mtime
    out.addfile(info, io.BytesIO(data))
