"""The host's processes as /proc shows them, and the kill of everything a command run
in a container (an ExecRequest) started.

A command's processes can leave its process tree: a subshell that starts one in the
background and exits (a double fork) leaves it to the container's init, and a
``setsid`` or a daemon leaves its session too. What they cannot leave is their
environment, which every child inherits: the agent gives each command a variable of
its own (the request's UID, ``MARK_VARIABLE``), and the kill takes every process of the
container (its PID namespace) that carries it, plus the command's process tree,
session and process group (for those that cleared their environment). It needs the
agent in the host's PID namespace (hostPID), like every view of a container's
processes from the host; without it the command's own processes are not even seen.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MARK_VARIABLE = "GPUDOCK_EXEC_REQUEST"
KILL_ROUNDS = 5  # a process forked between a look and the kill is found by the next


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    group: int
    session: int
    zombie: bool


def _stat(proc: Path, pid: int) -> Process | None:
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return Process(pid, int(fields[1]), int(fields[2]), int(fields[3]),
                       fields[0] in ("Z", "X"))
    except (OSError, IndexError, ValueError):
        return None  # gone meanwhile, or not a process


def processes(proc: Path = Path("/proc")) -> list[Process]:
    found = (_stat(proc, int(entry.name)) for entry in _entries(proc))
    return [p for p in found if p is not None]


def _entries(proc: Path) -> Iterable[Path]:
    try:
        return [e for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return []


def pid_namespace(proc: Path, pid: int) -> str | None:
    """The identity of a process's PID namespace (``pid:[4026531836]``); None when it
    cannot be read (gone, or not ours to see)."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "pid")
    except OSError:
        return None


def carries(proc: Path, pid: int, entry: bytes) -> bool:
    """Whether the process's environment holds ``entry`` (``NAME=value``)."""
    try:
        return entry in (proc / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def started_by(proc: Path, root_pid: int, container_pid: int, mark: str) -> set[int]:
    """The live processes a command started: the tree, session and process group of
    ``root_pid`` (its host PID; 0: not known, e.g. after an agent restart), and every
    process in the PID namespace of ``container_pid`` (the container's init) whose
    environment carries ``MARK_VARIABLE=mark``, with their descendants; only ever
    processes of that PID namespace. Never the container's init, the agent itself or
    the host's init."""
    namespace = pid_namespace(proc, container_pid) if container_pid > 0 else None
    if namespace is None:
        return set()  # the container's processes cannot be told from the host's
    # Only processes of the container's PID namespace, ever: a PID the command had
    # may have been taken by a host process since.
    table = [p for p in processes(proc)
             if not p.zombie and pid_namespace(proc, p.pid) == namespace]
    spared = {container_pid, os.getpid(), 1, 0}
    chosen: set[int] = set()
    if root_pid > 0:
        chosen |= {p.pid for p in table
                   if p.pid == root_pid or root_pid in (p.session, p.group)}
    if mark:
        entry = f"{MARK_VARIABLE}={mark}".encode()
        chosen |= {p.pid for p in table if p.pid not in spared and p.pid not in chosen
                   and carries(proc, p.pid, entry)}
    children: dict[int, list[int]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p.pid)
    queue = list(chosen)
    while queue:
        for child in children.get(queue.pop(), ()):
            if child not in chosen:
                chosen.add(child)
                queue.append(child)
    return chosen - spared


def kill_started(root_pid: int, container_pid: int, mark: str, *,
                 proc: Path = Path("/proc"),
                 kill: Callable[[int, int], None] = os.kill) -> int:
    """SIGKILL everything :func:`started_by` finds, looking again until nothing is
    left (a fork between a look and the kill); returns how many were killed."""
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        doomed = started_by(proc, root_pid, container_pid, mark) - killed
        if not doomed:
            break
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
            killed.add(pid)
    return len(killed)
