"""The host's storage tools (mkfs, resize2fs, losetup, btrfs, xfs_quota, rsync, ...)
run as the agent's children: their failures become VolumeToolError, a transient
error that names the tool and what it said. Used by the volume backends and the
tree copies of saved disks alike."""

from __future__ import annotations

import subprocess

from gpudock.api.reasons import Reason
from gpudock.errors import TransientError


class VolumeToolError(TransientError):
    reason = Reason.VOLUME_BACKEND_FAILED


def run_tool(*argv: str, timeout: float = 600, ok: tuple[int, ...] = (0,)) -> str:
    """Run a storage tool; its output, or VolumeToolError with what it said. The tool
    dies with the agent (as it would with the agent's pod): a tool left running by a
    killed agent would race the restarted agent's recovery of the same volume."""
    try:
        done = subprocess.run(["setpriv", "--pdeathsig", "KILL", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeToolError(f"{argv[0]}: {exc}") from exc
    if done.returncode not in ok:
        raise VolumeToolError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout
