"""The volume backends' seam keeps its promise: a new backend is one module and one
line in adapters/volumes/registry.py. The backend of volume_backend_example.py (a
module that lives only under tests/) is added to the table in one line, then opened
by name through open_volume_backend() and driven through a SizedVolume's life by the
VolumeReconciler itself (create, attach, grow, shrink, move, delete), against a fake
Docker and a real SQLite revision store. Nothing else is told of it: the agent's
--volume-backend flag takes its name too."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, cast

import pytest

from gpudock.adapters.sqlite_revisions import SqliteRevisionStore
from gpudock.adapters.volumes import registry
from gpudock.adapters.volumes.registry import open_volume_backend
from gpudock.agent.node_locks import NodeLocks
from gpudock.agent.volume_reconciler import VolumeReconciler
from gpudock.core.observed import ObservedContainer
from gpudock.core.ports import ContainerRuntime
from gpudock.errors import UserError
from gpudock.settings import SettingsError, settings_from
from gpudock.settings_flags import add_agent_arguments
from tests.unit.volume_backend_example import DirectoryBackend, MovingDirectoryBackend

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]
VOLUMES = REPO / "operator" / "gpudock" / "adapters" / "volumes"


class FakeDocker:
    """What the VolumeReconciler asks of Docker: its volumes and containers."""

    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, str]] = {}  # name -> driver options

    def list_containers(self) -> list[ObservedContainer]:
        return []

    def volume_exists(self, name: str) -> bool:
        return name in self.volumes

    def create_volume(self, name: str, options: dict[str, str],
                      extra_labels: dict[str, str] | None = None) -> None:
        self.volumes.setdefault(name, options)

    def remove_volume(self, name: str) -> None:
        self.volumes.pop(name, None)


def _body(size: str, generation: int, uid: str = "0123456789abcdef") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "data", "uid": uid,
                         "generation": generation},
            "spec": {"nodeName": "n1", "size": size}}


@pytest.fixture
def docker() -> FakeDocker:
    return FakeDocker()


def _reconciler(name: str, tmp_path: Path, docker: FakeDocker) -> VolumeReconciler:
    return VolumeReconciler(name, tmp_path / "volumes", cast(ContainerRuntime, docker),
                            SqliteRevisionStore(tmp_path / "revisions.sqlite3"),
                            lambda: "2024-01-01T00:00:00Z",
                            locks=NodeLocks(tmp_path / "volume-locks"))


def _ready(reconciler: VolumeReconciler, size: str, generation: int) -> dict[str, Any]:
    status = reconciler.reconcile(_body(size, generation), lambda _status: None)
    assert status["phase"] == "Ready", status
    return status


def test_a_backend_added_in_one_line_serves_a_volume_through_its_life(
        tmp_path: Path, docker: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "example", DirectoryBackend)  # the one line
    reconciler = _reconciler("example", tmp_path, docker)

    status = _ready(reconciler, "64Mi", 1)
    backend = reconciler.backend("example", str(tmp_path / "volumes"))
    assert isinstance(backend, DirectoryBackend)  # made by the table, by name
    ident = status["volumeName"]
    assert status["backend"] == "example"
    assert status["sizeBytes"] == 64 * MiB
    assert backend.calls == [("create", ident), ("attach", ident)]
    assert docker.volumes == {ident: {"type": "none", "o": "bind",
                                      "device": str(backend.path(ident))}}

    assert _ready(reconciler, "128Mi", 2)["sizeBytes"] == 128 * MiB  # grow: online
    assert _ready(reconciler, "32Mi", 3)["sizeBytes"] == 32 * MiB  # shrink: online too
    assert [c for c, _ in backend.calls[2:]] == ["resize_online", "minimum_bytes",
                                                 "resize_online"]
    assert [r["sizeBytes"] for r in _ready(reconciler, "32Mi", 3)["history"]] == [
        64 * MiB, 128 * MiB, 32 * MiB]

    assert reconciler.delete(_body("32Mi", 3)) == []
    assert backend.calls[-1] == ("delete", ident)
    assert docker.volumes == {}
    assert not backend.path(ident).exists()
    # A new volume of the same name (a new UID) starts again at revision 1.
    again = reconciler.reconcile(_body("32Mi", 1, uid="fedcba9876543210"), lambda _s: None)
    assert again["revision"] == 1


def test_a_backend_that_moves_on_resize_gets_copy_from_the_protocol(
        tmp_path: Path, docker: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "example-moving", MovingDirectoryBackend)
    reconciler = _reconciler("example-moving", tmp_path, docker)
    first = _ready(reconciler, "64Mi", 1)["volumeName"]
    backend = reconciler.backend("example-moving", str(tmp_path / "volumes"))
    assert isinstance(backend, MovingDirectoryBackend)
    (backend.path(first) / "kept").write_text("data")

    moved = _ready(reconciler, "128Mi", 2)
    second = moved["volumeName"]
    assert second != first  # a new volume, whatever the backend is called
    assert ("copy", second) in backend.calls
    assert (backend.path(second) / "kept").read_text() == "data"
    assert moved["sizeBytes"] == 128 * MiB
    assert set(docker.volumes) == {second}  # the earlier one removed once unused
    assert not backend.path(first).exists()
    assert "resize_online" not in {c for c, _ in backend.calls}


def test_the_flag_takes_the_names_of_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(name: str) -> str:
        parser = argparse.ArgumentParser()
        add_agent_arguments(parser)
        args = parser.parse_args(["--node-name", "n1"])
        return settings_from(args, {"GPUDOCK_VOLUME_BACKEND": name}).volume_backend

    assert {parse(name) for name in ("loopfile", "btrfs", "xfs-quota", "copy")} == {
        "loopfile", "btrfs", "xfs-quota", "copy"}
    with pytest.raises(SettingsError):
        parse("example")
    monkeypatch.setitem(registry.BACKENDS, "example", DirectoryBackend)
    assert parse("example") == "example"


def test_a_name_not_in_the_table_is_refused(tmp_path: Path, docker: FakeDocker) -> None:
    with pytest.raises(UserError, match="not one of loopfile, btrfs, xfs-quota, copy"):
        open_volume_backend("example", tmp_path, cast(ContainerRuntime, docker))


def _package_imports(path: Path) -> set[str]:
    """The modules of gpudock.adapters.volumes a source file imports."""
    package = "gpudock.adapters.volumes"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            found |= {f"{package}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} if node.module.startswith(f"{package}.") else set()
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(f"{package}.")}
    return found


def test_backends_import_the_seam_only_and_only_the_table_imports_them() -> None:
    seam, table = "gpudock.adapters.volumes.base", "gpudock.adapters.volumes.registry"
    assert _package_imports(VOLUMES / "base.py") == set()
    for module in VOLUMES.glob("*.py"):
        if module.name != "registry.py":
            assert _package_imports(module) <= {seam}, module.name
    assert _package_imports(Path(__file__).with_name("volume_backend_example.py")) == {
        seam}
    for module in (REPO / "operator" / "gpudock").rglob("*.py"):
        if module.parent != VOLUMES:
            assert _package_imports(module) <= {seam, table}, module
