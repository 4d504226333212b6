"""The node's Docker engine, through the Docker SDK.

Every docker/requests exception is translated here: an unreachable engine becomes
:class:`DockerUnavailableError` (transient), a request Docker refuses because of the
spec (a host port in use, a missing bind source) becomes a :class:`UserError`.
Volumes are never removed with a container.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import docker
import docker.errors
import docker.types
import docker.utils
import requests
import requests.exceptions

from gpudock.adapters.command_lookup import missing_command
from gpudock.adapters.container_events import ContainerCache
from gpudock.adapters.filesystem_info import free_bytes
from gpudock.api import gpu_replica_set
from gpudock.api.container_fields import Protocol
from gpudock.core import labels
from gpudock.core.container_config import ContainerConfig, exact_env
from gpudock.core.observed import ImageInfo, ObservedContainer, ResourceKey
from gpudock.errors import GpudockError, TransientError, UserError

T = TypeVar("T")


class DockerUnavailableError(TransientError):
    """The Docker engine did not answer, or failed on its side."""

    reason = "DockerUnavailable"


class ContainerGoneError(TransientError):
    """The container vanished between observation and action; observe again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=1)


class HostPortBusyError(UserError):
    """Docker could not bind a host port: something outside its view holds it."""

    def __init__(self, message: str, port: int | None) -> None:
        super().__init__("HostPortInUse", message)
        self.port = port


class DiskFullError(UserError):
    """Docker (or the agent) ran out of disk space."""

    def __init__(self, message: str) -> None:
        super().__init__("DiskFull", message)


_BUSY_PORT_RE = re.compile(r":(\d+)(?:: bind: address already in use| failed: port is already)")


# Docker gives a status code, not a kind, for most refusals; these few are told
# apart by their message because nothing else names them.
_PORT_BUSY_TEXT = ("port is already allocated", "address already in use")
_EXEC_FAILED_RE = re.compile(r'exec: "[^"]*": (?:executable file not found|stat [^:]*: no '
                             r"such file or directory|permission denied)")
_RUNTIME_REFUSED_TEXT = "OCI runtime create failed"  # runc refused the container's config


class Step:
    """The condition reason Docker's refusal of a step is reported under."""

    CREATE = "ContainerCreateFailed"
    START = "ContainerStartFailed"
    OTHER = "DockerRequestFailed"


def _refusal(what: str, step: str, exc: docker.errors.APIError) -> Exception:
    """What an API error means: the user's to fix (a UserError with Docker's own
    words), or Docker being unwell (transient)."""
    text = str(exc.explanation or exc)
    code = exc.status_code or 0
    if any(busy in text for busy in _PORT_BUSY_TEXT):
        match = _BUSY_PORT_RE.search(text)
        return HostPortBusyError(f"{what}: {text}", int(match.group(1)) if match else None)
    if "no space left on device" in text:
        return DiskFullError(f"{what}: {text}")
    if "bind source path does not exist" in text:
        return UserError("HostPathMissing", f"{what}: {text}")
    if step == Step.START and _EXEC_FAILED_RE.search(text):
        return UserError("CommandNotFound", f"{what}: the command cannot be run in the "
                         f"image: {text}")
    if 400 <= code < 500:
        return UserError(step, f"{what}: {text}")
    if step in (Step.CREATE, Step.START) and _RUNTIME_REFUSED_TEXT in text:
        # The runtime refused this container (a mount over /proc, a NUL in an env
        # value): it would refuse it again on every retry.
        return UserError(step, f"{what}: {text}")
    return DockerUnavailableError(f"{what}: Docker failed (HTTP {code}): {text}")


