"""The machine-wide changes a stack makes, and how each is undone.

A real node changes sysctls, iptables rules, cgroups and host directories
(tests/stack/node.py). Each change is written to the node's journal *before* it is
made, so it can be undone by the stack's own ``stop()`` or, when the process that ran
the stack was killed outright and no teardown ran, by the next stack's start
(tests/stack/reclaim.py), which reads the journal back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MachineChanges:
    journal: Path
    sysctls: dict[str, str] = field(default_factory=dict)  # key -> the value before
    rules: list[list[str]] = field(default_factory=list)  # iptables chain + rule spec
    cgroups: list[str] = field(default_factory=list)  # directories made in cgroupfs
    made_dirs: list[str] = field(default_factory=list)  # host directories made

    @classmethod
    def load(cls, journal: Path) -> MachineChanges | None:
        """The changes a journal records; None when there is none (no node ran)."""
        try:
            recorded = json.loads(journal.read_text())
        except (OSError, ValueError):
            return None
        return cls(journal, dict(recorded["sysctls"]), [list(r) for r in recorded["rules"]],
                   list(recorded["cgroups"]), list(recorded["made_dirs"]))

    def write(self) -> None:
        """Record the changes (call it before making the one just added)."""
        staged = self.journal.with_suffix(".tmp")
        staged.write_text(json.dumps({"sysctls": self.sysctls, "rules": self.rules,
                                      "cgroups": self.cgroups,
                                      "made_dirs": self.made_dirs}))
        staged.replace(self.journal)

    def undo(self) -> None:
        """Undo every recorded change (once no process of the node is left): cgroups
        deepest first, sysctls to their values before, rules, host directories."""
        for cgroup in sorted(self.cgroups, key=lambda p: len(Path(p).parts), reverse=True):
            remove_cgroup_tree(Path(cgroup))
        for key, value in self.sysctls.items():
            subprocess.run(["sysctl", "-q", "-w", f"{key}={value}"], check=False)
        for rule in self.rules:
            subprocess.run(["iptables", "-D", *rule], check=False, capture_output=True)
        for made in self.made_dirs:
            shutil.rmtree(made, ignore_errors=True)
        self.sysctls, self.rules, self.cgroups, self.made_dirs = {}, [], [], []
        if self.journal.parent.is_dir():
            self.write()


def cgroup_mount_points() -> list[Path]:
    """Where each cgroup hierarchy (v1 and the unified one) is mounted."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = {line.split(" - ")[0].split()[4] for line in mountinfo
                  if line.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")}
    return [Path(point) for point in sorted(points)]


def remove_cgroup_tree(cgroup: Path) -> None:
    """rmdir a cgroup and its children, deepest first (a cgroup's files cannot be
    removed, only its directory once it has no process and no child)."""
    if not cgroup.is_dir():
        return
    children = sorted((Path(root) for root, _, _ in os.walk(cgroup)),
                      key=lambda p: len(p.parts), reverse=True)
    for child in children:
        with contextlib.suppress(OSError):
            child.rmdir()


def release_mounts_and_loops(base_dir: Path) -> None:
    """Unmount everything under ``base_dir`` (deepest first), detach its loop devices."""
    prefix = f"{base_dir}/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    listing = subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True,
                             check=False).stdout
    for device in json.loads(listing or '{"loopdevices": []}').get("loopdevices", []):
        if str(device.get("back-file") or "").startswith(prefix):
            subprocess.run(["losetup", "-d", device["name"]], check=False,
                           capture_output=True)
