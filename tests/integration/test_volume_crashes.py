"""#10: the agent SIGKILLed in the middle of a volume's grow, shrink or copy (at each
step, --crash-at, and at random moments) converges after a restart with the data
intact and one consumer running, on the loopfile, btrfs and copy backends."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import only_container, wait_settled
from tests.integration.test_sized_volumes import MiB, _in, _ready_with, _start
from tests.stack import filesystems
from tests.stack.localstack import LocalStack
from tests.stack.resources import containers

# (point, new size in MiB): grows and shrinks through every step of each backend.
TRIALS = {
    "loopfile": (("ResizeVolume.before", 128), ("ResizeVolume.after", 160),
                 ("ResizeVolume.usersStopped", 96), ("ResizeVolume.after", 80),
                 ("RecordVolume.before", 112)),
    "btrfs": (("ResizeVolume.before", 128), ("ResizeVolume.after", 96),
              ("RecordVolume.before", 112)),
    "copy": (("MoveVolume.before", 48), ("MoveVolume.usersStopped", 56),
             ("MoveVolume.copied", 40), ("MoveVolume.after", 72),
             ("RemoveDockerVolume.before", 64)),
}


@pytest.fixture(params=sorted(TRIALS))
def backend(request: pytest.FixtureRequest, stack: LocalStack) -> Iterator[tuple[str, list[str]]]:
    name = str(request.param)
    if name != "btrfs":
        yield name, ["--volume-backend", name]
        return
    with filesystems.btrfs(stack.base_dir) as root:
        yield name, ["--volume-backend", "btrfs", "--volume-root", str(root)]


def test_10_agent_killed_at_each_volume_step_converges(
    stack: LocalStack, backend: tuple[str, list[str]], namespace: str,
    start_agent: AgentFactory,
) -> None:
    name, flags = backend
    _, agent = _start(stack, namespace, start_agent, "64Mi", flags)
    _ready_with(stack, namespace, "data", 64 * MiB)
    code, out = _in(stack, namespace, "dd if=/dev/urandom of=/data/keep bs=1M count=20 "
                    "2>/dev/null && sha256sum /data/keep > /data/keep.sum")
    assert code == 0, out
    for trial, (point, size) in enumerate(TRIALS[name], start=1):
        agent.stop()
        agent = start_agent(extra_args=["--resync-seconds", "2", *flags,
                                        "--crash-at", point])
        stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                      "-p", json.dumps({"spec": {"size": f"{size}Mi"}}))
        died = agent.wait_exit(90)
        assert died == -signal.SIGKILL, f"{point}: the agent did not die there ({died})"
        agent = start_agent(extra_args=["--resync-seconds", "2", *flags])
        _ready_with(stack, namespace, "data", size * MiB)
        wait_settled(stack, namespace, "user")
        users = [c for c in containers(stack, namespace)
                 if c.labels.get("gpudock.dev/name") == "user"]
        print(f"{name} trial {trial}: killed at {point} on the way to {size}Mi: "
              f"{len(users)} container(s), {only_container(stack, namespace, 'user').status}")
        assert only_container(stack, namespace, "user").status == "running"
        code, out = _in(stack, namespace, "sha256sum -c /data/keep.sum")
        assert code == 0, f"{point}: {out}"


RANDOM_TRIALS = int(os.environ.get("GPUDOCK_VOLUME_CRASH_TRIALS", "6"))


def test_10_agent_killed_at_random_moments_of_loopfile_resizes_converges(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    """SIGKILL a random time after a size change: also inside e2fsck and resize2fs
    (which die with the agent; the undo file brings a half-shrunk filesystem back)."""
    seed = int(os.environ.get("GPUDOCK_CRASH_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    _, agent = _start(stack, namespace, start_agent, "256Mi")
    _ready_with(stack, namespace, "data", 256 * MiB)
    code, out = _in(stack, namespace, "dd if=/dev/urandom of=/data/keep bs=1M count=40 "
                    "2>/dev/null && sha256sum /data/keep > /data/keep.sum")
    assert code == 0, out
    for trial in range(1, RANDOM_TRIALS + 1):
        size = 256 if trial % 2 == 0 else 128
        delay = rng.uniform(0.0, 2.0)
        stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                      "-p", json.dumps({"spec": {"size": f"{size}Mi"}}))
        time.sleep(delay)
        agent.kill()
        cut = [p.name for p in agent.state_dir.glob("volumes/images/*.undo")]
        agent = start_agent(extra_args=["--resync-seconds", "2"])
        _ready_with(stack, namespace, "data", size * MiB)
        wait_settled(stack, namespace, "user")
        print(f"random trial {trial} (seed {seed}): killed {delay:.2f}s after asking "
              f"for {size}Mi" + (" inside resize2fs (undo file left)" if cut else ""))
        assert only_container(stack, namespace, "user").status == "running"
        code, out = _in(stack, namespace, "sha256sum -c /data/keep.sum")
        assert code == 0, f"trial {trial}, seed {seed}: {out}"
