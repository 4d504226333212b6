"""SizedVolume benchmark: grow and shrink time against the data a volume holds, for
each backend this machine can run, and the copy backend's copy (cp -a plus the
full verification) against a bare `cp -a` of the same data on the same disk.

    python -m tests.bench.volume_resize [--data-mib 64,256,1024] [--dir /var/tmp]

Prints a table; asserts nothing about speed. Runs the backends' own code (the
adapters the agent uses) on real loop devices and a loop-mounted btrfs; needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gpudock.adapters import tree_copy
from gpudock.adapters.volumes.btrfs import BtrfsBackend
from gpudock.adapters.volumes.loopfile import LoopfileBackend
from gpudock.cli.retained_commands import table
from tests.stack import filesystems

MiB = 2**20


def _fill(directory: Path, data_mib: int) -> None:
    """Data like a user's: a few big files and many small ones."""
    big = max(data_mib - 16, 1)
    subprocess.run(["dd", "if=/dev/urandom", f"of={directory / 'weights.bin'}", "bs=1M",
                    f"count={big}"], check=True, capture_output=True)
    small = directory / "env"
    small.mkdir()
    for i in range(4096):  # 16 MiB in 4 KiB files
        (small / f"f{i}").write_bytes(os.urandom(4096))
    os.sync()


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def loopfile(base: Path, data_mib: int) -> tuple[float, float]:
    backend = LoopfileBackend(base / "loopfile")
    size = (data_mib * 2 + 64) * MiB
    backend.create("bench", size)
    backend.attach("bench")
    try:
        _fill(backend.path("bench"), data_mib)
        def grow_it() -> None:  # as the reconciler does: online, else offline
            if not backend.resize_online("bench", size * 2):
                backend.resize_offline("bench", size * 2)

        grow = _timed(grow_it)
        shrink = _timed(lambda: backend.resize_offline("bench", size))
        return grow, shrink
    finally:
        backend.delete("bench")


def btrfs(base: Path, data_mib: int) -> tuple[float, float]:
    with filesystems.loop_mounted(base, ["mkfs.btrfs", "-q"],
                                  size=f"{data_mib * 4 + 512}M") as root:
        backend = BtrfsBackend(root)
        backend.check()
        size = (data_mib * 2 + 64) * MiB
        backend.create("bench", size)
        try:
            _fill(backend.path("bench"), data_mib)
            grow = _timed(lambda: backend.resize_online("bench", size * 2))
            shrink = _timed(lambda: backend.resize_online("bench", size))
            return grow, shrink
        finally:
            backend.delete("bench")


def copy(base: Path, data_mib: int) -> tuple[float, float, float]:
    """(cp -a alone, the copy backend's copy, its verification) of the same data."""
    source, plain, checked = base / "source", base / "plain", base / "checked"
    for directory in (source, plain, checked):
        directory.mkdir()
    try:
        _fill(source, data_mib)
        subprocess.run(["sync"], check=True)
        bare = _timed(lambda: subprocess.run(["cp", "-a", f"{source}/.", f"{plain}/"],
                                             check=True))
        copied = _timed(lambda: tree_copy.copy_tree(source, checked))
        verified = _timed(lambda: tree_copy.verify_copy(source, checked))
        return bare, copied, verified
    finally:
        for directory in (source, plain, checked):
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-mib", default="64,256,1024",
                        help="data sizes to put in each volume, in MiB")
    parser.add_argument("--dir", default="/var/tmp", help="where to work (its disk)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.data_mib.split(",")]
    rows = [("data", "loopfile grow", "loopfile shrink", "btrfs grow", "btrfs shrink",
             "cp -a", "copy backend", "(of which verify)", "copy / cp -a")]
    with tempfile.TemporaryDirectory(prefix="gpudock-bench-", dir=args.dir) as work:
        base = Path(work)
        for data in sizes:
            lg, ls = loopfile(base, data)
            bg, bs = btrfs(base, data)
            bare, copied, verified = copy(base, data)
            rows.append((f"{data} MiB", f"{lg:.2f}s", f"{ls:.2f}s", f"{bg:.3f}s",
                         f"{bs:.3f}s", f"{bare:.2f}s", f"{copied + verified:.2f}s",
                         f"{verified:.2f}s", f"{(copied + verified) / bare:.2f}x"))
    table(rows, sys.stdout)


if __name__ == "__main__":
    main()
