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

import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from gpudock.adapters.docker.runtime import DockerRuntime

ConfigEdit = Callable[[dict[str, Any]], dict[str, Any]]
_CHUNK = 1 << 20


class _GeneratorReader(io.RawIOBase):
    """A read()able file over an iterator of byte chunks (docker save's stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


class _Pipe(io.RawIOBase):
    """Bytes written on one thread, read as an iterator of chunks on another."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: list[bytes] = []
        self._closed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with self._cond:
            self._chunks.append(bytes(data))
            self._cond.notify()
        return len(data)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        super().close()

    def chunks(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._chunks and not self._closed:
                    self._cond.wait()
                if not self._chunks:
                    return
                chunk = b"".join(self._chunks)
                self._chunks.clear()
            yield chunk


def rewrite_image(runtime: DockerRuntime, source: str, target: str,
                  edit: ConfigEdit) -> None:
    """Load a copy of image ``source`` tagged ``target``, its config passed through
    ``edit`` (the legacy container_config with it)."""
    api = runtime.client.api
    saved = api.get_image(source, chunk_size=_CHUNK)
    pipe = _Pipe()
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            with tarfile.open(fileobj=io.BufferedReader(_GeneratorReader(iter(saved))),
                              mode="r|") as inside, \
                    tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as out:
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
    try:
        runtime.load_image(pipe.chunks(), f"load {target}")
    finally:
        copier.join()
    if failure:
        raise failure[0]


def _add(out: tarfile.TarFile, member: tarfile.TarInfo, data: bytes) -> None:
    info = tarfile.TarInfo(member.name)
    info.size, info.mode, info.mtime = len(data), member.mode, member.mtime
    out.addfile(info, io.BytesIO(data))
