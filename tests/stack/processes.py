"""Child processes of the local stack: started in their own session, logged to a file,
stopped with SIGTERM and, if they linger, SIGKILL."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port that nothing holds right now, for a server started after this call:
    below the kernel's ephemeral range (free_port_range), so that none of the stack's
    many outgoing connections can take it meanwhile (CI saw an agent restarted by a
    crash test fail to bind the liveness port the kernel had just handed out so)."""
    return free_port_range(1)


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive TCP ports that nothing holds right now.

    The ports lie below the kernel's ephemeral range, so the machine's own outgoing
    connections (the stack makes many) cannot take one of them after the check, as
    they can take a neighbour of a port that ``free_port`` returned."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range")
                           .read_text().split()[0])
    randomness = random.Random()
    for _ in range(100):
        first = randomness.randrange(20000, lowest_ephemeral - count)
        if all(_bindable(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} free consecutive ports below {lowest_ephemeral}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; fail early, with the log, if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}) "
                                   f"before {what}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: no {what} after {timeout}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group; SIGKILL it after ``timeout``. Returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: no chance to clean up."""
        if self.alive():
            self._signal_group(signal.SIGKILL)
            self.process.wait(10)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (the first is the
    state: field 3 of proc(5)); None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.5,
             what: str = "condition") -> None:
    """Poll ``predicate`` until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