@contextlib.contextmanager
def _translated(what: str, step: str = Step.OTHER) -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise UserError("ImageNotPresent", f"{what}: {exc.explanation}") from exc
    except docker.errors.NotFound as exc:
        raise ContainerGoneError(f"{what}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        raise _refusal(what, step, exc) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"{what}: cannot reach Docker: {exc}") from exc


# Connections kept open to Docker: one per step that may run at once (many resources
# stopping or saving at the same time), so none is made and dropped per call.
CONNECTIONS = 64


class DockerRuntime:
    def __init__(self, docker_host: str | None = None, timeout: float = 600,
                 stop_timeout: float = 30,
                 on_request: Callable[[str], None] | None = None) -> None:
        """``on_request`` is told the HTTP method of every request made to Docker's
        API (a metric counts them), from the thread that made it."""
        self._docker_host = docker_host
        self._on_request = on_request
        self._timeout = timeout
        self._stop_timeout = stop_timeout
        self._client: docker.DockerClient | None = None
        self._connecting = threading.Lock()
        self._containers = ContainerCache(self._container_events)

    def follow_events(self, on_event: Callable[[str], None] | None = None) -> None:
        """Keep the node's containers from Docker's event stream from now on (see
        container_events.py); ``on_event`` gets the resource UID of each event of a
        gpudock container, from the stream's thread."""
        self._containers.follow(on_event)

    def events_followed(self) -> bool:
        """Whether Docker's event stream is followed now: every change of a container
        wakes its resource, so a periodic look is only a safety net."""
        return self._containers.live()

    def _container_events(self) -> Iterable[dict[str, Any]]:
        stream: Iterable[dict[str, Any]] = self.client.api.events(
            decode=True, filters={"type": ["container", "image"]})
        return stream

    @property
    def client(self) -> docker.DockerClient:
        with self._connecting:  # one client, shared by the agent's worker threads
            if self._client is None:
                with _translated("connect"):
                    self._client = (
                        docker.DockerClient(base_url=self._docker_host,
                                            timeout=int(self._timeout),
                                            max_pool_size=CONNECTIONS)
                        if self._docker_host else
                        docker.from_env(timeout=int(self._timeout),
                                        max_pool_size=CONNECTIONS))
                if self._on_request is not None:
                    # The API client is a requests session: its response hooks see
                    # every request it makes, the event stream's included.
                    self._client.api.hooks["response"].append(self._tell_request)
            return self._client

    def _tell_request(self, response: requests.Response, *_: Any, **__: Any) -> None:
        """A response hook (returns None: the response stays as it is)."""
        if self._on_request is not None:
            self._on_request(response.request.method or "")

    def _call(self, what: str, fn: Callable[[], T], step: str = Step.OTHER) -> T:
        with _translated(what, step):
            return fn()

    def _change(self, container_id: str, what: str, fn: Callable[[], T],
                step: str = Step.OTHER) -> T:
        """A call that changes a container: observed afresh afterwards, whatever
        came of it (its event may reach the cache after the next observation)."""
        try:
            return self._call(what, fn, step)
        finally:
            self._containers.changed(container_id)

    def _image_step(self, what: str, fn: Callable[[], T]) -> T:
        """A call that makes, tags or removes images: every remembered image answer
        is stale afterwards, whatever came of it (its event may come later)."""
        try:
            return self._call(what, fn)
        finally:
            self._containers.images_changed()

    def version(self) -> str:
        return str(self._call("version", lambda: self.client.version()["Version"]))

    def close(self) -> None:
        self._containers.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ observation
    def list_containers(self) -> list[ObservedContainer]:
        """Every container on the node; gpudock's carry their owner from the labels.
        While Docker's events are followed, only what changed is inspected."""
        cached = self._containers.observe(self._container_ids, self._inspect_observed)
        if cached is not None:
            return cached
        return [found for found in map(self._inspect_observed, self._container_ids())
                if found is not None]

    def _container_ids(self) -> list[str]:
        summaries = self._call("list containers", lambda: self.client.api.containers(
            all=True))
        return [str(summary["Id"]) for summary in summaries]

    def _inspect_observed(self, container_id: str) -> ObservedContainer | None:
        try:
            with _translated("inspect"):
                return _observed(self.client.api.inspect_container(container_id))
        except ContainerGoneError:
            return None

    def _inspect_image(self, image: str) -> dict[str, Any]:
        return dict(self._call(f"inspect image {image}",
                               lambda: self.client.api.inspect_image(image)))

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
        except UserError:
            return None
        config = attrs.get("Config") or {}
        found = config.get("Labels") or {}
        owner = None
        if found.get(labels.KIND) == gpu_replica_set.KIND:
            owner = (found.get(labels.NAMESPACE, ""), found.get(labels.NAME, ""),
                     found.get(labels.UID, ""))
        return ImageInfo(id=str(attrs.get("Id", "")),
                         repo_tags=tuple(attrs.get("RepoTags") or ()), owner=owner,
                         volumes=tuple(sorted(config.get("Volumes") or {})))

    def writable_layer_bytes(self, container_id: str) -> int:
        """The size of the container's own files (its writable layer)."""
        found = self._call("measure container", lambda: self.client.api.containers(
            all=True, size=True, filters={"id": container_id}))
        return int(found[0].get("SizeRw") or 0) if found else 0

    def writable_layer_dir(self, container_id: str) -> str | None:
        """Docker's answer now (not a cached one) to where the container's writable
        layer is; None when its storage driver is not overlay2."""
        with _translated("inspect"):
            return upper_dir_of(self.client.api.inspect_container(container_id))

    def storage(self) -> tuple[str, str]:
        """Docker's storage driver and root directory."""
        info = self._call("info", lambda: self.client.info())
        return str(info.get("Driver") or ""), str(info.get("DockerRootDir") or "")

    def free_bytes(self) -> int | None:
        """Free space in Docker's root directory, where a saved disk is written; None
        when the agent cannot see that directory (then no estimate is made)."""
        root = self._call("info", lambda: self.client.info()).get("DockerRootDir")
        try:
            return free_bytes(str(root))
        except (OSError, TypeError):
            return None

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

    def disk_use(self) -> dict[str, int]:
        """Bytes each tagged image holds that no other image shares (what removing
        it would free), by tag."""
        images = self._call("disk use", lambda: self.client.api.df()).get("Images") or ()
        return {tag: max(int(i.get("Size") or 0) - max(int(i.get("SharedSize") or 0), 0), 0)
                for i in images for tag in i.get("RepoTags") or ()}

    def layer_count(self, image: str) -> int:
        return len(self._inspect_image(image).get("RootFS", {}).get("Layers") or ())

    # ---------------------------------------------------------------------- actions
    def create_and_start(self, config: ContainerConfig, *, start: bool = True,
                         prepare: Callable[[str], None] | None = None) -> str:
        """Create the container, run ``prepare`` on it (its ID) before it ever starts,
        then start it unless ``start`` is False. A container that fails any of it is
        removed (it never ran, so it holds nothing of the user's)."""
        api = self.client.api
        env: list[str] | dict[str, str] = config.env
        command: list[str] | None = list(config.command) if config.command else None
        if config.base_image and config.image != config.base_image:
            # A preserved disk: its image config still has the old revision's
            # variables and command; start from the base image's instead.
            base = self._inspect_image(config.base_image).get("Config") or {}
            source = self._inspect_image(config.image).get("Config") or {}
            env = exact_env(base.get("Env") or [], source.get("Env") or [], config.env)
            if command is None:
                command = base.get("Cmd")
        for volume in config.image_volumes:  # labelled, so Purge finds them
            self._call(f"create volume {volume.source}", functools.partial(
                api.create_volume, volume.source, labels=config.volume_labels))
        dns = config.dns
        host_config = api.create_host_config(
            port_bindings={f"{p.container_port}/{p.protocol.lower()}": [("", p.host_port)]
                           for p in config.ports},
            mounts=[docker.types.Mount(target=m.target, source=m.source,
                                       type="volume" if m.is_volume else "bind",
                                       read_only=m.read_only)
                    for m in (*config.mounts, *config.image_volumes)],
            extra_hosts=list(config.extra_hosts) or None,
            init=config.init,
            dns=list(dns.nameservers) or None if dns else None,
            dns_search=list(dns.searches) or None if dns else None,
            dns_opt=list(dns.options) or None if dns else None,
            runtime=config.runtime,
            restart_policy={"Name": config.restart_policy},
            device_requests=[docker.types.DeviceRequest(
                driver="nvidia", device_ids=list(config.gpu_device_ids),
                capabilities=[["gpu"]])] if config.gpu_device_ids else None,
        )
        self._containers.created()  # also when the reply is lost: list again
        created = self._call(f"create {config.name}", lambda: api.create_container(
            config.image, command=command, name=config.name, environment=env,
            labels=config.labels, hostname=config.hostname or None,
            ports=[(p.container_port, p.protocol.lower()) for p in config.ports],
            host_config=host_config,
        ), Step.CREATE)
        container_id = str(created["Id"])
        try:
            if prepare is not None:
                prepare(container_id)
            if not start:
                return container_id
            if config.init and config.command:
                self._check_command(container_id, config.name)
            self._change(container_id, f"start {config.name}",
                         lambda: api.start(container_id), Step.START)
            self._verify_bind_mounts(container_id, config)
        except Exception:
            # Never leave a created-but-unstartable container holding GPUs and ports;
            # it has no user data yet (it never ran).
            with contextlib.suppress(GpudockError):
                self.remove(container_id, config.name)
            raise
        return container_id

    def _check_command(self, container_id: str, name: str) -> None:
        """With Docker's init as PID 1 nothing checks the command at start: look it up
        as runc would (see command_lookup) and refuse as Docker would."""
        attrs = self._call(f"inspect {name}",
                           lambda: self.client.api.inspect_container(container_id))
        config = attrs.get("Config") or {}
        problem = missing_command(functools.partial(self._stat, container_id),
                                  str(attrs.get("Path") or ""), config.get("Env") or [],
                                  str(config.get("WorkingDir") or ""))
        if problem is not None:
            raise UserError("CommandNotFound", f"start {name}: the command cannot be run "
                            f"in the image: {problem} (looked up before the start, as "
                            "Docker's init would not report it)")

    def _stat(self, container_id: str, path: str) -> dict[str, Any] | None:
        """Docker's stat of a path in a container's filesystem (also before it ever
        ran); None when there is no such path. The SDK has no call for it, only the
        HEAD request behind ``docker cp``."""
        api = self.client.api

        def head() -> dict[str, Any] | None:
            response = api.head(f"{api.base_url}/v{api.api_version}/containers/"
                                f"{container_id}/archive", params={"path": path})
            if response.status_code == 404:
                return None
            response.raise_for_status()
            header = response.headers.get("X-Docker-Container-Path-Stat")
            return cast("dict[str, Any]", docker.utils.decode_json_header(header)) \
                if header else None
        return self._call(f"stat {path}", head)

    def _verify_bind_mounts(self, container_id: str, config: ContainerConfig) -> None:
        """The directory the container really got is the one that was checked: a path
        swapped for a symlink between the check and the mount is caught here (the
        container is then removed). Needs the container's /proc entry; skipped where
        the agent cannot see it (docs/security.md)."""
        checked = [m for m in config.mounts if m.identity is not None]
        if not checked:
            return
        state = self._call(f"inspect {config.name}", lambda: self.client.api.inspect_container(
            container_id)).get("State") or {}
        root = f"/proc/{state.get('Pid') or 0}/root"
        for mount in checked:
            try:
                info = os.lstat(root + mount.target)
            except OSError:
                continue  # no view of the container's filesystem from here
            if stat.S_ISLNK(info.st_mode):
                continue  # the image has a symlink there; Docker mounted its target
            if (info.st_dev, info.st_ino) != mount.identity:
                raise UserError("HostPathChanged", f"hostPath {mount.source} changed "
                                "between its check and the mount (a symlink was swapped "
                                "in?); the container was removed")

    def start(self, container_id: str, name: str) -> None:
        self._change(container_id, f"start {name}",
                     lambda: self.client.api.start(container_id), Step.START)

    def stop(self, container_id: str, name: str) -> None:
        self._change(container_id, f"stop {name}", lambda: self.client.api.stop(
            container_id, timeout=int(self._stop_timeout)))

    def unpause(self, container_id: str, name: str) -> None:
        self._change(container_id, f"unpause {name}",
                     lambda: self.client.api.unpause(container_id))

    def rename(self, container_id: str, new_name: str) -> None:
        self._change(container_id, f"rename to {new_name}", lambda: self.client.api.rename(
            container_id, new_name))

    def set_restart_policy(self, container_id: str, name: str, policy: str) -> None:
        self._change(container_id, f"update {name}", lambda: self.client.api.update_container(
            container_id, restart_policy=cast(Any, {"Name": policy})))

    def commit(self, container_id: str, name: str, image: str) -> None:
        """Save the container's filesystem (added, changed and deleted files)."""
        repository, tag = image.rsplit(":", 1)
        self._image_step(f"commit {name}", lambda: self.client.api.commit(
            container_id, repository=repository, tag=tag, pause=True,
            message=f"gpudock: disk of {name} ({container_id})"))

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

    def remove_volumes(self, namespace: str, name: str, uid: str | None = None) -> int:
        """Remove the Docker volumes gpudock made for a resource's image VOLUMEs (of
        one incarnation only, when ``uid`` is given); returns how many were removed
        (one still in use stays)."""
        api = self.client.api
        wanted = [f"{labels.NAMESPACE}={namespace}", f"{labels.NAME}={name}",
                  *([f"{labels.UID}={uid}"] if uid is not None else [])]
        found = self._call("list volumes", lambda: api.volumes(filters={"label": wanted}))
        removed = 0
        for volume in (found or {}).get("Volumes") or ():
            with contextlib.suppress(UserError, ContainerGoneError):
                self._call(f"remove volume {volume['Name']}",
                           functools.partial(api.remove_volume, volume["Name"]))
                removed += 1
        return removed

    def remove(self, container_id: str, name: str) -> None:
        """Remove the container (never its volumes); already gone is fine."""
        with contextlib.suppress(ContainerGoneError):
            self._change(container_id, f"remove {name}", lambda: self.client.api.remove_container(
                container_id, force=True, v=False))

    def load_image(self, chunks: Iterator[bytes], what: str) -> None:
        """``docker load`` of a tar stream given as chunks."""
        def load() -> None:
            for _ in self.client.api.load_image(chunks, quiet=True):
                pass

        self._image_step(what, load)

    def commit_to(self, container_id: str, name: str, image: str, *, pause: bool) -> None:
        """``docker commit`` of a container that keeps running (paused during the
        commit when ``pause``), to ``image`` (repository:tag)."""
        repository, tag = image.rsplit(":", 1)
        self._image_step(f"commit {name}", lambda: self.client.api.commit(
            container_id, repository=repository, tag=tag, pause=pause,
            message=f"committed from {name}"))

    def image_config(self, image: str) -> tuple[str, int, dict[str, Any]]:
        """An image's ID, size and config (None-free)."""
        attrs = self._inspect_image(image)
        return str(attrs.get("Id", "")), int(attrs.get("Size") or 0), dict(
            attrs.get("Config") or {})

    def volume_exists(self, name: str) -> bool:
        try:
            self._call(f"inspect volume {name}", lambda: self.client.api.inspect_volume(name))
        except (UserError, ContainerGoneError):
            return False
        return True

    def volume_mounted(self, name: str) -> bool:
        """A Docker volume exists and, when it binds a host directory (a SizedVolume),
        that directory is a mount point now: a bind of an unmounted directory would
        give a container the empty directory below instead of the volume."""
        try:
            info = self._call(f"inspect volume {name}",
                              lambda: self.client.api.inspect_volume(name))
        except (UserError, ContainerGoneError):
            return False
        options = info.get("Options") or {}
        if options.get("type") == "none" and "bind" in str(options.get("o", "")):
            return os.path.ismount(str(options.get("device", "")))
        return True

    def create_volume(self, name: str, options: dict[str, str],
                      extra_labels: dict[str, str] | None = None) -> None:
        """A Docker volume of the local driver with these driver options (a bind of
        a host directory, a size, or none); one that exists already is kept."""
        self._call(f"create volume {name}", lambda: self.client.api.create_volume(
            name, driver="local", driver_opts=options,
            labels={labels.KIND: "SizedVolume", **(extra_labels or {})}))

    def volume_info(self, name: str) -> dict[str, Any] | None:
        """Docker's inspect of a volume (Mountpoint, Options, Labels), None if gone."""
        try:
            info = self._call(f"inspect volume {name}",
                              lambda: self.client.api.inspect_volume(name))
        except (UserError, ContainerGoneError):
            return None
        return dict(info or {})

    def remove_volume(self, name: str) -> None:
        """Remove a Docker volume; already gone is fine."""
        with contextlib.suppress(ContainerGoneError):
            self._call(f"remove volume {name}",
                       functools.partial(self.client.api.remove_volume, name))

    def tag_image(self, source: str, target: str) -> bool:
        """Give the image ``source`` names the tag ``target`` as well; False when
        ``source`` does not exist (a crash after a re-tag removed it: nothing to do)."""
        repository, tag = target.rsplit(":", 1)
        try:
            self._image_step(f"tag {source} as {target}", lambda: self.client.api.tag(
                source, repository, tag, force=True))
        except UserError:
            return False
        return True

    def command_missing(self, container_id: str, command: str,
                        env: list[str]) -> bool | None:
        """Whether ``command`` cannot be found in a running container's filesystem
        with its PATH from ``env`` (True: it is missing, False: it is there, None:
        cannot tell, e.g. the image has no shell)."""
        path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), None)
        probe = ["sh", "-c", 'command -v "$1" >/dev/null 2>&1 || exit 100', "sh", command]
        try:
            code, _ = self.exec(container_id, probe,
                                environment=[f"PATH={path}"] if path else None)
        except GpudockError:
            return None
        return {0: False, 100: True}.get(code)

    def exec(self, container_id: str, command: list[str],
             environment: list[str] | None = None) -> tuple[int, str]:
        api = self.client.api
        exec_id = str(self._call("exec", lambda: api.exec_create(
            container_id, command, environment=environment))["Id"])
        output = self._call("exec", lambda: api.exec_start(exec_id))
        code = self._call("exec", lambda: api.exec_inspect(exec_id))["ExitCode"]
        return int(code or 0), output.decode(errors="replace")


