"""Whether a host port can be bound on this node, asked of the kernel.

Docker knows the ports its containers hold; a port another process holds shows only
when Docker fails to bind it, and by then the old container of a rollout would be
stopped. So before a rollout stops anything, each port the new container needs that
no container holds is bound here for an instant. The answer means something only
where the agent shares the host's network namespace (a plain process, or a pod with
hostNetwork); elsewhere every port looks free and Docker's own refusal stays the
last word.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from gpudock.api.container_fields import Protocol


def is_busy(port: int, protocol: Protocol) -> bool:
    kind = socket.SOCK_DGRAM if protocol is Protocol.UDP else socket.SOCK_STREAM
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            probe = socket.socket(family, kind)
        except OSError:
            continue  # no IPv6 on this host
        with contextlib.closing(probe):
            if kind == socket.SOCK_STREAM:  # as Docker's proxy binds: TIME_WAIT is free
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False
