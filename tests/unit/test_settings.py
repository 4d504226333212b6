from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gpudock.core.gpu_attach import NvidiaRuntime
from gpudock.settings import (
    GpuBackend,
    PortRange,
    Settings,
    SettingsError,
    settings_from,
)
from gpudock.settings_flags import add_agent_arguments


def _parse(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return settings_from(parser.parse_args(argv), env or {})


def test_defaults() -> None:
    settings = _parse(["--node-name", "n1"])
    assert settings.gpu_backend is GpuBackend.NVML
    assert settings.gpu_attach == NvidiaRuntime()
    assert settings.port_range == PortRange(40000, 65535)
    assert settings.allowed_host_paths == ()
    assert settings.store_url == "sqlite:/var/lib/gpudock/revisions.sqlite3"
    assert (settings.max_running_requests, settings.max_running_execs_per_namespace) == (32, 8)
    assert settings.commit_repository_template == "gpudock.invalid/{namespace}/"


def test_environment_fills_what_flags_leave_out_and_flags_win() -> None:
    env = {"GPUDOCK_NODE_NAME": "from-env", "GPUDOCK_GPU_BACKEND": "simulated",
           "GPUDOCK_SIMULATED_GPUS": "3", "GPUDOCK_ALLOWED_HOST_PATHS": "/srv/a:/srv/b",
           "GPUDOCK_STATE_DIR": "/tmp/x", "GPUDOCK_PORT_RANGE": "41000-41010"}
    settings = _parse(["--node-name", "from-flag"], env)
    assert settings.node_name == "from-flag"
    assert settings.gpu_backend is GpuBackend.SIMULATED
    assert settings.simulated_gpus == 3
    assert settings.allowed_host_paths == ("/srv/a", "/srv/b")
    assert settings.state_dir == Path("/tmp/x")
    assert 41005 in settings.port_range
    assert 41011 not in settings.port_range


@pytest.mark.parametrize(("argv", "message"), [
    (["--port-range", "5-1"], "port range"),
    (["--port-range", "abc"], "port range"),
    (["--allowed-host-path", "relative"], "clean absolute path"),
    (["--store", "redis://x"], "sqlite:PATH or etcd://"),
    (["--simulated-gpus", "-1"], "simulated-gpus"),
    (["--max-image-layers", "121"], "between 1 and 120"),
    (["--max-running-requests", "0"], "--max-running-requests must be >= 1"),
    (["--max-running-execs-per-namespace", "0"], "--max-running-execs-per-namespace must"),
    (["--crash-at", "PreserveDisk.middle"], "unknown crash point 'PreserveDisk.middle'"),
    (["--commit-repository-template", "{namespace}/"], "must start with a registry host"),
    (["--commit-repository-template", "gpudock.invalid/"], "must hold {namespace} once"),
    (["--commit-repository-template", "gpudock.invalid/{namespace}"], 'must end with "/"'),
    (["--commit-repository-template", "reg.example/X{namespace}/"], "Docker does not take"),
])
def test_bad_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _parse(["--node-name", "n1", *argv])


def test_crash_points_come_from_flags_or_the_environment() -> None:
    assert _parse(["--node-name", "n1"]).crash_at == ()
    env = {"GPUDOCK_CRASH_AT": "StopContainer.after:PreserveDisk.committed"}
    assert _parse(["--node-name", "n1"], env).crash_at == (
        "StopContainer.after", "PreserveDisk.committed")
    assert _parse(["--node-name", "n1", "--crash-at", "WriteSpec.before"], env).crash_at == (
        "WriteSpec.before",)


def test_request_limits_come_from_flags_or_the_environment() -> None:
    env = {"GPUDOCK_MAX_RUNNING_EXECS_PER_NAMESPACE": "2", "GPUDOCK_MAX_RUNNING_REQUESTS": "3"}
    settings = _parse(["--node-name", "n1"], env)
    assert (settings.max_running_requests, settings.max_running_execs_per_namespace) == (3, 2)
    flagged = _parse(["--node-name", "n1", "--max-running-execs-per-namespace", "4"], env)
    assert flagged.max_running_execs_per_namespace == 4
