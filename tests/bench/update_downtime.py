"""Update benchmark for #23 item 6: an update (gpuCount 1 -> 2) after the user wrote
N MB, with the disk copied mostly while the instance runs and the old container's
own writable layer moved into the new one (``--disk-saves layer``, now the default)
against the way before (``--disk-saves layer-stopped``: both copies after the stop),
and against the original Go service's copy of the merged directory, with and without
the sync it never does.

    python -m tests.bench.update_downtime [--rounds 5] [--rows 100:200,1000:200,100:1074,100:10]

Each row is an image of BASE MB (busybox plus one layer of files) and CHANGES MB
the user writes (incompressible, files of at most 100 MB; 1074 MB is 1 GiB). Each
round runs every row with each method, the methods in a turned order each round (a
slower moment of the shared machine falls on each in turn); one agent per method,
started for its turn. Prints, per row and method, medians with min-max over the
rounds of:

- total: the patch to the status showing revision 2 settled (polled every 20 ms);
- downtime: Docker's kill of the old container to the start of the new one (both
  Docker's event times), and to the status seen Ready at revision 2;
- the original's copy (`cp -rf -p` of the old merged dir into the new one, as its
  code does) and that copy followed by `sync -f` of Docker's root filesystem.

A user's files are older than a second when they change their GPU count; the bench
waits until the written files' ctime is 1.2 s old before it updates (a file changed
within the second before the pre-copy read it is copied again after the stop:
docs/revisions.md). Asserts nothing about speed; needs root (the local stack).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpudock.cli.retained_commands import table
from tests.bench.rollouts import (
    NS,
    SLEEP,
    STOP_TIMEOUT,
    Bench,
    purge_saved,
    timed,
    write,
)
from tests.stack.agent_process import AgentProcess
from tests.stack.localstack import LocalStack
from tests.stack.processes import free_port

METHODS = ("layer", "layer-stopped", "original")
SHOWN = {"layer": "gpudock, pre-copy + layer moved", "layer-stopped":
         "gpudock before: both copies after the stop", "original": "original's copy"}
Row = tuple[int, int]  # base MB, changes MB
Figures = dict[str, list[float]]


def _aged(bench: Bench, container: Any, seconds: float = 1.2) -> None:
    """Wait until every file the user wrote has a ctime ``seconds`` old."""
    container.reload()
    upper = Path(container.attrs["GraphDriver"]["Data"]["UpperDir"]) / "root" / "work"
    newest = max(os.stat(p).st_ctime_ns for p in upper.iterdir())
    bench.wait(lambda: time.time_ns() - newest > seconds * 1e9, timeout=30)


def _event_ns(bench: Bench, since: float, container_id: str, action: str) -> int:
    """Docker's time of ``action`` on a container since ``since`` (epoch seconds)."""
    for event in bench.docker.events(since=int(since) - 1, until=int(time.time()) + 1,
                                     decode=True, filters={"container": container_id}):
        if event.get("Action") == action:
            return int(event["timeNano"])
    raise AssertionError(f"no {action} event of {container_id[:12]}")


def gpudock_update(bench: Bench, base: str, change: int) -> dict[str, float]:
    name = bench.name("update")
    bench.create_ready(name, image=base, gpus=1, historyPolicy="Purge")
    old = bench.container(name)
    write(old, "/root/work", change)
    _aged(bench, old)
    since = time.time()
    began = time.perf_counter()
    bench.patch(name, {"gpuCount": 2})
    bench.wait(lambda: bench.settled(name, revision=2))
    ready_ns = time.time_ns()
    total = time.perf_counter() - began
    new = bench.container(name)
    kill = _event_ns(bench, since, old.id, "kill")
    start = _event_ns(bench, since, new.id, "start")
    bench.delete(name)
    purge_saved(bench)
    return {"total": total, "down to start": (start - kill) / 1e9,
            "down to Ready": (ready_ns - kill) / 1e9}


def original_copy(bench: Bench, base: str, change: int) -> dict[str, float]:
    """gpu-docker-api's copy: `cp -rf -p <old merged>/* <new merged>/` while both run
    (its code's order), then the sync it never does, timed apart."""
    old = bench.docker.containers.run(base, SLEEP, detach=True, init=True)
    try:
        write(old, "/root/work", change)
        _aged(bench, old)
        new = bench.docker.containers.run(base, SLEEP, detach=True, init=True)
        try:
            old.reload()
            new.reload()
            source = old.attrs["GraphDriver"]["Data"]["MergedDir"]
            target = new.attrs["GraphDriver"]["Data"]["MergedDir"]
            done: list[subprocess.CompletedProcess[str]] = []
            copy = timed(lambda: done.append(subprocess.run(
                f"cp -rf -p {source}/* {target}/", shell=True, check=False,
                capture_output=True, text=True)))
            if done[0].returncode:
                print(f"  (the original's cp said: {done[0].stderr[:300]!r})", flush=True)
            synced = timed(lambda: subprocess.run(
                ["sync", "-f", str(bench.stack.docker_root)], check=True))
        finally:
            new.remove(force=True)
    finally:
        old.remove(force=True)
    return {"copy": copy, "copy + sync": copy + synced}


