"""Builds the fake libnvidia-ml.so.1 (tests/fake_nvml/fake_nvml.c) with gcc."""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "fake_nvml" / "fake_nvml.c"


def build_fake_nvml(out_dir: Path) -> Path:
    """Compile the library into ``out_dir``; returns its path."""
    library = out_dir / "libnvidia-ml.so.1"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wall", "-Werror", "-Wl,-soname,libnvidia-ml.so.1",
         "-o", str(library), str(SOURCE)],
        check=True, capture_output=True,
    )
    return library
