"""What the soak gives each node beyond the fleet's defaults (docs/reliability.md#soak):

- its agent's state directory on a small ext4 of its own (STATE_FS_MIB, no blocks
  reserved for root), loop-mounted where the agent's state directory is, so the
  ``state_dir_full`` fault can fill it without touching the rest of the machine;
- a revision store: the first node (and every other one after it: a, c, ...) on etcd,
  an etcd process of the soak's own (``StoreEtcd``: the kube-apiserver keeps its own
  etcd, so ``etcd_stop`` takes the store away and not the API server), all of those
  nodes under one prefix as the Helm chart's one ``agent.store`` URL does; the others
  (b, d, ...) on SQLite in their state directory (the default);
- a volume backend: loopfile on the etcd nodes, its root under the stack's directory
  (not in the small state directory: a filler there would leave the volumes' sparse
  image files no room, which docs/sized-volumes.md says is not reserved); btrfs on the
  others, on a loop-mounted btrfs of its own.

Every filesystem is unmounted and its image file removed when the context ends, also
after a failure (the stack's own teardown would unmount what is left anyway)."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.stack import filesystems
from tests.stack.localstack import LocalStack
from tests.stack.processes import free_port_range

STATE_FS_MIB = 64
ETCD_PREFIX = "/gpudock-soak/revisions"
FILLER = "soak-filler"


@dataclass(frozen=True)
class NodeSetup:
    node: str
    store: str          # the agent's --store
    backend: str        # its --volume-backend
    volume_root: Path   # its --volume-root
    state_dir: Path     # where its own small filesystem is mounted

    @property
    def on_etcd(self) -> bool:
        return self.store.startswith("etcd://")

    def agent_args(self) -> list[str]:
        return ["--store", self.store, "--volume-backend", self.backend,
                "--volume-root", str(self.volume_root)]


class StoreEtcd:
    """The agents' revision store: an etcd of its own, on ports below the ephemeral
    range (so nothing else takes them while it is stopped) and a data directory under
    the stack's, started again on both after a stop. The stack stops it with its
    other processes."""

    NAME = "etcd-store"

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.port = free_port_range(2)
        self.data = stack.base_dir / "etcd-store"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def store_url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}{ETCD_PREFIX}"

    def start(self) -> StoreEtcd:
        peer = f"http://127.0.0.1:{self.port + 1}"
        process = self.stack.spawn(self.NAME, [
            "etcd", "--name", "soak-store", "--data-dir", str(self.data),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"soak-store={peer}", "--log-level", "warn"])
        process.wait_until(self.healthy, 60, "health")
        return self

    def stop(self) -> None:
        process = self.stack.processes.pop(self.NAME, None)
        if process is not None:
            process.stop()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


@contextlib.contextmanager
def node_setups(stack: LocalStack, nodes: list[str], etcd: StoreEtcd,
                ) -> Iterator[dict[str, NodeSetup]]:
    with contextlib.ExitStack() as mounted:
        setups = {}
        for index, node in enumerate(nodes):
            state = stack.base_dir / f"agent-{node}-state"   # AgentProcess's state dir
            # -m 0: root, which the agent is, gets no more room than anyone
            mounted.enter_context(filesystems.loop_mounted_at(
                stack.base_dir / f"state-{node}.img", state,
                ["mkfs.ext4", "-q", "-m", "0"], f"{STATE_FS_MIB}M"))
            if index % 2 == 0:
                root = stack.base_dir / f"volumes-{node}"
                setups[node] = NodeSetup(node, etcd.store_url(), "loopfile", root, state)
            else:
                root = mounted.enter_context(filesystems.btrfs(stack.base_dir))
                setups[node] = NodeSetup(node, f"sqlite:{state / 'revisions.sqlite3'}",
                                         "btrfs", root, state)
        yield setups


def fill(directory: Path, keep: int) -> int:
    """A filler file that leaves ``keep`` bytes free on ``directory``'s filesystem
    (allocated, not sparse); the bytes it took."""
    filler = directory / FILLER
    for _ in range(5):
        stats = os.statvfs(directory)
        size = max(0, stats.f_bavail * stats.f_frsize - keep)
        try:
            with open(filler, "ab") as out:
                os.posix_fallocate(out.fileno(), 0, max(1, size))
            return size
        except OSError:   # the agent wrote meanwhile: start again, asking for less
            filler.unlink(missing_ok=True)
            keep *= 2
    return 0


def unfill(directory: Path) -> None:
    (directory / FILLER).unlink(missing_ok=True)
