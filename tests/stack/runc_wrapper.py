"""runc, minus the capabilities this machine cannot grant.

These VMs run everything without CAP_SYS_RESOURCE in the bounding set, and Docker 20.10
gives a privileged container (the agent's pod) every capability the kernel knows, so
runc fails with "unable to apply caps: operation not permitted". The local stack's
dockerd, when it runs a node, uses this as its default runtime: before ``runc create``
it drops from the bundle's config.json the capabilities outside our own bounding set,
then runs runc with the same arguments. On a machine with every capability it changes
nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

# capability(7) numbers, in order.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)


def grantable() -> set[str]:
    status = Path("/proc/self/status").read_text()
    bounding = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("CapBnd:")), 16)
    return {f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1}


def trim_bundle(bundle: Path) -> None:
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    sets = config.get("process", {}).get("capabilities") or {}
    allowed = grantable()
    trimmed = {name: [c for c in caps if c in allowed] for name, caps in sets.items()}
    if trimmed != sets:
        config["process"]["capabilities"] = trimmed
        config_path.write_text(json.dumps(config))


def main(argv: list[str]) -> None:
    if "create" in argv or "run" in argv:
        for flag in ("--bundle", "-b"):
            if flag in argv[:-1]:
                trim_bundle(Path(argv[argv.index(flag) + 1]))
    runc = shutil.which("runc") or "/usr/sbin/runc"
    os.execv(runc, [runc, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
