"""Checks of one setting's value each: its flag's (or variable's) text to the value
the settings hold, or a SettingsError that names the flag (settings.py reads them)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from gpudock.api.container_limits import DOCKER_MIN_MEMORY, parse_cpu, parse_memory
from gpudock.core.limits import LimitDefaults
from gpudock.errors import SpecError


class SettingsError(ValueError):
    """A flag or variable has a value the agent cannot use."""


def instance_metrics_on(value: str | None, hide_holder_names: bool) -> bool:
    named = on_off(value, "--instance-metrics")
    if named and hide_holder_names:
        raise SettingsError("--instance-metrics names instances in metrics, which "
                            "--hide-holder-names hides: set one of them")
    return named


def probe_period(value: str | None) -> float:
    seconds = float(value or 0)
    if seconds < 0:
        raise SettingsError("--gpu-access-probe-seconds must be 0 (off) or > 0")
    return seconds


def probe_command(value: str | None) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(value or "nvidia-smi -L"))
    except ValueError as exc:
        raise SettingsError(f"--gpu-access-probe-command: {exc}") from exc
    if not words:
        raise SettingsError("--gpu-access-probe-command must not be empty")
    return words


def positive(value: str | None, default: float, flag: str) -> float:
    number = float(value) if value else default
    if number <= 0:
        raise SettingsError(f"{flag} must be > 0")
    return number


def migration_values(pick: Callable[[str], str | None]) -> dict[str, Any]:
    """The migration flags (#23), checked."""
    port = int(pick("transfer_port") or 9465)
    if not 0 <= port <= 65535:
        raise SettingsError("--transfer-port must be a port (0: any free one)")
    bandwidth = int(pick("migration_bandwidth") or 0)
    if bandwidth < 0:
        raise SettingsError("--migration-bandwidth must be >= 0 (0: unlimited)")
    outbound = int(pick("max_outbound_migrations") or 2)
    if outbound < 1:
        raise SettingsError("--max-outbound-migrations must be >= 1")
    wait = float(pick("migration_target_wait") or 300.0)
    if wait < 0:
        raise SettingsError("--migration-target-wait must be >= 0 (0: fail at once)")
    hold = float(pick("migration_hold_seconds") or 10.0)
    if not 0 <= hold < math.inf:  # (nan too)
        raise SettingsError("--migration-hold-seconds must be a finite number >= 0")
    return {"transfer_address": pick("transfer_address") or "", "transfer_port": port,
            "migration_bandwidth": bandwidth, "max_outbound_migrations": outbound,
            "migration_target_wait": wait, "migration_hold_seconds": hold}


def one_of(value: str, choices: Sequence[str], flag: str) -> str:
    if value not in choices:
        raise SettingsError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    return value


def per_gpu_defaults(cpu: str | None, memory: str | None, shm: str | None) -> LimitDefaults:
    try:
        defaults = LimitDefaults(parse_cpu(cpu or "0", "--cpus-per-gpu"),
                                 parse_memory(memory or "0", "--memory-per-gpu"),
                                 parse_memory(shm or "0", "--shm-per-gpu"))
    except SpecError as exc:
        raise SettingsError(exc.message) from exc
    if 0 < defaults.memory_per_gpu < DOCKER_MIN_MEMORY:
        raise SettingsError("--memory-per-gpu must be 0 (none) or at least 6Mi, Docker's "
                            "minimum")
    if 0 < defaults.cpu_per_gpu < 10:
        raise SettingsError("--cpus-per-gpu must be 0 (none) or at least 10m, Docker's "
                            "minimum")
    return defaults


def port_or_off(value: str | None, flag: str) -> int:
    port = int(value or 0)
    if not 0 <= port <= 65535:
        raise SettingsError(f"{flag} must be 0 (off) or a port")
    return port


def on_off(value: str | None, flag: str) -> bool:
    """An on/off setting: the flag given (``True``), or its variable's value."""
    word = (value or "false").lower()
    if word not in ("true", "1", "yes", "false", "0", "no"):
        raise SettingsError(f"{flag} (its variable) must be true or false, not {value!r}")
    return word in ("true", "1", "yes")
