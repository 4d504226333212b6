"""Loop-mounted filesystems for the tests of the volume backends (btrfs here; this
machine's kernel has btrfs with quotas). Each is a sparse image file under the
stack's directory; the mount uses a loop device of its own that the unmount frees,
and teardown removes both, also after a failed test."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def loop_mounted(base_dir: Path, mkfs: list[str], size: str = "1G") -> Iterator[Path]:
    name = f"fs-{uuid.uuid4().hex[:8]}"
    image, mount = base_dir / f"{name}.img", base_dir / name
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    try:
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        mount.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        try:
            yield mount
        finally:
            _unmount(mount)
    finally:
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mount.rmdir()


def _unmount(mount: Path) -> None:
    """Unmount (a container being removed may hold it a moment longer)."""
    for _ in range(30):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def btrfs(base_dir: Path) -> contextlib.AbstractContextManager[Path]:
    return loop_mounted(base_dir, ["mkfs.btrfs", "-q"])