def _agent(stack: LocalStack, method: str) -> tuple[AgentProcess, Bench]:
    agent = AgentProcess(stack, name=f"bench-{method}", gpus=8, extra_args=[
        "--stop-timeout", str(STOP_TIMEOUT), "--namespace", NS, "--disk-saves", method,
        "--metrics-port", str(free_port())]).start()
    return agent, Bench(stack, agent)


def _cell(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"
            if values else "-")


def _run(stack: LocalStack, rows: list[Row], rounds: int,
         ) -> dict[tuple[Row, str], Figures]:
    found: dict[tuple[Row, str], Figures] = {}
    plain = Bench(stack, AgentProcess(stack, name="bench-images"))  # images, Docker only
    images = {base: plain.base_image(base) for base in sorted({b for b, _ in rows})}
    for round_ in range(rounds):
        order = METHODS[round_ % 3:] + METHODS[:round_ % 3]
        print(f"round {round_ + 1}: {', '.join(order)}", flush=True)
        for method in order:
            measure: Callable[[Bench, str, int], dict[str, float]]
            if method == "original":
                agent, bench, measure = None, plain, original_copy
            else:
                (agent, bench), measure = _agent(stack, method), gpudock_update
                bench.serial = 1000 * (round_ + 1)  # a name is never used twice
            try:
                for row in rows:
                    figures = measure(bench, images[row[0]], row[1])
                    into = found.setdefault((row, method), {})
                    for what, value in figures.items():
                        into.setdefault(what, []).append(value)
            finally:
                if agent is not None:
                    bench.close()
                    agent.stop()
    plain.close()
    return found


def _report(rows: list[Row], rounds: int, found: dict[tuple[Row, str], Figures]) -> None:
    lines: list[tuple[str, ...]] = [("base / changes", "method", "total",
                                     "down: kill -> start", "down: kill -> Ready")]
    for row in rows:
        for method in METHODS[:2]:
            got = found.get((row, method), {})
            lines.append((f"{row[0]} MB / {row[1]} MB", SHOWN[method], _cell(got.get("total", [])),
                          _cell(got.get("down to start", [])),
                          _cell(got.get("down to Ready", []))))
        got = found.get((row, "original"), {})
        lines.append((f"{row[0]} MB / {row[1]} MB", "original's copy; copy + sync",
                      _cell(got.get("copy", [])), _cell(got.get("copy + sync", [])), ""))
    table(lines, sys.stdout)
    print("\nmedians of the rounds' own ratios: total / the original's copy + sync "
          "(target <= 1.0x)")
    for row in rows:
        base = found.get((row, "original"), {}).get("copy + sync", [])
        cells = []
        for method in METHODS[:2]:
            total = found.get((row, method), {}).get("total", [])
            own = [t / b for t, b in zip(total, base, strict=False) if b > 0]
            cells.append(f"{SHOWN[method]}: {statistics.median(own):.2f}x" if own else "-")
        print(f"  {row[0]} MB / {row[1]} MB: " + "; ".join(cells))
    small = [r for r in rows if r[1] <= 10]
    for method, (big, little) in itertools.product(METHODS[:2], itertools.product(
            [r for r in rows if r[1] >= 1000], small)):
        down = found.get((big, method), {}).get("down to Ready", [])
        base = found.get((little, method), {}).get("down to Ready", [])
        if down and base:
            print(f"downtime (kill -> Ready) {big[1]} MB / {little[1]} MB of changes, "
                  f"{SHOWN[method]}: {statistics.median(down) / statistics.median(base):.2f}x"
                  " of the medians (target <= 1.5x)")
    print(f"{rounds} rounds; cpus: {os.cpu_count()}; load average: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", default="100:200,1000:200,100:1074,100:10",
                        help="BASE:CHANGES in MB, comma-separated")
    args = parser.parse_args(argv)
    rows = [(int(b), int(c)) for b, c in (r.split(":") for r in args.rows.split(","))]
    with LocalStack(bridge_prefix=22) as stack:
        stack.kubectl("create", "namespace", NS)
        print(f"update benchmark: rows {args.rows}, {args.rounds} rounds, Docker root on "
              f"{stack.docker_root_fs}", flush=True)
        found = _run(stack, rows, args.rounds)
        _report(rows, args.rounds, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
