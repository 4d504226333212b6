"""Docker volumes: the ones made for an image's VOLUMEs and the SizedVolumes' ones.

All are of the local driver. A volume is only removed by name or by its resource's
labels, never with a container.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

from gpudock.adapters.docker.connection import DockerConnection
from gpudock.adapters.docker.errors import ContainerGoneError, DockerRefusedError
from gpudock.api import gpu_replica_set
from gpudock.core import labels


class VolumeMixin(DockerConnection):
    def volume_exists(self, name: str) -> bool:
        try:
            self._call(f"inspect volume {name}", lambda: self.client.api.inspect_volume(name))
        except (DockerRefusedError, ContainerGoneError):
            return False
        return True

    def volume_mounted(self, name: str) -> bool:
        """A Docker volume exists and, when it binds a host directory (a SizedVolume),
        that directory is a mount point now: a bind of an unmounted directory would
        give a container the empty directory below instead of the volume."""
        try:
            info = self._call(f"inspect volume {name}",
                              lambda: self.client.api.inspect_volume(name))
        except (DockerRefusedError, ContainerGoneError):
            return False
        options = info.get("Options") or {}
        if options.get("type") == "none" and "bind" in str(options.get("o", "")):
            return os.path.ismount(str(options.get("device", "")))
        return True

    def volume_info(self, name: str) -> dict[str, Any] | None:
        """Docker's inspect of a volume (Mountpoint, Options, Labels), None if gone."""
        try:
            info = self._call(f"inspect volume {name}",
                              lambda: self.client.api.inspect_volume(name))
        except (DockerRefusedError, ContainerGoneError):
            return None
        return dict(info or {})

    def create_volume(self, name: str, options: dict[str, str],
                      extra_labels: dict[str, str] | None = None) -> None:
        """A Docker volume of the local driver with these driver options (a bind of
        a host directory, a size, or none); one that exists already is kept."""
        self._call(f"create volume {name}", lambda: self.client.api.create_volume(
            name, driver="local", driver_opts=options,
            labels={labels.KIND: "SizedVolume", **(extra_labels or {})}))

    def remove_volume(self, name: str) -> None:
        """Remove a Docker volume; already gone is fine."""
        with contextlib.suppress(ContainerGoneError):
            self._call(f"remove volume {name}",
                       functools.partial(self.client.api.remove_volume, name))

    def instance_volumes(self, namespace: str, name: str, uid: str) -> dict[str, str]:
        """The Docker volumes gpudock made for one GpuReplicaSet's image VOLUMEs (every
        revision's): name -> mount point."""
        api = self.client.api
        wanted = [f"{labels.NAMESPACE}={namespace}", f"{labels.NAME}={name}",
                  f"{labels.KIND}={gpu_replica_set.KIND}", f"{labels.UID}={uid}"]
        found = self._call("list volumes", lambda: api.volumes(filters={"label": wanted}))
        return {str(v["Name"]): str(v.get("Mountpoint") or "")
                for v in (found or {}).get("Volumes") or ()}

    def remove_volumes(self, namespace: str, name: str, uid: str | None = None) -> int:
        """Remove the Docker volumes gpudock made for a resource's image VOLUMEs (of
        one incarnation only, when ``uid`` is given); returns how many were removed
        (one still in use stays)."""
        api = self.client.api
        wanted = [f"{labels.NAMESPACE}={namespace}", f"{labels.NAME}={name}",
                  f"{labels.KIND}={gpu_replica_set.KIND}",  # never a SizedVolume's of the name
                  *([f"{labels.UID}={uid}"] if uid is not None else [])]
        found = self._call("list volumes", lambda: api.volumes(filters={"label": wanted}))
        removed = 0
        for volume in (found or {}).get("Volumes") or ():
            with contextlib.suppress(DockerRefusedError, ContainerGoneError):
                self._call(f"remove volume {volume['Name']}",
                           functools.partial(api.remove_volume, volume["Name"]))
                removed += 1
        return removed
