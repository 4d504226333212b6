"""#28 item 14: what an ExecRequest's command started, found in a /proc tree: its
process tree, its session and every process of its container that carries its mark,
so double-forked and setsid'd processes are killed at the deadline, and by an agent
that restarted (it knows no PID then, only the mark)."""

from __future__ import annotations

import os
from pathlib import Path

from gpudock.adapters.process_table import MARK_VARIABLE, kill_started, processes, started_by

MARK = "0b5d3c9e-uid-of-the-request"
CONTAINER_NS, HOST_NS, OTHER_NS = 4026532001, 4026531836, 4026532002
INIT = 500  # the container's init (host PID)
ROOT = 600  # the exec's process (host PID); runc made it a session leader


def _process(proc: Path, pid: int, ppid: int, *, session: int, group: int | None = None,
             namespace: int = CONTAINER_NS, marked: bool = True, state: str = "S") -> None:
    entry = proc / str(pid)
    (entry / "ns").mkdir(parents=True)
    # The command's name may hold ")" and spaces: the fields come after the last ")".
    (entry / "stat").write_text(f"{pid} (odd) name) {state} {ppid} {group or session} "
                                f"{session} 0 -1 4194560 0 0 0\n")
    os.symlink(f"pid:[{namespace}]", entry / "ns" / "pid")
    env = [b"PATH=/bin", b"HOME=/root"] + ([f"{MARK_VARIABLE}={MARK}".encode()] if marked
                                           else [])
    (entry / "environ").write_bytes(b"\0".join(env) + b"\0")


def _node(proc: Path) -> None:
    _process(proc, 1, 0, session=1, namespace=HOST_NS, marked=False)  # the host's init
    _process(proc, 400, 1, session=400, namespace=HOST_NS, marked=False)  # the shim
    # A tenant may put the mark in the container's own environment: init is spared.
    _process(proc, INIT, 400, session=INIT)
    _process(proc, 501, INIT, session=INIT, marked=False)  # the instance's own process
    _process(proc, ROOT, 400, session=ROOT)  # sh -c '...'
    _process(proc, 601, ROOT, session=ROOT)  # its child
    _process(proc, 610, INIT, session=ROOT)  # double-forked: reparented, same session
    _process(proc, 620, INIT, session=620)  # setsid: its own session, the mark kept
    _process(proc, 621, 620, session=620, marked=False)  # env cleared, a child of 620
    _process(proc, 630, 400, session=630, marked=False)  # another exec
    _process(proc, 640, 1, session=640, namespace=OTHER_NS)  # the mark, elsewhere
    _process(proc, 650, INIT, session=ROOT, state="Z")  # a zombie: nothing to kill
    if not (proc / str(os.getpid())).exists():
        _process(proc, os.getpid(), 1, session=ROOT)  # never the agent itself


def test_the_fields_come_after_the_last_parenthesis(tmp_path: Path) -> None:
    _node(tmp_path)
    (tmp_path / "self").mkdir()  # not a process
    table = {p.pid: p for p in processes(tmp_path)}
    assert (table[610].ppid, table[610].group, table[610].session) == (INIT, ROOT, ROOT)
    assert table[650].zombie
    assert not table[610].zombie


def test_the_deadline_finds_the_tree_the_session_and_the_marked(tmp_path: Path) -> None:
    _node(tmp_path)
    assert started_by(tmp_path, ROOT, INIT, MARK) == {600, 601, 610, 620, 621}


def test_after_a_restart_the_mark_alone_finds_them(tmp_path: Path) -> None:
    _node(tmp_path)
    # 610 is found by its mark: it is neither in a tree nor known by session now.
    assert started_by(tmp_path, 0, INIT, MARK) == {600, 601, 610, 620, 621}


def test_without_a_view_of_the_container_nothing_is_killed(tmp_path: Path) -> None:
    """A PID the command had may be a host process's by now: without the container's
    namespace to check against, nothing is taken."""
    _node(tmp_path)
    (tmp_path / str(INIT) / "ns" / "pid").unlink()  # its namespace cannot be read
    assert started_by(tmp_path, ROOT, INIT, MARK) == set()
    assert started_by(tmp_path, 0, INIT, MARK) == set()


def test_a_host_process_in_the_commands_old_session_is_spared(tmp_path: Path) -> None:
    _node(tmp_path)
    (tmp_path / "610" / "ns" / "pid").unlink()
    (tmp_path / "610" / "ns" / "pid").symlink_to("pid:[4026531836]")  # the host's
    assert 610 not in started_by(tmp_path, ROOT, INIT, MARK)


def test_the_kill_takes_each_once_and_looks_again(tmp_path: Path) -> None:
    _node(tmp_path)
    killed: list[int] = []
    assert kill_started(ROOT, INIT, MARK, proc=tmp_path,
                        kill=lambda pid, sig: killed.append(pid)) == 5
    assert sorted(killed) == [600, 601, 610, 620, 621]
