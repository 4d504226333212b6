"""A GpuReplicaSet as the Go service's clients write and read it: the spec made from
a POST /replicaSet body, and the Info (Docker's Config and HostConfig field names)
made from the resource."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gpudock.errors import SpecError
from gpudock.rest.names import go_time, versioned

VERSION_VARIABLE = "CONTAINER_VERSION"  # the agent's (core/container_config.py)
_PORT = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp))?$", re.IGNORECASE)


class ShapeError(SpecError):
    """The body asks for something no GpuReplicaSet can be (the Go service's Docker
    call would have failed)."""


def env_list(pairs: Sequence[str]) -> list[dict[str, str]]:
    """["K=V"] as the spec's env; CONTAINER_VERSION is left out: the agent sets it in
    every container to its revision (as the Go service's last entry did)."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key:
            raise ShapeError(f"env entry {pair!r} has no name")
        found[key] = value
    found.pop(VERSION_VARIABLE, None)
    return [{"name": k, "value": v} for k, v in found.items()]


def port_list(ports: Sequence[str]) -> list[dict[str, Any]]:
    result = []
    for text in ports:
        match = _PORT.match(text.strip())
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise ShapeError(f"container port {text!r} is no port number")
        result.append({"containerPort": int(match.group(1)),
                       "protocol": (match.group(2) or "tcp").upper()})
    return result


def mount(bind: Mapping[str, str], volume_object: str | None) -> dict[str, Any]:
    """A bind as a mount: a host path when ``volume_object`` is None."""
    if not bind.get("src") or not bind.get("dest"):
        raise ShapeError("a bind needs src and dest")
    if not bind["dest"].startswith("/"):
        raise ShapeError(f"bind destination {bind['dest']!r} is not an absolute path")
    if volume_object is None:
        return {"mountPath": bind["dest"], "hostPath": bind["src"], "readOnly": False}
    return {"mountPath": bind["dest"], "volume": volume_object, "readOnly": False}


def info(name: str, obj: Mapping[str, Any],
         volume_versions: Mapping[str, str]) -> dict[str, Any]:
    """The Go service's EtcdContainerInfo of the current revision. ``volume_versions``:
    a mounted SizedVolume's object name -> its versioned Go name (``bar-2``)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    version = int(status.get("revision") or 0)
    created = next((h.get("createdAt") for h in status.get("history") or ()
                    if h.get("revision") == version), None)
    return shape_info(name, spec, status, version,
                      go_time(created or (obj.get("metadata") or {}).get("creationTimestamp")),
                      volume_versions)


def shape_info(name: str, spec: Mapping[str, Any], status: Mapping[str, Any], version: int,
               create_time: str, volume_versions: Mapping[str, str]) -> dict[str, Any]:
    ports = spec.get("ports") or ()
    exposed: dict[str, dict[str, Any]] = {
        f"{p['containerPort']}/{str(p.get('protocol', 'TCP')).lower()}": {} for p in ports}
    bound: dict[str, list[dict[str, str]]] = {}
    for held in status.get("ports") or ():
        key = f"{held['containerPort']}/{str(held.get('protocol', 'TCP')).lower()}"
        bound.setdefault(key, []).append({"HostIp": "", "HostPort": str(held["hostPort"])})
    binds = [f"{m.get('hostPath') or volume_versions.get(str(m.get('volume')), m.get('volume'))}"
             f":{m['mountPath']}" for m in spec.get("mounts") or ()]
    gpus = list(status.get("gpus") or ())
    config = {
        "Image": spec.get("image", ""),
        "Env": [*(f"{e['name']}={e.get('value', '')}" for e in spec.get("env") or ()
                  if e.get("name") != VERSION_VARIABLE), f"{VERSION_VARIABLE}={version}"],
        "Cmd": list(spec.get("command") or ()) or None,
        "ExposedPorts": exposed or None,
    }
    host_config = {
        "Binds": binds or None,
        "PortBindings": bound or None,
        "DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": gpus,
                            "Capabilities": [["gpu"]], "Options": None}]
        if int(spec.get("gpuCount") or 0) > 0 else None,
    }
    return {"version": version, "createTime": create_time, "config": config,
            "hostConfig": host_config, "networkingConfig": {"EndpointsConfig": None},
            "platform": None, "containerName": versioned(name, version)}
