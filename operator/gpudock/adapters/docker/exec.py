"""Commands run in a running container (``docker exec``), waited for to the end.

These are the agent's own short probes; an ExecRequest's command, with a deadline
and its output capped, runs through container_exec.py instead.
"""

from __future__ import annotations

from gpudock.adapters.docker.connection import DockerConnection
from gpudock.errors import GpudockError


class ExecMixin(DockerConnection):
    def exec(self, container_id: str, command: list[str],
             environment: list[str] | None = None) -> tuple[int, str]:
        api = self.client.api
        exec_id = str(self._call("exec", lambda: api.exec_create(
            container_id, command, environment=environment))["Id"])
        output = self._call("exec", lambda: api.exec_start(exec_id))
        code = self._call("exec", lambda: api.exec_inspect(exec_id))["ExitCode"]
        return int(code or 0), output.decode(errors="replace")

    def command_missing(self, container_id: str, command: str,
                        env: list[str]) -> bool | None:
        """Whether ``command`` cannot be found in a running container's filesystem
        with its PATH from ``env`` (True: it is missing, False: it is there, None:
        cannot tell, e.g. the image has no shell)."""
        path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), None)
        probe = ["sh", "-c", 'command -v "$1" >/dev/null 2>&1 || exit 100', "sh", command]
        try:
            code, _ = self.exec(container_id, probe,
                                environment=[f"PATH={path}"] if path else None)
        except GpudockError:
            return None
        return {0: False, 100: True}.get(code)
