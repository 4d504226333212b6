"""Taking back what a stack left when the process running it was killed outright.

A SIGKILL, an OOM kill or a CI job's timeout gives a stack no chance to tear down:
its etcd, kube-apiserver, dockerd and kubelet live on (each runs in a session of its
own), and so do their containers, mounts, loop devices, bridge, iptables rules,
cgroups and the sysctls the kubelet set. Every stack therefore records its owner (the
process that started it, by PID and start time) in its directory, and each stack's
start first reclaims the stacks whose owner is gone: it kills their processes, then
undoes what their journals record (tests/stack/machine_changes.py), removes their
containers' cgroups and their bridge, unmounts, detaches and deletes the directory.

Only directories with an owner record are looked at, and only those whose owner is
gone are touched: a stack of another live process (a second test run) is left alone.
``python -m tests.stack reclaim`` does the same by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.stack.machine_changes import (
    MachineChanges,
    cgroup_mount_points,
    release_mounts_and_loops,
    remove_cgroup_tree,
)
from tests.stack.node import journal_of
from tests.stack.processes import proc_stat

STACK_PREFIX = "gpudock-stack-"
OWNER_FILE = "owner.json"
KILL_WAIT_SECONDS = 20.0


def stacks_home() -> Path:
    return Path(tempfile.gettempdir())


def claim(base_dir: Path, bridge: str) -> None:
    """Record this process as the owner of the stack in ``base_dir``."""
    base_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (base_dir / OWNER_FILE).write_text(json.dumps(
        {"pid": pid, "started": _start_time(pid), "bridge": bridge}))


def reclaim_dead_stacks(home: Path | None = None) -> list[Path]:
    """Reclaim every stack under ``home`` whose owner is gone; returns their dirs."""
    reclaimed = []
    with _reclaim_lock(home or stacks_home()) as where:
        for base_dir in sorted(where.glob(f"{STACK_PREFIX}*")):
            owner = _owner(base_dir)
            if owner is None or _alive(owner):
                continue
            try:
                reclaim(base_dir, str(owner.get("bridge") or ""))
            except RuntimeError as exc:  # left for a later start; this one goes on
                print(f"not reclaimed: {exc}", file=sys.stderr)
                continue
            reclaimed.append(base_dir)
    return reclaimed


def reclaim(base_dir: Path, bridge: str) -> None:
    """Take back everything of the stack in ``base_dir`` (its owner is gone)."""
    kill_processes(base_dir)
    changes = MachineChanges.load(journal_of(base_dir))
    if changes is not None:
        changes.undo()
    for engine_root in [base_dir / "docker", *base_dir.glob("*/docker")]:  # every node's
        _remove_container_cgroups(engine_root / "containers")
    # The first node's bridge, and those of the nodes a fleet added (its name + a digit).
    for link in Path("/sys/class/net").glob(f"{bridge}*") if bridge.startswith("gd") else ():
        subprocess.run(["ip", "link", "delete", link.name], check=False, capture_output=True)
    release_mounts_and_loops(base_dir)
    _remove_directory(base_dir)


def _remove_directory(base_dir: Path) -> None:
    """Delete the stack's directory, its owner record last: a reclaim cut short
    leaves the record, so the next start tries again. Nothing is deleted while a
    mount under it is left (a bind mount would take its source's files along)."""
    with open("/proc/mounts") as mounts:
        left = [line.split()[1] for line in mounts
                if line.split()[1].startswith(f"{base_dir}/")]
    if left:
        raise RuntimeError(f"{base_dir} not deleted: still mounted at {', '.join(left)}")
    for entry in base_dir.iterdir():
        if entry.name == OWNER_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if [entry.name for entry in base_dir.iterdir()] == [OWNER_FILE]:
        (base_dir / OWNER_FILE).unlink()
        base_dir.rmdir()


def processes_of(base_dir: Path) -> list[int]:
    """The processes of a stack: those whose command line names its directory (its
    servers, containerd and the shims) and those whose root is a mount under it (the
    containers Docker ran there)."""
    marker = f"{base_dir}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            if marker in command or _root_mounted_under(entry, marker):
                found.append(int(entry.name))
    return found


def _root_mounted_under(process: Path, marker: str) -> bool:
    with open(process / "mountinfo") as mountinfo:
        return any(marker in line for line in mountinfo if line.split()[4] == "/")


def kill_processes(base_dir: Path) -> None:
    """SIGKILL the stack's processes until none is left (the kubelet and dockerd
    first match too, so nothing starts a container again while they go). Also what
    a stack's own stop left: a container whose start a SIGKILLed dockerd never
    recorded runs on under its shim, unknown to the dockerd started again."""
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while (left := processes_of(base_dir)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    if left:
        raise RuntimeError(f"processes of {base_dir} outlived SIGKILL: {left}")


def _remove_container_cgroups(containers: Path) -> None:
    """Docker's cgroup of each container the stack's dockerd made (cgroupfs driver)."""
    if not containers.is_dir():
        return
    ids = [entry.name for entry in containers.iterdir()]
    for point in cgroup_mount_points():
        for container_id in ids:
            remove_cgroup_tree(point / "docker" / container_id)


def _owner(base_dir: Path) -> dict[str, object] | None:
    try:
        owner = json.loads((base_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and _start_time(pid) == owner.get("started")


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the PID, it names one
    process, whatever reuses the PID later."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields is not None else None


@contextlib.contextmanager
def _reclaim_lock(home: Path) -> Iterator[Path]:
    """One reclaimer at a time (two stacks starting at once see the same dead one)."""
    with open(home / "gpudock-stacks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield home