def import_changes(config: dict[str, Any]) -> list[str]:
    """Dockerfile instructions that re-apply an image config to an imported rootfs."""
    changes = [f"ENV {_env_instruction(entry)}" for entry in config.get("Env") or ()]
    for key, instruction in (("Entrypoint", "ENTRYPOINT"), ("Cmd", "CMD")):
        if config.get(key):
            changes.append(f"{instruction} {json.dumps(config[key])}")
    if config.get("WorkingDir"):
        changes.append(f"WORKDIR {config['WorkingDir']}")
    if config.get("User"):
        changes.append(f"USER {config['User']}")
    changes += [f"EXPOSE {port}" for port in sorted(config.get("ExposedPorts") or {})]
    changes += [f"VOLUME {json.dumps([path])}" for path in sorted(config.get("Volumes") or {})]
    changes += [f"LABEL {json.dumps(k)}={_quoted(v)}"
                for k, v in sorted((config.get("Labels") or {}).items())]
    return changes


def _quoted(value: str) -> str:
    """A double-quoted Dockerfile word: no variable expansion, escapes kept."""
    return json.dumps(value, ensure_ascii=False).replace("$", "\\$")


def _env_instruction(entry: str) -> str:
    name, _, value = entry.partition("=")
    return f"{name}={_quoted(value)}"


