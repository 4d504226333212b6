"""Placement benchmark: the same instances applied unpinned (the scheduler places
them) and pinned by hand, over three nodes, each an agent with its own dockerd.

    python -m tests.bench.placement [--instances 24] [--rounds 3]

Prints, per round and as medians: the time from `kubectl apply` to every instance
Running, pinned and unpinned, and their ratio; the bind latency of the unpinned ones
(from each one's first watch event, its creation, to the event that shows its
status.nodeName) p50/p95; and the CPU seconds the
leading agent used in each round (the scheduler's share is the difference). Asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gpudock.cli.retained_commands import table
from tests.bench.watches import Watch
from tests.integration.fleet import Fleet
from tests.stack.localstack import LocalStack, wait_for

NAMESPACE = "bench"


def _instances(count: int, nodes: list[str] | None) -> list[dict[str, Any]]:
    """One- and two-GPU instances; pinned (by hand: round-robin, as an operator
    spreading a list over nodes would) when ``nodes`` is given."""
    bodies = []
    for i in range(count):
        spec: dict[str, Any] = {"image": "gpudock-test/busybox:1", "gpuCount": 1 + i % 2}
        if nodes:
            spec["nodeName"] = nodes[i % len(nodes)]
        bodies.append({"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuReplicaSet",
                       "metadata": {"name": f"i{i:03d}"}, "spec": spec})
    return bodies


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def _round(fleet: Fleet, watch: Watch, count: int, pinned: bool) -> dict[str, float]:
    stack = fleet.stack
    leader = _leader_pid(fleet)
    cpu_before = _cpu_seconds(leader)
    bodies = _instances(count, fleet.nodes if pinned else None)
    items = {"apiVersion": "v1", "kind": "List", "items": bodies}
    started = time.time()
    stack.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(items))
    names = [str(body["metadata"]["name"]) for body in bodies]
    running = [watch.wait(name, lambda s: s.get("phase") == "Running", started, 600)
               for name in names]
    ready = max(running) - started
    # Bind latency: from each one's first watch event (its creation) to the first
    # that shows status.nodeName.
    binds = sorted(
        bound - seen for name in names
        if (seen := watch.first(name, lambda _: True, started)) is not None
        and (bound := watch.first(name, lambda s: bool(s.get("nodeName")), started))
        is not None)
    result = {"ready": ready, "cpu": _cpu_seconds(leader) - cpu_before,
              "p50": statistics.median(binds) if binds else 0.0,
              "p95": binds[int(0.95 * (len(binds) - 1))] if binds else 0.0}
    deleting = time.time()
    stack.kubectl("delete", "grs", "--all", "-n", NAMESPACE, "--timeout=300s")
    for name in names:  # so no event of this round is taken for the next one's
        watch.wait_deleted(name, deleting, 300)
    return result


def _leader_pid(fleet: Fleet) -> int:
    lease = fleet.stack.kubectl_json("get", "lease", "gpudock-scheduler", "-n", NAMESPACE)
    node = str(lease["spec"]["holderIdentity"]).rsplit("_", 1)[0]  # type: ignore[index]
    process = fleet.agents[node].process
    assert process is not None
    return int(process.process.pid)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.placement")
    parser.add_argument("--instances", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with LocalStack() as stack:
        stack.kubectl("create", "namespace", NAMESPACE)
        engines = {"bench-a": stack.engine, "bench-b": stack.add_engine("node-b"),
                   "bench-c": stack.add_engine("node-c")}
        fleet = Fleet(stack, NAMESPACE, engines)
        try:
            for node in fleet.nodes:
                fleet.start_agent(node, gpus=16)
            wait_for(lambda: stack.kubectl("get", "lease", "gpudock-scheduler", "-n",
                                           NAMESPACE, check=False).returncode == 0, 60,
                     what="a scheduler leader")
            rows: list[tuple[str, ...]] = [(
                "round", "pinned", "unpinned", "ratio", "bind p50", "bind p95",
                "leader CPU pinned", "leader CPU unpinned")]
            ratios, p95s = [], []
            watch = Watch(stack, NAMESPACE, "gpureplicasets")
            for number in range(1, args.rounds + 1):
                pinned = _round(fleet, watch, args.instances, pinned=True)
                unpinned = _round(fleet, watch, args.instances, pinned=False)
                ratio = unpinned["ready"] / pinned["ready"]
                ratios.append(ratio)
                p95s.append(unpinned["p95"])
                rows.append((str(number), f"{pinned['ready']:.2f}s",
                             f"{unpinned['ready']:.2f}s", f"{ratio:.2f}x",
                             f"{unpinned['p50']:.2f}s", f"{unpinned['p95']:.2f}s",
                             f"{pinned['cpu']:.2f}s", f"{unpinned['cpu']:.2f}s"))
            print(f"{args.instances} instances (1 and 2 GPUs) over 3 nodes of 16 GPUs; "
                  "apply to all Running")
            watch.stop()
            table(rows, sys.stdout)
            print(f"median ratio {statistics.median(ratios):.2f}x (target <= 1.2x); "
                  f"worst bind p95 {max(p95s):.2f}s (target <= 3s)")
        finally:
            stack.kubectl("delete", "grs", "--all", "-n", NAMESPACE, "--timeout=300s",
                          check=False)
            for agent in fleet.agents.values():
                agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
