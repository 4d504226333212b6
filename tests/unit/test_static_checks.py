"""ruff, mypy --strict and the import-linter contracts (the pure core imports no kopf,
docker, pynvml, aetcd or kubernetes) are part of the suite, so CI enforces them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import gpudock

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff_is_clean() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "operator", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict_is_clean() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold() -> None:
    lint_imports = str(Path(sys.executable).parent / "lint-imports")
    result = _run(lint_imports, "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def _named_in_contracts() -> tuple[set[str], set[str]]:
    """The modules the contracts name, and the containers they name."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    named: set[str] = set()
    containers: set[str] = set()
    for contract in config["tool"]["importlinter"]["contracts"]:
        inside = contract.get("containers") or [""]
        containers.update(c for c in inside if c)
        for key in ("source_modules", "forbidden_modules", "modules"):
            named.update(contract.get(key) or ())
        for layer in contract.get("layers") or ():
            for part in layer.split("|"):
                named.update(f"{c}.{part.strip()}" if c else part.strip() for c in inside)
    return named, containers


def test_every_module_has_its_place_in_an_import_contract() -> None:
    """A new module is named by a contract, itself or the package it belongs to; in a
    package whose contract lists its modules (a container), by that list. So the
    architecture says where each module sits, and lint-imports holds it there."""
    named, containers = _named_in_contracts()
    unplaced = []
    for module in (m.name for m in pkgutil.walk_packages(gpudock.__path__, "gpudock.")):
        parts = module.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts), 1, -1)]
        nearest = next((a for a in ancestors if a in named), None)
        if nearest is None or (nearest != module and nearest in containers):
            unplaced.append(module)
    assert unplaced == []
