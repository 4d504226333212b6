"""GPU, host-port and address allocation, derived every time from the containers on the node.

There is no separate ledger that could drift: what a container holds is what Docker
says it holds (its ``gpudock.dev/gpus`` label, its port bindings and its ``gpudock.dev/address``
label). The caller
serializes observe-allocate-create on the node, so two resources never get one GPU.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from gpudock.api.container_fields import PortSpec
from gpudock.api.gpu_replica_set import PortBinding
from gpudock.api.reasons import Reason
from gpudock.core.observed import HostPort, ObservedContainer, ResourceKey
from gpudock.errors import UserError


@dataclass(frozen=True)
class Ledger:
    """Who holds which GPU and host port on the node, from the observed containers."""

    gpu_holders: dict[str, frozenset[ResourceKey | None]]
    port_holders: dict[HostPort, frozenset[ResourceKey | None]]
    # An address on the instance network is held by every container labelled with it,
    # stopped ones too: an instance keeps its address while a rollout has its old
    # container stopped and its new one not yet made, and while it is Paused.
    address_holders: dict[str, frozenset[ResourceKey | None]] = field(default_factory=dict)

    @classmethod
    def from_containers(cls, containers: Iterable[ObservedContainer]) -> Ledger:
        gpus: dict[str, set[ResourceKey | None]] = {}
        ports: dict[HostPort, set[ResourceKey | None]] = {}
        addresses: dict[str, set[ResourceKey | None]] = {}
        for container in containers:
            if container.address:
                addresses.setdefault(container.address, set()).add(container.owner)
            for uuid in container.gpus:
                gpus.setdefault(uuid, set()).add(container.owner)
            # A foreign container holds its ports while it runs; a gpudock container
            # holds them as long as it exists (a Paused resource keeps them reserved).
            if container.owner is not None or container.running:
                for host_port in container.host_ports:
                    ports.setdefault(host_port, set()).add(container.owner)
        return cls({k: frozenset(v) for k, v in gpus.items()},
                   {k: frozenset(v) for k, v in ports.items()},
                   {k: frozenset(v) for k, v in addresses.items()})

    def gpus_held_by_others(self, key: ResourceKey) -> set[str]:
        return {uuid for uuid, holders in self.gpu_holders.items() if holders - {key}}

    def ports_held_by_others(self, key: ResourceKey) -> set[HostPort]:
        return {port for port, holders in self.port_holders.items() if holders - {key}}


    def addresses_held_by_others(self, key: ResourceKey) -> set[str]:
        return {address for address, holders in self.address_holders.items()
                if holders - {key}}


def instance_addresses(subnet: str) -> Iterator[str]:
    """The addresses of the instance network's subnet an instance may get, lowest
    first: every host address but the first, which is the network's gateway."""
    hosts = ipaddress.IPv4Network(subnet).hosts()
    next(hosts, None)  # the gateway
    return (str(host) for host in hosts)


def address_count(subnet: str) -> int:
    """How many instances the subnet holds (:func:`instance_addresses`)."""
    return max(ipaddress.IPv4Network(subnet).num_addresses - 3, 0)


def allocate_address(subnet: str, taken: set[str], held: Sequence[str] = ()) -> str | None:
    """An address for an instance: the first of ``held`` (the address its containers
    have, else the one its record names) that is in the subnet and free, else the
    lowest free one; None when every address is taken."""
    pool = ipaddress.IPv4Network(subnet)
    for address in held:
        if address and address not in taken and _assignable(address, pool):
            return address
    return next((a for a in instance_addresses(subnet) if a not in taken), None)


def _assignable(address: str, pool: ipaddress.IPv4Network) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return ip in pool and ip not in (pool.network_address, pool.network_address + 1,
                                     pool.broadcast_address)


def allocate_gpus(
    count: int, inventory: Sequence[str], taken: set[str], held: Sequence[str] = (),
) -> tuple[str, ...] | None:
    """``count`` GPUs: those in ``held`` first (growing keeps them, shrinking keeps a
    prefix), then free ones in inventory order. None when there are not enough."""
    kept = [uuid for uuid in held if uuid in inventory and uuid not in taken][:count]
    free = [uuid for uuid in inventory if uuid not in taken and uuid not in kept]
    if len(kept) + len(free) < count:
        return None
    return tuple(kept + free[: count - len(kept)])


class HostPortInUseError(UserError):
    def __init__(self, port: HostPort) -> None:
        super().__init__(Reason.HOST_PORT_IN_USE,
                         f"host port {port.port}/{port.protocol} is already in use on the node")


class NoFreeHostPortError(UserError):
    def __init__(self) -> None:
        super().__init__(Reason.NO_FREE_HOST_PORT, "no free host port is left in the node's range")


def allocate_ports(
    specs: Sequence[PortSpec], taken: set[HostPort], first: int, last: int,
    held: Iterable[PortBinding] = (),
) -> tuple[PortBinding, ...]:
    """Host ports for ``specs``: an explicit hostPort as asked (refused if another
    container holds it), else the one this resource already holds for that container
    port, else the lowest free port in ``first..last``."""
    previous = {(b.container_port, b.protocol): b.host_port for b in held}
    used = set(taken)
    chosen: dict[int, int] = {}
    for i, spec in enumerate(specs):
        if spec.host_port is not None:
            wanted = HostPort(spec.host_port, spec.protocol)
            if wanted in used:
                raise HostPortInUseError(wanted)
            used.add(wanted)
            chosen[i] = spec.host_port
    for i, spec in enumerate(specs):
        if i in chosen:
            continue
        kept = previous.get((spec.container_port, spec.protocol))
        if kept is not None and first <= kept <= last and HostPort(kept, spec.protocol) not in used:
            chosen[i] = kept
            used.add(HostPort(kept, spec.protocol))
    for i, spec in enumerate(specs):
        if i in chosen:
            continue
        port = next((p for p in range(first, last + 1)
                     if HostPort(p, spec.protocol) not in used), None)
        if port is None:
            raise NoFreeHostPortError()
        used.add(HostPort(port, spec.protocol))
        chosen[i] = port
    return tuple(PortBinding(spec.container_port, chosen[i], spec.protocol)
                 for i, spec in enumerate(specs))
