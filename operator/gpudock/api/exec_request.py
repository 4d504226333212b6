"""The ExecRequest resource: run a command in a GpuReplicaSet's container, keep its
exit code and output in the status (the REST service's "execute", the Kubernetes way:
RBAC decides who may, and it is as strong as pods/exec)."""

from __future__ import annotations

from dataclasses import dataclass

from gpudock.api.container_fields import MAX_COMMAND_ITEMS, MAX_ENV_ITEMS, EnvVar, parse_env
from gpudock.api.parsing import (
    RawDict,
    get_int,
    get_list,
    get_object_name,
    get_optional_str,
)
from gpudock.errors import SpecError

KIND = "ExecRequest"
PLURAL = "execrequests"
OUTPUT_LIMIT = 64 * 1024  # bytes kept of stdout and of stderr each
MAX_TIMEOUT_SECONDS = 3600
DEFAULT_TTL_SECONDS = 3600


@dataclass(frozen=True)
class ExecRequestSpec:
    replica_set_name: str
    command: tuple[str, ...]
    working_dir: str | None = None
    env: tuple[EnvVar, ...] = ()
    timeout_seconds: int = 60
    ttl_seconds_after_finished: int = DEFAULT_TTL_SECONDS

    @classmethod
    def parse(cls, raw: RawDict) -> ExecRequestSpec:
        where = "spec"
        command = tuple(get_list(raw, "command", where, max_items=MAX_COMMAND_ITEMS))
        if not command or not all(isinstance(arg, str) for arg in command):
            raise SpecError("spec.command must be a non-empty list of strings")
        working_dir = get_optional_str(raw, "workingDir", where)
        if working_dir is not None and not working_dir.startswith("/"):
            raise SpecError("spec.workingDir must be an absolute path")
        return cls(
            replica_set_name=get_object_name(raw, "replicaSetName", where),
            command=command,
            working_dir=working_dir,
            env=parse_env(get_list(raw, "env", where, max_items=MAX_ENV_ITEMS)),
            timeout_seconds=get_int(raw, "timeoutSeconds", where, default=60, minimum=1,
                                    maximum=MAX_TIMEOUT_SECONDS),
            ttl_seconds_after_finished=get_int(raw, "ttlSecondsAfterFinished", where,
                                               default=DEFAULT_TTL_SECONDS, minimum=0),
        )
