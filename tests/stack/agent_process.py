"""`gpudock agent` as a real child process against a LocalStack."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence

from tests.stack.localstack import NODE_NAME, LocalStack
from tests.stack.processes import ManagedProcess, free_port

__all__ = ["NODE_NAME", "AgentProcess"]


class AgentProcess:
    """The agent with simulated GPUs, the stack's RBAC-limited user and its own state."""

    def __init__(self, stack: LocalStack, *, node_name: str = NODE_NAME, gpus: int = 8,
                 extra_args: Sequence[str] = (), name: str = "agent",
                 state: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.stack = stack
        self.node_name = node_name
        # Agents given the same ``state`` share a state dir (and so the SQLite store),
        # as a restarted agent on the same node does.
        self.state_dir = stack.base_dir / f"{state or name}-state"
        self.state_dir.mkdir(exist_ok=True)
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self.argv = [
            sys.executable, "-m", "gpudock", "agent", "--node-name", node_name,
            "--kubeconfig", str(stack.agent_kubeconfig), "--docker-host", stack.docker_host,
            "--gpu-backend", "simulated", "--simulated-gpus", str(gpus),
            "--state-dir", str(self.state_dir), "--liveness-endpoint", self.liveness,
            "--stop-timeout", "5",
            *(() if "--instance-subnet" in extra_args
              else ("--instance-subnet", stack.instance_subnet)),
            # A port of its own: agents of two stacks (make test's workers) run side by
            # side on this machine.
            *(() if "--transfer-port" in extra_args else ("--transfer-port", "0")),
            *extra_args,
        ]
        self.log_path = stack.base_dir / "logs" / f"{name}.log"
        self.process: ManagedProcess | None = None
        self.env = {**os.environ, **env} if env else None

    def start(self) -> AgentProcess:
        self.process = ManagedProcess("gpudock-agent", self.argv, self.log_path, self.env)
        try:
            self.process.wait_until(self.healthy, 60, "liveness")
        except BaseException:
            self.process.stop()  # an agent that never came up is not left running
            raise
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.liveness, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        return self.process.stop() if self.process else None

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the agent to exit by itself; its exit code (None: still running)."""
        deadline = time.monotonic() + timeout
        while self.process and self.process.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return None if self.process is None or self.process.alive() else \
            self.process.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process:
            self.process.kill()

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
