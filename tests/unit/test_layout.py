"""The repository layout: `operator/` holds only the gpudock package and never shadows
the standard library's `operator` module, even when Python runs from the repo root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_folder_holds_only_the_gpudock_package() -> None:
    # egg-info is the editable install's build output (git-ignored), not the layout.
    entries = sorted(p.name for p in (REPO / "operator").iterdir()
                     if p.name != "__pycache__" and not p.name.endswith(".egg-info"))
    assert entries == ["gpudock"]
    assert (REPO / "operator" / "gpudock" / "__init__.py").is_file()
    assert (REPO / "operator" / "gpudock" / "py.typed").is_file()


def test_standard_library_operator_wins_from_the_repo_root() -> None:
    probe = "import operator, sys; print(operator.__file__); print(operator.itemgetter)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, check=True)
    module_file = result.stdout.splitlines()[0]
    assert not module_file.startswith(str(REPO)), module_file
    assert "itemgetter" in result.stdout


def test_the_package_and_its_command_are_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "gpudock", "--version"], cwd="/",
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip().startswith("gpudock ")
