"""Containers: observing the node's, creating, starting, stopping and removing them.

A container is removed with ``v=False``: volumes are never removed with a container.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any, cast

import docker.errors
import docker.types
import docker.utils
import requests

from gpudock.adapters.docker.connection import DockerConnection
from gpudock.adapters.docker.errors import ContainerGoneError, Step, _translated
from gpudock.adapters.docker.inspect import _observed, upper_dir_of
from gpudock.api.reasons import Reason
from gpudock.core.container_config import ContainerConfig, exact_env
from gpudock.core.limits import ContainerLimits, NodeCapacity, capacity_from
from gpudock.core.observed import ObservedContainer
from gpudock.errors import GpudockError, UserError


class ContainerMixin(DockerConnection):
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

    def writable_layer_bytes(self, container_id: str) -> int:
        """The size of the container's own files (its writable layer)."""
        found = self._call("measure container", lambda: self.client.api.containers(
            all=True, size=True, filters={"id": container_id}))
        return int(found[0].get("SizeRw") or 0) if found else 0

    def writable_layer_entries(self, container_id: str) -> int:
        """The paths the container added, changed or deleted (Docker's diff): each
        is an inode in a saved copy of its writable layer."""
        changes = self._call("diff container", lambda: self.client.api.diff(container_id))
        return len(changes or ())

    def writable_layer_dir(self, container_id: str) -> str | None:
        """Docker's answer now (not a cached one) to where the container's writable
        layer is; None when its storage driver is not overlay2."""
        with _translated("inspect"):
            return upper_dir_of(self.client.api.inspect_container(container_id))

    # ---------------------------------------------------------------------- actions
    def create_and_start(self, config: ContainerConfig, *, start: bool = True,
                         prepare: Callable[[str], Callable[[], None] | None] | None = None,
                         ) -> str:
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
        dns, limits = config.dns, config.limits
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
            network_mode=config.network or None,
            nano_cpus=limits.nano_cpus or None,
            mem_limit=limits.memory or None,
            memswap_limit=limits.memory or None,  # no swap beyond the memory limit
            pids_limit=limits.pids_limit or None,
            shm_size=limits.shm_size or None,
            device_requests=[docker.types.DeviceRequest(
                driver="nvidia", device_ids=list(config.gpu_device_ids),
                capabilities=[["gpu"]])] if config.gpu_device_ids else None,
        )
        # On the instance network at its fixed address: Docker gives the address when
        # the container starts, so a rollout's stopped old container (same address)
        # does not stand in the way, and can start again with it if the new one fails.
        # (docker-py takes a network name -> endpoint map; its stubs say one endpoint.)
        networking = api.create_networking_config(cast(Any, {
            config.network: api.create_endpoint_config(ipv4_address=config.address)})) \
            if config.network else None
        self._containers.created()  # also when the reply is lost: list again
        self._containers.expect(config.name, "create")
        created = self._call(f"create {config.name}", lambda: api.create_container(
            config.image, command=command, name=config.name, environment=env,
            labels=config.labels, hostname=config.hostname or None,
            ports=[(p.container_port, p.protocol.lower()) for p in config.ports],
            host_config=host_config, networking_config=networking,
        ), Step.CREATE)
        container_id = str(created["Id"])
        undo: Callable[[], None] | None = None
        try:
            if prepare is not None:
                undo = prepare(container_id)
            if not start:
                return container_id
            if config.init and config.command:
                self._check_command(container_id, config.name)
            self._containers.expect(container_id, "start")
            self._change(container_id, f"start {config.name}",
                         lambda: api.start(container_id), Step.START)
            self._verify_bind_mounts(container_id, config)
        except Exception:
            # Never leave a created-but-unstartable container holding GPUs and ports;
            # it never ran, and what prepare put in goes back first (a disk it was
            # handed). One whose undo failed is kept: it may hold the user's files.
            if undo is not None:
                undo()
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
        problem = self._found_commands.missing(
            functools.partial(self._stat, container_id), str(attrs.get("Image") or ""),
            str(attrs.get("Path") or ""), config.get("Env") or [],
            str(config.get("WorkingDir") or ""),
            [str(m.get("Destination") or "") for m in attrs.get("Mounts") or ()])
        if problem is not None:
            raise UserError(Reason.COMMAND_NOT_FOUND, f"start {name}: the command cannot "
                            f"be run in the image: {problem} (looked up before the start, "
                            "as Docker's init would not report it)")

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
                raise UserError(Reason.HOST_PATH_CHANGED, f"hostPath {mount.source} "
                                "changed between its check and the mount (a symlink was "
                                "swapped in?); the container was removed")

    def logs(self, container_id: str, *, follow: bool, tail: int | None,
             until: str | None = None) -> LogChunks:
        """The container's output (stdout and stderr as Docker keeps them), as chunks;
        ``until`` (RFC 3339): only what was written before (an earlier run's)."""
        what = f"logs of {container_id[:12]}"
        chunks = self._call(what, lambda: self.client.api.logs(
            container_id, stream=True, follow=follow, tail="all" if tail is None else tail,
            until=_epoch(until) if until else None))
        return LogChunks(chunks, what)

    def start(self, container_id: str, name: str) -> None:
        self._containers.expect(container_id, "start")
        self._change(container_id, f"start {name}",
                     lambda: self.client.api.start(container_id), Step.START)

    def stop(self, container_id: str, name: str) -> None:
        self._containers.expect(container_id, "kill", "die", "stop")
        self._change(container_id, f"stop {name}", lambda: self.client.api.stop(
            container_id, timeout=int(self._stop_timeout)))

    def unpause(self, container_id: str, name: str) -> None:
        self._containers.expect(container_id, "unpause")
        self._change(container_id, f"unpause {name}",
                     lambda: self.client.api.unpause(container_id))

    def rename(self, container_id: str, new_name: str) -> None:
        self._containers.expect(container_id, "rename")
        self._change(container_id, f"rename to {new_name}", lambda: self.client.api.rename(
            container_id, new_name))

    def set_restart_policy(self, container_id: str, name: str, policy: str) -> None:
        self._containers.expect(container_id, "update")
        self._change(container_id, f"update {name}", lambda: self.client.api.update_container(
            container_id, restart_policy=cast(Any, {"Name": policy})))

    def update_limits(self, container_id: str, name: str, limits: ContainerLimits) -> None:
        """Docker's update of the container's NanoCpus, Memory, MemorySwap and
        PidsLimit (the SDK's update_container knows neither NanoCpus nor PidsLimit).
        A 0 leaves Docker's CPU or memory value as it is (Docker cannot lift one);
        pids -1 is none."""
        api = self.client.api
        body = {"NanoCpus": limits.nano_cpus, "Memory": limits.memory,
                "MemorySwap": limits.memory, "PidsLimit": limits.pids_limit or -1}

        def update() -> None:
            response = api.post(f"{api.base_url}/v{api.api_version}/containers/"
                                f"{container_id}/update", json=body)
            try:
                response.raise_for_status()
            except requests.exceptions.HTTPError as exc:  # as the SDK's own calls
                raise docker.errors.create_api_error_from_http_exception(exc) from exc
        self._containers.expect(container_id, "update")
        self._change(container_id, f"update the limits of {name}", update)

    def node_capacity(self) -> NodeCapacity | None:
        """The engine's CPU count and memory (docker info NCPU, MemTotal), asked once."""
        if self._capacity is None:
            info = self._call("info", self.client.api.info)
            cpus, memory = int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0)
            if cpus and memory:
                self._capacity = capacity_from(cpus, memory)
        return self._capacity

    def remove(self, container_id: str, name: str) -> None:
        """Remove the container (never its volumes); already gone is fine."""
        self._containers.expect(container_id, "kill", "die", "destroy")
        with contextlib.suppress(ContainerGoneError):
            self._change(container_id, f"remove {name}", lambda: self.client.api.remove_container(
                container_id, force=True, v=False))


def _epoch(when: str) -> int:
    """Docker's RFC 3339 time (nanoseconds kept by Docker) as whole epoch seconds."""
    whole = when.split(".", 1)[0].rstrip("Z")
    return int(datetime.datetime.fromisoformat(whole).replace(
        tzinfo=datetime.UTC).timestamp())


class LogChunks:
    """A container's output as Docker streams it: iterate for its chunks (Docker's
    errors translated); ``close()``, from any thread, ends the stream (a follow that
    waits on a silent container included) and frees its connection."""

    def __init__(self, stream: Any, what: str) -> None:
        self._stream = stream
        self._what = what

    def __iter__(self) -> Iterator[bytes]:
        with _translated(self._what):
            yield from self._stream

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closed already, or the socket is gone
            self._stream.close()