def _observed(attrs: dict[str, Any]) -> ObservedContainer:
    config_labels: dict[str, str] = attrs.get("Config", {}).get("Labels") or {}
    owner = None
    if config_labels.get(labels.KIND) == gpu_replica_set.KIND:
        owner = ResourceKey(config_labels.get(labels.NAMESPACE, ""),
                            config_labels.get(labels.NAME, ""))
    bindings: dict[tuple[int, Protocol], int] = {}
    for port_proto, hosts in (attrs.get("HostConfig", {}).get("PortBindings") or {}).items():
        port, _, proto = port_proto.partition("/")
        for host in hosts or ():
            if host.get("HostPort"):
                bindings[(int(port), Protocol(proto.upper() or "TCP"))] = int(host["HostPort"])
    gpus = tuple(g for g in config_labels.get(labels.GPUS, "").split(",") if g)
    try:
        revision = int(config_labels.get(labels.REVISION, "0"))
    except ValueError:
        revision = 0
    volumes = {str(m.get("Destination")): str(m.get("Name")) for m in attrs.get("Mounts") or ()
               if m.get("Type") == "volume" and m.get("Name")}
    state = attrs.get("State") or {}
    return ObservedContainer(
        id=attrs["Id"], name=attrs.get("Name", "").lstrip("/"),
        status=state.get("Status", "unknown"),
        owner=owner, uid=config_labels.get(labels.UID, ""), revision=revision, gpus=gpus,
        spec_hash=config_labels.get(labels.SPEC_HASH, ""),
        base_image=config_labels.get(labels.IMAGE, ""), port_bindings=bindings,
        image=str(attrs.get("Config", {}).get("Image") or ""), upper_dir=upper_dir_of(attrs) or "",
        restart_policy=(attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name", ""),
        node=config_labels.get(labels.NODE, ""), volumes=volumes,
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=_docker_time(state.get("StartedAt")),
        finished_at=_docker_time(state.get("FinishedAt")),
    )


def upper_dir_of(inspect: dict[str, Any]) -> str | None:
    """What Docker says is an inspected container's writable layer directory (None
    when its storage driver is not overlay2); nothing is looked at on disk."""
    driver = inspect.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    return str(upper) if driver.get("Name") == "overlay2" and upper else None


def _docker_time(value: Any) -> str:
    """Docker's time stamp to whole-second RFC 3339 UTC; "" for its zero time."""
    text = str(value or "")
    if not text or text.startswith("0001-"):
        return ""
    return text[:19] + "Z"
