"""The containers an ImageCommit holds paused now: shared in the agent's process by
the committer (which pauses them, through ``docker commit``) and the observer of
GpuReplicaSets, which sees such a container as running. So the agent never takes a
commit's own pause for drift and never unpauses a container while Docker copies its
files: the image is of one instant of the container (a file written all along is
cut at one point, never torn by an unpause halfway)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

# After the commit, the hold lasts until the agent's view of the container says it
# is no longer paused (Docker's unpause event read), at most this long.
RELEASE_WAIT = 10.0


class CommitHolds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # container ID -> commits holding it

    def held(self, container_id: str) -> bool:
        with self._lock:
            return container_id in self._held

    @contextlib.contextmanager
    def hold(self, container_id: str, still_paused: Callable[[], bool]) -> Iterator[None]:
        """Hold ``container_id`` for the block (the commit); after it, until
        ``still_paused`` says no (or RELEASE_WAIT passed)."""
        with self._lock:
            self._held[container_id] = self._held.get(container_id, 0) + 1
        try:
            yield
        finally:
            deadline = time.monotonic() + RELEASE_WAIT
            while time.monotonic() < deadline and still_paused():
                time.sleep(0.05)
            with self._lock:
                self._held[container_id] -= 1
                if not self._held[container_id]:
                    del self._held[container_id]
