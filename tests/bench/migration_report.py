"""The migration benchmark's tables (tests/bench/migration.py): every measure per
round, its median and min-max, the ratios and the issue's targets (#23)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import TextIO

from gpudock.cli.retained_commands import table

FILES = 4  # the layer's data: this many files of equal size
CHANGED_FILES, CHANGED_BYTES = 10, 1 << 20  # (c): 10 MiB written during the first pass
RATIO_TARGET, DOWNTIME_TARGET = 1.3, 5.0
Run = dict[str, float]


def _spread(values: list[float], unit: str, digits: int = 2) -> tuple[str, str]:
    return (f"{statistics.median(values):.{digits}f}{unit}",
            f"{min(values):.{digits}f}-{max(values):.{digits}f}{unit}")


COLUMNS: dict[str, Callable[[Run], float]] = {
    "(b) tar|socket|tar": lambda r: r["tar"],
    "(b') the same, then sync -f of the copy": lambda r: r["tar"] + r["tar sync"],
    "(a) created -> Ready on b": lambda r: r["ready"],
    "(a) created -> Succeeded (after the source's hold)": lambda r: r["total"],
    "(a) Pending+Reserving": lambda r: r["transferring"],
    "(a) pre-copy: Transferring -> kill": lambda r: r["kill"] - r["transferring"],
    "(a) docker stop: kill -> stop": lambda r: r["stopped"] - r["kill"],
    "(a) stopped pass: stop -> Switching": lambda r: r["switching"] - r["stopped"],
    "(a) Switching -> Ready on b": lambda r: r["ready"] - r["switching"],
    "(a)   of it: b copies the received layer into the container":
        lambda r: r["layer copy"],
    "(a) Ready on b -> Succeeded: the hold, then the source cleaned":
        lambda r: r["succeeded"] - r["ready"],
    "(a) status.downtimeSeconds": lambda r: r["downtime"],
    "(a) downtime measured: kill -> Ready on b": lambda r: r["measured downtime"],
    "(c) created -> Ready on b": lambda r: r["busy ready"],
    "(c) status.downtimeSeconds": lambda r: r["busy downtime"],
    "(c) downtime measured: kill -> Ready on b": lambda r: r["busy measured downtime"],
    "(c) stopped pass: stop -> Switching": lambda r: r["busy switching"] - r["busy stopped"],
    "(c) b copies the received layer into the container": lambda r: r["busy layer copy"],
}
TARGETS = {"(c) status.downtimeSeconds": f"<= {DOWNTIME_TARGET:g}s",
           "(c) downtime measured: kill -> Ready on b": f"<= {DOWNTIME_TARGET:g}s"}

RATIOS: dict[str, tuple[Callable[[Run], float], str]] = {
    # The migration's time: until it serves on b (what follows is the source's hold
    # of --migration-hold-seconds, a wait, then its clean-up).
    "ratio (a)/(b)": (lambda r: r["ready"] / r["tar"], f"<= {RATIO_TARGET:g}x"),
    "ratio (a)/(b') (tar made durable)": (lambda r: r["ready"] / (r["tar"] + r["tar sync"]),
                                          ""),
    "ratio (a) Transferring -> Switching / (b)":
        (lambda r: (r["switching"] - r["transferring"]) / r["tar"], "")}


def report(runs: list[Run], gib: float, volume_gib: float, root_fs: str,
           out: TextIO) -> None:
    """Per round, every measure in seconds; then medians with min-max and ratios."""
    print(f"writable layer: {gib:g} GiB of random data in {FILES} files; SizedVolume "
          f"(loopfile): {volume_gib:g} GiB in {FILES} files; "
          f"{len(runs)} rounds; {os.cpu_count()} CPUs; Docker roots: loop-mounted {root_fs}; "
          f"(c): {CHANGED_FILES} x {CHANGED_BYTES >> 20} MiB written from Transferring",
          file=out)
    rows: list[tuple[str, ...]] = [("measure", *(f"round {i}" for i in range(
        1, len(runs) + 1)), "median", "min-max", "target")]
    for label, get in COLUMNS.items():
        values = [get(r) for r in runs]
        rows.append((label, *(f"{v:.2f}s" for v in values), *_spread(values, "s"),
                     TARGETS.get(label, "")))
    for label, (ratio, target) in RATIOS.items():
        values = [ratio(r) for r in runs]
        rows.append((label, *(f"{v:.2f}x" for v in values), *_spread(values, "x"), target))
    rows.append(("(c) 10 MiB written before the stop", *(
        "yes" if r["busy during end"] < r["busy kill"] else "NO" for r in runs), "", "", ""))
    rows.append(("left on nodes a/b after the round", *(
        f"{round(r['left a'])}/{round(r['left b'])} MiB" for r in runs), "", "", ""))
    table(rows, out)
    print("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
          file=out)
