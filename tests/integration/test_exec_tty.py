"""#26 item 1 (its interactive half) against the real stack: `kubectl gpudock exec -it`
is a real terminal streamed by the node's agent over TLS (a pseudo-terminal driven by
the test: typed commands, resize, Ctrl-C, the exit code), `-i` passes stdin to its
end; the caller's token and their permission to create gpureplicasets/exec are
checked by the API server, and a caller with only gpudock-view is refused."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import wait_settled
from tests.stack.localstack import LocalStack, person_kubeconfig, wait_for
from tests.stack.processes import free_port
from tests.stack.resources import apply, gpu_replica_set

pytestmark = pytest.mark.timeout(300)


class Terminal:
    """The plugin on a pseudo-terminal of the test's: what it writes is read here."""

    def __init__(self, stack: LocalStack, argv: list[str], rows: int, columns: int) -> None:
        self.master, self.slave = os.openpty()
        self.set_size(rows, columns)
        self.seen = b""
        self.process = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave,
                                        stderr=self.slave, env=stack.env(),
                                        start_new_session=True)

    def set_size(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def run(self, line: str) -> None:
        """Type ``line`` at the shell's next prompt (busybox's line editing flushes
        what was typed before it)."""
        self.read_until(r"/ # ")
        self.type(f"{line}\r")

    def read_until(self, pattern: str, timeout: float = 60) -> re.Match[bytes]:
        """Read until ``pattern`` matches what came since the last match."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern.encode(), self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.seen!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the plugin exited and the pty is closed
                    pytest.fail(f"no {pattern!r} in {self.seen!r} (the plugin exited)")
        self.seen = self.seen[found.end():]
        return found

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


def _plugin(kubeconfig: Path, namespace: str, flags: str, *command: str) -> list[str]:
    return ["kubectl-gpudock", "exec", flags, "box", "-n", namespace, "--kubeconfig",
            str(kubeconfig), "--", *command]


def _sleeps(marker: str) -> list[int]:
    """The host's processes that run ``sleep <marker>`` (the container's are seen)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_26_1_exec_it_is_a_terminal_with_the_callers_permission(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    start_agent(extra_args=["--stream-port", str(free_port())])
    apply(stack, namespace, gpu_replica_set("box", gpus=0, command=["sleep", "3600"]))
    wait_settled(stack, namespace, "box")
    alice = person_kubeconfig(stack, "alice", tmp_path / "alice")
    mallory = person_kubeconfig(stack, "mallory", tmp_path / "mallory")
    stack.kubectl("create", "rolebinding", "alice-edit", "-n", namespace,
                  "--clusterrole=gpudock-edit", "--user=alice")
    stack.kubectl("create", "rolebinding", "mallory-view", "-n", namespace,
                  "--clusterrole=gpudock-view", "--user=mallory")
    stack.kubectl("create", "clusterrole", f"{namespace}-nodes", "--verb=get",
                  "--resource=gpunodes.gpudock.dev")
    stack.kubectl("create", "clusterrolebinding", f"{namespace}-nodes",
                  f"--clusterrole={namespace}-nodes", "--user=alice", "--user=mallory")

    # gpudock-view reads logs, never runs anything: refused before the command starts.
    refused = subprocess.run(_plugin(mallory, namespace, "-i", "touch", "/tmp/mallory"),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=stack.env(), timeout=60, check=False)
    assert refused.returncode != 0
    assert "403" in refused.stderr
    assert "may not create gpureplicasets/exec" in refused.stderr
    looked = subprocess.run(["kubectl-gpudock", "exec", "box", "-n", namespace, "--",
                             "ls", "/tmp/mallory"], capture_output=True, text=True,
                            env=stack.env(), timeout=120, check=False)
    assert looked.returncode != 0, "mallory's command ran"  # the ExecRequest path, as before

    # -i: stdin to its end (then EOF), the output and the exit code back.
    piped = subprocess.run(_plugin(alice, namespace, "-i", "sh", "-c", "cat; exit 5"),
                           input="through stdin\n", capture_output=True, text=True,
                           env=stack.env(), timeout=60, check=False)
    assert (piped.returncode, piped.stdout) == (5, "through stdin\n"), piped.stderr

    # -it on a terminal: typed commands, resize, Ctrl-C to the command, the exit code.
    term = Terminal(stack, _plugin(alice, namespace, "-it", "sh"), 24, 80)
    try:
        term.run("echo $((6*7))")
        term.read_until(r"\r\n42\r\n")
        term.run("stty size")
        term.read_until(r"\r\n24 80\r\n")  # the size at the start
        term.set_size(40, 132)
        term.process.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 60
        while True:  # the resize frame races the typed line: ask until it shows
            term.run("stty size")
            rows = term.read_until(r"\r\n(\d+ \d+)\r\n").group(1)
            if rows == b"40 132":
                break
            assert rows == b"24 80", rows
            assert time.monotonic() < deadline, "the new size never showed"
        term.run("sleep 4242")
        wait_for(lambda: _sleeps("4242"), 30, what="sleep 4242 runs")
        term.type("\x03")  # raw mode: a byte for the remote TTY, not SIGINT for the plugin
        wait_for(lambda: not _sleeps("4242"), 30, what="Ctrl-C interrupted sleep")
        term.run("echo still $((1+1))")
        term.read_until(r"still 2")
        term.run("exit 3")
        assert term.process.wait(timeout=60) == 3
        assert termios.tcgetattr(term.slave)[3] & termios.ICANON  # the terminal restored
    finally:
        term.close()

    # A caller who goes (the plugin killed) takes the command with them.
    term = Terminal(stack, _plugin(alice, namespace, "-it", "sh"), 24, 80)
    try:
        term.run("sleep 4343")
        wait_for(lambda: _sleeps("4343"), 30, what="sleep 4343 runs")
        term.process.kill()
        wait_for(lambda: not _sleeps("4343"), 30, what="the left session's command killed")
    finally:
        term.close()


def test_26_1_an_idle_shell_ends_and_its_command_is_killed(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    start_agent(extra_args=["--stream-port", str(free_port()),
                            "--stream-idle-seconds", "3"])
    apply(stack, namespace, gpu_replica_set("box", gpus=0, command=["sleep", "3600"]))
    wait_settled(stack, namespace, "box")
    alice = person_kubeconfig(stack, "alice", tmp_path / "alice")
    stack.kubectl("create", "rolebinding", "alice-edit", "-n", namespace,
                  "--clusterrole=gpudock-edit", "--user=alice")
    stack.kubectl("create", "clusterrole", f"{namespace}-nodes", "--verb=get",
                  "--resource=gpunodes.gpudock.dev")
    stack.kubectl("create", "clusterrolebinding", f"{namespace}-nodes",
                  f"--clusterrole={namespace}-nodes", "--user=alice")
    # stdin open and silent, no output: nothing passes either way.
    session = subprocess.Popen(_plugin(alice, namespace, "-i", "sleep", "4545"),
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=stack.env())
    try:
        wait_for(lambda: _sleeps("4545"), 30, what="sleep 4545 runs")
        assert session.wait(timeout=60) != 0  # killed: no exit code of its own
        assert session.stderr is not None
        assert "session ended: idle" in session.stderr.read()
        wait_for(lambda: not _sleeps("4545"), 30, what="the idle session's command killed")
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        for pipe in (session.stdin, session.stderr):
            if pipe is not None:
                pipe.close()
