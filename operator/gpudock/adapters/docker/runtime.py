"""The node's Docker engine as the rest of gpudock sees it: :class:`DockerRuntime`.

Every docker/requests exception is translated (errors.py): an unreachable engine
becomes ``DockerUnavailableError`` (transient), a request Docker refuses because
of the spec (a host port in use, a missing bind source) becomes a ``UserError``.
Volumes are never removed with a container.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable

import docker.types

from gpudock.adapters.docker.containers import ContainerMixin
from gpudock.adapters.docker.exec import ExecMixin
from gpudock.adapters.docker.images import ImageMixin
from gpudock.adapters.docker.volumes import VolumeMixin
from gpudock.adapters.filesystem_info import free_bytes, free_inodes
from gpudock.core import labels
from gpudock.errors import GpudockError, InternalError

NETWORK_ROLE = "instance-network"  # the gpudock.dev/kind label of the instance network


class DockerRuntime(ContainerMixin, ImageMixin, VolumeMixin, ExecMixin):
    """One Docker engine, one mixin per kind of object, as docker-py's own API client
    is made. The constructor and ``client`` are connection.py's; what else it offers:

    - the engine (here): ``version``, ``storage``, ``free_bytes``, ``free_inodes``,
      ``follow_events``, ``events_followed``, ``ensure_network``, ``close``
    - containers (containers.py): ``list_containers``, ``writable_layer_bytes``,
      ``writable_layer_entries``, ``writable_layer_dir``, ``create_and_start``,
      ``start``, ``stop``, ``unpause``, ``rename``, ``set_restart_policy``, ``remove``
    - images (images.py): ``image_exists``, ``preserved_tags``, ``image_info``,
      ``disk_use``, ``layer_count``, ``image_config``, ``commit``, ``commit_to``,
      ``flatten``, ``load_image``, ``tag_image``, ``remove_image``,
      ``remove_dangling_images``, ``pull_image``, ``check_pull_access``
    - volumes (volumes.py): ``volume_exists``, ``volume_mounted``, ``volume_info``,
      ``create_volume``, ``remove_volume``, ``remove_volumes``
    - commands in a container (exec.py): ``exec``, ``command_missing``
    """

    def follow_events(self, on_event: Callable[[str], None] | None = None,
                      on_reconnect: Callable[[], None] | None = None) -> None:
        """Keep the node's containers from Docker's event stream from now on (see
        container_events.py); ``on_event`` gets the resource UID of each event of a
        gpudock container, ``on_reconnect`` a call when the stream is back after a
        break, from the stream's thread."""
        self._containers.follow(on_event, on_reconnect)

    def events_followed(self) -> bool:
        """Whether Docker's event stream is followed now: every change of a container
        wakes its resource, so a periodic look is only a safety net."""
        return self._containers.live()

    def ensure_network(self, name: str, subnet: str) -> None:
        """The instance network: a bridge network ``name`` over ``subnet`` (its first
        address the gateway), made when missing. One of that name over another subnet
        stops the agent: the setting and the node disagree (InternalError)."""
        api = self.client.api
        problem = ""
        for attempt in range(2):
            found = [n for n in self._call("list networks", lambda: api.networks(names=[name]))
                     if n.get("Name") == name]
            if found:
                pools = {str(c.get("Subnet")) for c in
                         (found[0].get("IPAM") or {}).get("Config") or ()}
                if subnet not in pools:
                    raise InternalError(
                        f"Docker network {name} exists over {', '.join(sorted(pools)) or 'no'}"
                        f" subnet, not --instance-subnet {subnet}: set --instance-subnet to "
                        f"its subnet, or remove it (docker network rm {name}) once no "
                        "container is on it")
                return
            if attempt:
                break
            gateway = str(ipaddress.IPv4Network(subnet).network_address + 1)
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                subnet=subnet, gateway=gateway)])
            try:
                self._call(f"create network {name}", functools.partial(
                    api.create_network, name, driver="bridge", ipam=ipam,
                    labels={labels.KIND: NETWORK_ROLE}))
            except GpudockError as exc:  # made meanwhile by another agent? look again
                problem = str(exc)
        raise InternalError(f"Docker network {name} could not be made over {subnet} "
                            f"(--instance-subnet): {problem}")

    def version(self) -> str:
        return str(self._call("version", lambda: self.client.version()["Version"]))

    def storage(self) -> tuple[str, str]:
        """Docker's storage driver and root directory."""
        info = self._call("info", lambda: self.client.info())
        return str(info.get("Driver") or ""), str(info.get("DockerRootDir") or "")

    def free_bytes(self) -> int | None:
        """Free space in Docker's root directory, where a saved disk is written; None
        when the agent cannot see that directory (then no estimate is made)."""
        root = self._root_dir()
        try:
            return free_bytes(root)
        except (OSError, TypeError):
            return None

    def free_inodes(self) -> int | None:
        """Inodes left in Docker's root directory (a saved disk and a new container
        take some); None when it cannot be seen or has no fixed number."""
        root = self._root_dir()
        try:
            return free_inodes(root)
        except (OSError, TypeError):
            return None

    def _root_dir(self) -> str:
        return str(self._call("info", lambda: self.client.info()).get("DockerRootDir"))

    def close(self) -> None:
        self._containers.close()
        if self._client is not None:
            self._client.close()
            self._client = None
