"""The agent's two kinds of lock, each a thread lock plus an flock on a file in the
state dir (so a second agent process on the node, during an upgrade, is excluded too).

- The node lock makes allocation atomic: GPUs and host ports are derived from the
  labels of the node's containers, so observing them and creating the container that
  takes some happen under it, and nothing else does (it is held for milliseconds).
- One lock per resource serializes the steps of one GpuReplicaSet: its reconcile,
  its delete and the orphan sweep of its containers. The slow steps (a stop that
  waits out its timeout, saving or copying a disk) hold only this one, so they never
  stall another resource.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

from gpudock.core.observed import ResourceKey


class NodeLocks:
    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._node = threading.Lock()
        self._guard = threading.Lock()  # over the dict of per-resource locks
        # Per resource: its lock and how many threads hold or wait for it; the entry
        # goes when the last one leaves (names come and go: a soak makes thousands).
        self._resources: dict[ResourceKey, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def node(self) -> Iterator[None]:
        """Held while observing the node's allocation and creating a container."""
        with self._node, _flocked(self._state_dir / "node.lock"):
            yield

    @contextlib.contextmanager
    def resource(self, key: ResourceKey) -> Iterator[None]:
        """Held for every step on one resource's containers, disks and records."""
        with self._guard:
            lock, users = self._resources.get(key, (threading.Lock(), 0))
            self._resources[key] = (lock, users + 1)
        try:
            # One small file per resource name, kept (removing it could let a second
            # process lock a new file while the first still holds the old one).
            with lock, _flocked(self._state_dir / "locks" / _lock_file_name(key)):
                yield
        finally:
            with self._guard:
                users = self._resources[key][1] - 1
                if users:
                    self._resources[key] = (lock, users)
                else:
                    del self._resources[key]

    def held(self) -> int:
        """How many resources' locks are held or waited for now."""
        with self._guard:
            return len(self._resources)


def _lock_file_name(key: ResourceKey) -> str:
    """A readable file name within the 255 bytes a name may have: the longest
    namespace (63) and name (253) together do not fit, so long keys are shortened
    and told apart by a hash of the whole key (245 bytes, so never equal to a short
    one)."""
    name = f"{key.namespace}.{key.name}"
    if len(name) <= 200:
        return name
    return f"{name[:180]}.{hashlib.sha256(name.encode()).hexdigest()}"


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
