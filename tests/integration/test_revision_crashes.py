"""Crash trials: the agent is SIGKILLed in the middle of an update and restarted; each
time the resource converges with the user's files intact, one container, and no GPU
held twice. One test kills it at every crash point of an update, rollback, stop and
resume (--crash-at); the other at random moments (GPUDOCK_CRASH_TRIALS and
GPUDOCK_CRASH_SEED set the count and seed)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from typing import Any

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import LocalStack
from tests.stack.resources import containers, gpus_in_use, grs

TRIALS = int(os.environ.get("GPUDOCK_CRASH_TRIALS", "24"))


def _rollout_state(stack: LocalStack, namespace: str, old: int) -> str:
    """Where the update from revision ``old`` was when the agent died, as Docker shows
    it: e.g. "old:exited new:created" (killed between creating and starting)."""
    mine = [c for c in containers(stack, namespace) if c.labels["gpudock.dev/name"] == "box"]
    return " ".join(sorted(
        f"{'old' if int(c.labels['gpudock.dev/revision']) == old else 'new'}:{c.status}"
        for c in mine)) or "no container"


def _assert_no_gpu_held_twice(stack: LocalStack, namespace: str) -> None:
    held = gpus_in_use(stack, namespace)
    assert len(held) == len(set(held)), held


# Each crash point with the change that passes through it. An update is: copy the old
# container's writable layer while it runs, stop it, save its disk (copy what changed
# since, or commit and flatten past the layer threshold; note it), record the new
# revision, create its container, move the old one's layer into it (and remove the
# old one; a rollback copies the saved layer in), start it, remove the old container;
# a rollback adds writing the revision's spec back; Stopped saves and removes; Running
# again re-creates. The commit points are reached by an agent with --disk-saves
# commit, so the history mixes committed disks and saved layers, as on a node whose
# setting was changed.
CRASH_POINTS = (
    ("StopContainer.before", "update"),  # the old container still runs
    ("StopContainer.preCopied", "update"),  # its layer copied while it runs, not stopped
    ("StopContainer.after", "update"),
    ("PreserveDisk.layerSaved", "update"),  # the layer is copied, the record not noted
    ("PreserveDisk.committed", "update"),
    ("PreserveDisk.flattened", "update"),  # the agent runs with --max-image-layers 1
    ("PreserveDisk.after", "update"),
    ("StartRevision.recorded", "update"),
    ("StartRevision.created", "update"),  # the new container is empty, never started
    ("StartRevision.layerHandedOver", "update"),  # the old one's layer moved into the
    # new one, the old container (left without a layer) not removed yet
    ("StartRevision.layerCopied", "update"),  # filled, never started
    ("StartRevision.after", "update"),  # two containers: the old (saved) and the new
    ("RemoveContainer.after", "update"),
    ("PruneRevision.diskRemoved", "update"),  # revisionHistoryLimit 1: each update prunes
    ("StartRevision.layerCopied", "rollback"),
    ("StartRevision.after", "rollback"),
    ("WriteSpec.before", "rollback"),
    ("WriteSpec.after", "rollback"),  # the spec is written, the status is not
    ("PreserveDisk.after", "stop"),
    ("StartRevision.recorded", "resume"),
    ("RemoveContainer.after", "stop"),
    ("StartRevision.created", "resume"),  # made again empty: its saved layer goes in
    ("PreserveDisk.layerSaved", "stop"),
    ("StartRevision.after", "resume"),
)
COMMIT = ["--disk-saves", "commit"]
FLAGS = {"PreserveDisk.committed": COMMIT,
         "PreserveDisk.flattened": [*COMMIT, "--max-image-layers", "1"]}


def test_agent_killed_at_every_step_converges(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent(gpus=3)
    apply_spec(stack, namespace, "other", "neighbour", gpus=1)  # competes for the GPUs
    spec: dict[str, Any] = {"gpus": 1, "revisionHistoryLimit": 1}
    apply_spec(stack, namespace, "box", "first", **spec)
    wait_settled(stack, namespace, "box", revision=1)
    wait_settled(stack, namespace, "other", revision=1)
    touch_the_disk(stack, namespace, "r1", name="box")
    revision, disks, specs = 1, {1: "r1"}, {1: spec}  # disk content and spec by revision
    for trial, (point, change) in enumerate(CRASH_POINTS, start=1):
        agent.stop()
        agent = start_agent(gpus=3, extra_args=["--crash-at", point, *FLAGS.get(point, [])])
        phase, disk = "Running", disks[revision]
        if change == "update":
            spec = {"gpus": 1 + trial % 2, "env": [{"name": "TRIAL", "value": str(trial)}],
                    "revisionHistoryLimit": 1}
            apply_spec(stack, namespace, "box", f"trial {trial}", **spec)
            revision += 1
            specs[revision] = spec
        elif change == "rollback":
            target = revision - 1
            stack.kubectl("patch", "grs", "box", "-n", namespace, "--type=merge", "-p",
                          f'{{"spec": {{"rollbackTo": {{"revision": {target}}}}}}}')
            revision += 1
            disk, spec = disks[target], specs[target]
            specs[revision] = spec
        else:
            phase = "Stopped" if change == "stop" else "Running"
            spec = {**spec, "state": phase}
            apply_spec(stack, namespace, "box", f"trial {trial}", **spec)
        code = agent.wait_exit(90)
        assert code == -signal.SIGKILL, f"{point}: the agent did not die there ({code})"
        assert f"crash point {point} reached" in agent.log()
        at_kill = _rollout_state(stack, namespace, old=revision - (change in (
            "update", "rollback")))
        agent = start_agent(gpus=3)
        status = wait_settled(stack, namespace, "box", phase=phase, revision=revision)
        _assert_no_gpu_held_twice(stack, namespace)
        print(f"trial {trial:2d} killed at {point:24s} ({change:8s}) with {at_kill}")
        if phase == "Stopped":
            assert status["gpus"] == []
            assert not [c for c in containers(stack, namespace)
                        if c.labels["gpudock.dev/name"] == "box"]
            continue
        assert only_container(stack, namespace, "box").status == "running"
        assert len(status["gpus"]) == spec["gpus"]
        assert_disk_kept(stack, namespace, disk, name="box")
        if change == "rollback":
            assert "rollbackTo" not in grs(stack, namespace, "box")["spec"]
        disks[revision] = f"r{revision}"
        touch_the_disk(stack, namespace, disks[revision], name="box")


def test_agent_killed_during_updates_always_converges(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    seed = int(os.environ.get("GPUDOCK_CRASH_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    print(f"\ncrash trials: seed {seed}")
    agent = start_agent(gpus=3)
    apply_spec(stack, namespace, "other", "neighbour", gpus=1)  # competes for the GPUs
    apply_spec(stack, namespace, "box", "first", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    wait_settled(stack, namespace, "other", revision=1)
    touch_the_disk(stack, namespace, name="box")
    at_kill: Counter[str] = Counter()
    for trial in range(1, TRIALS + 1):
        apply_spec(stack, namespace, "box", f"update {trial}", gpus=1 + trial % 2,
                   env=[{"name": "TRIAL", "value": str(trial)}])
        time.sleep(rng.uniform(0.0, 0.8))
        agent.kill()
        at_kill[_rollout_state(stack, namespace, old=trial)] += 1
        agent = start_agent(gpus=3)
        status = wait_settled(stack, namespace, "box", revision=trial + 1)
        box = only_container(stack, namespace, "box")  # exactly one
        assert box.status == "running"
        assert len(status["gpus"]) == 1 + trial % 2
        _assert_no_gpu_held_twice(stack, namespace)
        assert_disk_kept(stack, namespace, name="box")
    print(f"crash trials: {TRIALS} (seed {seed}); the update's state at each kill:")
    for state, count in sorted(at_kill.items()):
        print(f"  {count:3d}  {state}")
