"""A SizedVolume's delete and a reconcile of it never interleave, and a reconcile
begun before the delete does not make again what the delete removed (the soak of
2026-12-07 found a btrfs subvolume, its qgroup, its Docker volume and its record left
on a node after the SizedVolume was gone: its daemon's resync had started just before
the delete). Against the VolumeReconciler with a directory backend, a fake Docker
and a real SQLite store."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gpudock.adapters.volumes import registry
from tests.unit.test_volume_backend_seam import FakeDocker, _body, _ready, _reconciler
from tests.unit.volume_backend_example import DirectoryBackend


@pytest.fixture
def docker() -> FakeDocker:
    return FakeDocker()


def test_a_reconcile_of_a_deleted_volume_makes_nothing_again(
        tmp_path: Path, docker: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "example", DirectoryBackend)
    reconciler = _reconciler("example", tmp_path, docker)
    ident = _ready(reconciler, "64Mi", 1)["volumeName"]
    backend = reconciler.backend("example", str(tmp_path / "volumes"))
    assert isinstance(backend, DirectoryBackend)
    assert reconciler.delete(_body("64Mi", 1)) == []
    # A late reconcile of the same volume (the body read before its deletion).
    reconciler.reconcile(_body("64Mi", 1), lambda _status: None)
    assert not backend.path(ident).exists()
    assert docker.volumes == {}
    assert list(reconciler._store.list_volume("ns", "data")) == []


def test_a_delete_waits_for_a_reconcile_under_way_then_removes_what_it_made(
        tmp_path: Path, docker: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "example", DirectoryBackend)
    reconciler = _reconciler("example", tmp_path, docker)
    in_step, go_on = threading.Event(), threading.Event()

    def held(_status: object) -> None:  # shown before its first step: the create
        in_step.set()
        assert go_on.wait(10)

    making = threading.Thread(target=reconciler.reconcile, args=(_body("64Mi", 1), held))
    making.start()
    assert in_step.wait(10)
    deleted: list[list[str]] = []
    deleting = threading.Thread(target=lambda: deleted.append(
        reconciler.delete(_body("64Mi", 1))))
    deleting.start()
    deleting.join(0.5)
    assert deleting.is_alive()  # waits for the reconcile under way
    go_on.set()
    making.join(10)
    deleting.join(10)
    assert deleted == [[]]
    backend = reconciler.backend("example", str(tmp_path / "volumes"))
    assert isinstance(backend, DirectoryBackend)
    assert [c for c, _ in backend.calls][-1] == "delete"
    assert docker.volumes == {}
    assert list(reconciler._store.list_volume("ns", "data")) == []
    assert not any((tmp_path / "volumes").iterdir())
