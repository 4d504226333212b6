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


def loop_mounted(base_dir: Path, mkfs: list[str], size: str = "1G",
                 ) -> contextlib.AbstractContextManager[Path]:
    """A new filesystem (``mkfs`` and its options) of ``size`` on an image file and a
    mount point of their own under ``base_dir``."""
    name = f"fs-{uuid.uuid4().hex[:8]}"
    return loop_mounted_at(base_dir / f"{name}.img", base_dir / name, mkfs, size)


@contextlib.contextmanager
def loop_mounted_at(image: Path, mount: Path, mkfs: list[str], size: str,
                    ) -> Iterator[Path]:
    """``mkfs`` on a sparse ``image`` of ``size``, loop-mounted at ``mount`` (made if
    missing, removed after if it was made here); unmounted and the image removed when
    the context ends, also after a failure."""
    made = not mount.exists()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    try:
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        mount.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        try:
            yield mount
        finally:
            _unmount(mount)
    finally:
        image.unlink(missing_ok=True)
        if made:
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
