"""Crash trials: the agent is SIGKILLed at random points of an update and restarted;
each time the resource converges with the user's files intact, one container, and no
GPU held twice. GPUDOCK_CRASH_TRIALS and GPUDOCK_CRASH_SEED set the count and seed."""

from __future__ import annotations

import os
import random
import time
from collections import Counter

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import LocalStack
from tests.stack.resources import containers

TRIALS = int(os.environ.get("GPUDOCK_CRASH_TRIALS", "24"))


def _rollout_state(stack: LocalStack, namespace: str, old: int) -> str:
    """Where the update from revision ``old`` was when the agent died, as Docker shows
    it: e.g. "old:exited new:created" (killed between creating and starting)."""
    mine = [c for c in containers(stack, namespace) if c.labels["gpudock.dev/name"] == "box"]
    return " ".join(sorted(
        f"{'old' if int(c.labels['gpudock.dev/revision']) == old else 'new'}:{c.status}"
        for c in mine)) or "no container"


def test_agent_killed_during_updates_always_converges(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    seed = int(os.environ.get("GPUDOCK_CRASH_SEED", str(int(time.time()))))
    rng = random.Random(seed)
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
        held = [g for c in containers(stack, namespace)
                for g in c.labels["gpudock.dev/gpus"].split(",") if g]
        assert len(held) == len(set(held)), held  # no GPU held twice
        assert_disk_kept(stack, namespace, name="box")
    print(f"\ncrash trials: {TRIALS} (seed {seed}); the update's state at each kill:")
    for state, count in sorted(at_kill.items()):
        print(f"  {count:3d}  {state}")
