"""The container fields of a GpuReplicaSet spec below its top level: env, ports,
mounts, host aliases and DNS settings, with their bounds and parsers. ExecRequest
shares env and the command bounds.

Each parser takes one field's raw list (or dict) from ``body["spec"]`` and returns frozen,
normalized values, or raises a :class:`~gpudock.errors.SpecError` naming the field.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from gpudock.api.parsing import as_dict, get_choice, get_int, get_list, get_optional_str, get_str
from gpudock.api.paths import is_clean_absolute_path
from gpudock.errors import SpecError

# Bounds on what a spec may carry (the CRD schema says the same per item; the totals
# only the parser can check). One value stays far below Linux's 128 KiB limit on a
# single environment string, all of them together below what execve accepts.
MAX_ENV_ITEMS = 256
MAX_VALUE_LENGTH = 32768  # one env value or command argument
MAX_COMMAND_ITEMS = 256
MAX_TOTAL_BYTES = 131072  # env names + values + command arguments together
MAX_HOST_ALIASES = 64
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)
IP_PATTERN = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)$"
_IP_RE = re.compile(IP_PATTERN)
_LABEL = r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?"
HOSTNAME_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str


@dataclass(frozen=True)
class PortSpec:
    container_port: int
    protocol: Protocol = Protocol.TCP
    host_port: int | None = None  # None: allocated from the node's range


@dataclass(frozen=True)
class MountSpec:
    mount_path: str
    volume: str | None = None  # a SizedVolume in the same namespace
    host_path: str | None = None  # only under the agent's allowed roots
    read_only: bool = False


@dataclass(frozen=True)
class HostAlias:
    """An /etc/hosts entry, as a pod's spec.hostAliases."""

    ip: str
    hostnames: tuple[str, ...]


@dataclass(frozen=True)
class DnsConfig:
    """Extra resolver settings, as a pod's spec.dnsConfig (options as name[:value])."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()



def dns_option_dict(option: str) -> dict[str, str]:
    name, sep, value = option.partition(":")
    return {"name": name, **({"value": value} if sep else {})}


def parse_host_aliases(items: list[Any]) -> tuple[HostAlias, ...]:
    result = []
    for i, item in enumerate(items):
        where = f"spec.hostAliases[{i}]"
        entry = as_dict(item, where)
        ip = get_str(entry, "ip", where)
        if not _IP_RE.match(ip):
            raise SpecError(f"{where}.ip {ip!r} is not an IP address")
        names = get_list(entry, "hostnames", where)
        if not names or not all(isinstance(n, str) and _HOSTNAME_RE.match(n) for n in names):
            raise SpecError(f"{where}.hostnames must be a non-empty list of host names")
        result.append(HostAlias(ip, tuple(names)))
    return tuple(result)


def parse_dns(raw: Any) -> DnsConfig | None:
    if raw is None:
        return None
    entry = as_dict(raw, "spec.dnsConfig")
    nameservers = get_list(entry, "nameservers", "spec.dnsConfig")
    searches = get_list(entry, "searches", "spec.dnsConfig")
    if not all(isinstance(n, str) and _IP_RE.match(n) for n in nameservers):
        raise SpecError("spec.dnsConfig.nameservers must be IP addresses")
    if not all(isinstance(n, str) and _HOSTNAME_RE.match(n) for n in searches):
        raise SpecError("spec.dnsConfig.searches must be domain names")
    options = []
    for i, item in enumerate(get_list(entry, "options", "spec.dnsConfig")):
        option = as_dict(item, f"spec.dnsConfig.options[{i}]")
        name = get_str(option, "name", f"spec.dnsConfig.options[{i}]")
        value = option.get("value")
        options.append(name if value is None else f"{name}:{value}")
    return DnsConfig(tuple(nameservers), tuple(searches), tuple(options))


def parse_env(items: list[Any]) -> tuple[EnvVar, ...]:
    result: list[EnvVar] = []
    for i, item in enumerate(items):
        where = f"spec.env[{i}]"
        entry = as_dict(item, where)
        name = get_str(entry, "name", where)
        if not _ENV_NAME_RE.match(name):
            raise SpecError(f"{where}.name {name!r} is not a valid variable name")
        value = entry.get("value", "")
        if not isinstance(value, str):
            raise SpecError(f"{where}.value must be a string, got {value!r}")
        if len(value) > MAX_VALUE_LENGTH:
            raise SpecError(f"{where}.value has {len(value)} characters; at most "
                            f"{MAX_VALUE_LENGTH} are allowed")
        result.append(EnvVar(name, value))
    names = [e.name for e in result]
    if len(set(names)) != len(names):
        raise SpecError("spec.env names must be unique")
    return tuple(result)


def parse_ports(items: list[Any]) -> tuple[PortSpec, ...]:
    result: list[PortSpec] = []
    for i, item in enumerate(items):
        where = f"spec.ports[{i}]"
        entry = as_dict(item, where)
        host_port = (
            None if entry.get("hostPort") is None
            else get_int(entry, "hostPort", where, minimum=1, maximum=65535)
        )
        result.append(PortSpec(
            container_port=get_int(entry, "containerPort", where, minimum=1, maximum=65535),
            protocol=Protocol(get_choice(entry, "protocol", where, tuple(Protocol),
                                         Protocol.TCP)),
            host_port=host_port,
        ))
    keys = [(p.container_port, p.protocol) for p in result]
    if len(set(keys)) != len(keys):
        raise SpecError("spec.ports must not list the same containerPort/protocol twice")
    host_keys = [(p.host_port, p.protocol) for p in result if p.host_port is not None]
    if len(set(host_keys)) != len(host_keys):
        raise SpecError("spec.ports must not list the same hostPort/protocol twice")
    return tuple(result)


def parse_mounts(items: list[Any]) -> tuple[MountSpec, ...]:
    result: list[MountSpec] = []
    for i, item in enumerate(items):
        where = f"spec.mounts[{i}]"
        entry = as_dict(item, where)
        mount_path = get_str(entry, "mountPath", where)
        volume = get_optional_str(entry, "volume", where)
        host_path = get_optional_str(entry, "hostPath", where)
        if (volume is None) == (host_path is None):
            raise SpecError(f"{where} must set exactly one of volume and hostPath")
        for key, path in (("mountPath", mount_path), ("hostPath", host_path)):
            if path is not None and not is_clean_absolute_path(path):
                raise SpecError(f"{where}.{key} {path!r} must be a clean absolute path")
        read_only = entry.get("readOnly", False)
        if not isinstance(read_only, bool):
            raise SpecError(f"{where}.readOnly must be true or false")
        result.append(MountSpec(mount_path, volume, host_path, read_only))
    paths = [m.mount_path.rstrip("/") for m in result]
    if len(set(paths)) != len(paths):
        raise SpecError("spec.mounts must not use the same mountPath twice")
    return tuple(result)
