"""The opt-in probe of a GPU container's access to its GPUs (--gpu-access-probe-seconds).

A container can lose its GPUs while it runs (the known "NVML: Unknown Error" after a
host's systemd reload takes its device cgroup rules away): nothing fails until the
user's program does. Every period the probe command (--gpu-access-probe-command,
default ``nvidia-smi -L``) runs in each running gpudock container that holds GPUs;
one whose probe fails is recreated as a new revision with the same disk (plan.py,
cause GPUAccessLost), at most once per RECREATE_GAP_SECONDS per instance. A probe
that cannot run (exit 126 or 127: not in the image) says nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping

from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.ports import ContainerRuntime
from gpudock.errors import GpudockError

log = logging.getLogger(__name__)
RECREATE_GAP_SECONDS = 600.0
NOT_RUNNABLE = (126, 127)  # the shell's "cannot execute", "not found"
Announce = Callable[[ObservedContainer, str, Reason, str], None]


class AccessProbe:
    """``lost``: container ID -> why it lost its GPUs, read by the reconciler (a
    container listed there is recreated); kept only for containers that exist."""

    def __init__(self, command: tuple[str, ...], lost: MutableMapping[str, str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._command = list(command)
        self.lost = lost
        self._clock = clock
        self._recreated: dict[ResourceKey, float] = {}  # when each was last flagged
        self._warned: set[str] = set()  # containers told they are not recreated again

    def probe(self, docker: ContainerRuntime, run: Callable[[str, list[str]], tuple[int, str]],
              announce: Announce) -> list[ObservedContainer]:
        """One round over the node's running GPU containers; returns those newly
        flagged (their resources are to be woken)."""
        containers = [c for c in docker.list_containers()
                      if c.owner is not None and c.running and c.gpus]
        present = {c.id for c in containers}
        for gone in set(self.lost) - present:
            del self.lost[gone]
        self._warned &= present
        flagged = []
        for container in containers:
            if container.id in self.lost:
                continue
            try:
                code, output = run(container.id, self._command)
            except GpudockError as exc:
                log.info("GPU access probe of %s could not run: %s", container.name, exc)
                continue
            if code == 0 or code in NOT_RUNNABLE:
                continue
            owner = container.owner
            assert owner is not None
            why = (f"the GPU access probe `{' '.join(self._command)}` failed in "
                   f"{container.name} (exit code {code}): "
                   f"{output.strip()[-300:] or 'no output'}")
            last = self._recreated.get(owner)
            now = self._clock()
            if last is not None and now - last < RECREATE_GAP_SECONDS:
                if container.id in self._warned:
                    continue
                self._warned.add(container.id)
                announce(container, "Warning", Reason.GPU_ACCESS_LOST, (
                    f"{why}; not recreated again: it was recreated "
                    f"{now - last:.0f}s ago (at most once per "
                    f"{RECREATE_GAP_SECONDS:.0f}s)"))
                continue
            self._recreated[owner] = now
            self.lost[container.id] = why
            announce(container, "Warning", Reason.GPU_ACCESS_LOST,
                     f"{why}; recreating it as a new revision with the same disk")
            flagged.append(container)
        return flagged
