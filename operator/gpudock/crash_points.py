"""Named points in the agent's work where it can be made to die, so the crash tests hit
every step of an update on purpose instead of by luck.

``--crash-at POINT`` (``GPUDOCK_CRASH_AT``): the first time the agent reaches POINT it
SIGKILLs itself, as an OOM kill or a power cut would: no cleanup, no status write.
Off unless set; it exists for tests and for anyone who wants to check the recovery of
their own node. A point is ``<Step>.before`` or ``<Step>.after`` for every step a plan
can ask for (the classes of :mod:`gpudock.core.replica_set.actions` and
:mod:`gpudock.core.volumes`), or one of the
moments inside a step listed in :data:`INSIDE_STEPS`.
"""

from __future__ import annotations

import logging
import os
import signal
import typing

from gpudock.core import volumes
from gpudock.core.replica_set import actions as act

logger = logging.getLogger(__name__)

STEPS = tuple(step.__name__ for step in (*typing.get_args(act.Action),
                                         *typing.get_args(volumes.VolumeAction)))
INSIDE_STEPS = (
    "StopContainer.preCopied",  # the layer is copied while it runs, not stopped yet
    "PreserveDisk.committed",  # the commit is done, the record not yet updated
    "PreserveDisk.flattened",  # the export + import is done, the record not yet updated
    "PreserveDisk.layerSaved",  # the writable layer is copied, the record not yet updated
    "StartRevision.recorded",  # the new revision is recorded, its container not created
    "StartRevision.created",  # its container is created, the saved layer not copied in
    "StartRevision.layerHandedOver",  # the old container's layer is in the new one,
    # the old container (without a layer) not removed yet
    "StartRevision.layerCopied",  # the saved layer is in, the container not started
    "PruneRevision.diskRemoved",  # the saved disk is removed, the record not yet
    "ResizeVolume.usersStopped",  # a volume's users stopped, not resized yet
    "MoveVolume.usersStopped",  # the copy backend: users stopped, nothing copied
    "MoveVolume.copied",  # copied and checked, the record not switched yet
)
# A migration's moments (docs/migration.md), on the source or the target agent.
MIGRATE_POINTS = (
    "Migrate.stopped",  # source: the instance is stopped for the copy, nothing sent
    "Migrate.received",  # target: every tree checked and the records stored, not said
    "Migrate.transferred",  # source: the target has it all, the binding not moved
    "Migrate.switched",  # source: status.nodeName names the target, finalizers not moved
    "Migrate.handedOver",  # source: the target's finalizer is on, the source kept all
    "Migrate.fallingBack",  # source: the target failed; status.fallback written, not asked
    "Migrate.givenBack",  # target: its container removed, the binding still names it
)
POINTS = frozenset({f"{step}.{when}" for step in STEPS for when in ("before", "after")}
                   | set(INSIDE_STEPS) | set(MIGRATE_POINTS))


class UnknownCrashPointError(ValueError):
    pass


def check(points: typing.Iterable[str]) -> tuple[str, ...]:
    """The points, checked; raises UnknownCrashPointError naming the first unknown."""
    checked = tuple(points)
    for point in checked:
        if point not in POINTS:
            raise UnknownCrashPointError(
                f"unknown crash point {point!r}; known: {', '.join(sorted(POINTS))}")
    return checked


class CrashPoints:
    def __init__(self, armed: typing.Iterable[str] = ()) -> None:
        self._armed = frozenset(check(armed))

    def reach(self, point: str) -> None:
        """Die here when ``point`` is armed; otherwise nothing."""
        assert point in POINTS, point
        if point in self._armed:
            logger.critical("crash point %s reached: SIGKILL", point)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
