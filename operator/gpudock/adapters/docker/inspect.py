"""Docker's inspect answers read into gpudock's terms; no calls to Docker here.

A container's inspect becomes an :class:`ObservedContainer`; an image's config
becomes the Dockerfile instructions that re-apply it to an imported rootfs.
"""

from __future__ import annotations

import json
from typing import Any

from gpudock.api import gpu_replica_set
from gpudock.api.container_fields import Protocol
from gpudock.core import labels
from gpudock.core.limits import ContainerLimits
from gpudock.core.observed import ObservedContainer, ResourceKey


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
        address=config_labels.get(labels.ADDRESS, ""),
        spec_hash=config_labels.get(labels.SPEC_HASH, ""),
        base_image=config_labels.get(labels.IMAGE, ""), port_bindings=bindings,
        image=str(attrs.get("Config", {}).get("Image") or ""),
        image_id=str(attrs.get("Image") or ""), upper_dir=upper_dir_of(attrs) or "",
        restart_policy=(attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name", ""),
        node=config_labels.get(labels.NODE, ""), volumes=volumes,
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=_docker_time(state.get("StartedAt")),
        finished_at=_docker_time(state.get("FinishedAt")),
        limits=limits_of(attrs.get("HostConfig") or {}),
    )


def limits_of(host_config: dict[str, Any]) -> ContainerLimits:
    """The CPU, memory, pids and /dev/shm limits of a HostConfig (a CpuQuota set by
    hand reads as the NanoCpus it amounts to; none is 0)."""
    nano = int(host_config.get("NanoCpus") or 0)
    quota, period = int(host_config.get("CpuQuota") or 0), int(host_config.get(
        "CpuPeriod") or 0)
    if not nano and quota > 0:
        nano = quota * 1_000_000_000 // (period or 100_000)
    pids = int(host_config.get("PidsLimit") or 0)
    return ContainerLimits(nano_cpus=nano, memory=int(host_config.get("Memory") or 0),
                           pids_limit=max(pids, 0),
                           shm_size=int(host_config.get("ShmSize") or 0))


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
