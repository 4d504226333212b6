"""How a container gets its GPUs: one strategy per way, one table from ``--gpu-attach``.

A :class:`GpuAttachment` turns the GPUs given to a container (their UUIDs) into what
its :class:`~gpudock.core.container_config.ContainerConfig` needs, as plain data: the
runtime, the environment entries and the device IDs of a Docker device request. The
Docker adapter turns that data into SDK calls (``docker.types.DeviceRequest``); nothing
here talks to Docker.

Another way (CDI device names through the nvidia runtime, say) is one class here and
one line in :data:`GPU_ATTACHMENTS`; the agent's ``--gpu-attach`` choices are that
table's names. (A device request's driver and capabilities are the adapter's: "nvidia",
``[["gpu"]]``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
NVIDIA_RUNTIME = "nvidia"
# "void" makes the NVIDIA runtime behave as plain runc: no GPU and no driver. It also
# overrides an image's NVIDIA_VISIBLE_DEVICES=all, so a 0-GPU container sees nothing.
NO_GPU = "void"


@dataclass(frozen=True)
class AttachedGpus:
    """What a container config needs so that its container gets (only) its GPUs."""

    runtime: str | None = None  # None: Docker's default runtime
    # Set over the spec's env; a spec entry of the same name keeps its place.
    env: Mapping[str, str] = field(default_factory=dict)
    # Dropped from the spec's env before ``env`` is set: gpudock owns these names.
    unset_env: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()  # of a Docker device request (--gpus); () for none


class GpuAttachment(Protocol):
    """One way of giving a container its GPUs."""

    def attach(self, gpus: tuple[str, ...]) -> AttachedGpus:
        """What a container holding ``gpus`` (UUIDs, maybe none) needs."""
        ...


@dataclass(frozen=True)
class NvidiaRuntime:
    """The ``nvidia`` runtime, told the GPUs by ``NVIDIA_VISIBLE_DEVICES``; with no
    GPU, Docker's default runtime and ``NVIDIA_VISIBLE_DEVICES=void``."""

    def attach(self, gpus: tuple[str, ...]) -> AttachedGpus:
        return AttachedGpus(runtime=NVIDIA_RUNTIME if gpus else None,
                            env={VISIBLE_DEVICES: ",".join(gpus) if gpus else NO_GPU})


@dataclass(frozen=True)
class DeviceRequests:
    """Docker's device requests (``docker run --gpus``) on the default runtime; with no
    GPU, no request and ``NVIDIA_VISIBLE_DEVICES=void``."""

    def attach(self, gpus: tuple[str, ...]) -> AttachedGpus:
        return AttachedGpus(env={} if gpus else {VISIBLE_DEVICES: NO_GPU},
                            unset_env=(VISIBLE_DEVICES,), device_ids=gpus)


DEFAULT_GPU_ATTACH = "runtime"
# --gpu-attach value -> the way. A new way is one line here.
GPU_ATTACHMENTS: dict[str, GpuAttachment] = {
    DEFAULT_GPU_ATTACH: NvidiaRuntime(),
    "device-requests": DeviceRequests(),
}
DEFAULT_ATTACHMENT = GPU_ATTACHMENTS[DEFAULT_GPU_ATTACH]
