"""#23: the VolumeReconciler's part in moving a SizedVolume with its instance
(migration_volumes.py): a fresh volume made on the target, the source's copy neither
reconciled nor its status written while it moves, handed over once the target serves
it, and a received tree put in place inside the volume. Against a directory backend,
a fake Docker and a real SQLite store; the move itself is tested on a real fleet
(tests/integration/test_migration_volumes.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpudock.adapters.volumes import registry
from gpudock.agent.migration_volumes import place, staging
from gpudock.core.observed import ResourceKey
from tests.unit.test_volume_backend_seam import FakeDocker, _body, _ready, _reconciler
from tests.unit.volume_backend_example import DirectoryBackend

KEY = ResourceKey("ns", "data")
UID = "0123456789abcdef"


@pytest.fixture(autouse=True)
def _example_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "example", DirectoryBackend)


def test_the_target_makes_a_fresh_volume_and_what_an_earlier_move_left_goes(
        tmp_path: Path) -> None:
    reconciler = _reconciler("example", tmp_path, FakeDocker())
    files = reconciler.make_arriving(_body("64Mi", 1))
    assert files.is_dir()
    assert reconciler.files("ns", "data", UID) == files
    (files / "left-by-a-failed-move").write_text("x")
    again = reconciler.make_arriving(_body("64Mi", 1))
    assert again == files
    assert list(again.iterdir()) == []
    assert _ready(reconciler, "64Mi", 1)["volumeName"]  # its own reconcile: nothing to do


def test_a_volume_being_moved_is_not_reconciled_nor_its_status_written(
        tmp_path: Path) -> None:
    reconciler = _reconciler("example", tmp_path, FakeDocker())
    _ready(reconciler, "64Mi", 1)
    reconciler.start_moving(KEY)
    assert not reconciler.served_here(KEY, UID)
    written: list[str] = []
    reconciler.while_served(KEY, UID, lambda: written.append("status"))
    assert written == []
    before = reconciler.backend("example", str(tmp_path / "volumes"))
    assert isinstance(before, DirectoryBackend)
    calls = list(before.calls)
    previous = {"phase": "Ready", "capacityBytes": 64 << 20}
    body = {**_body("128Mi", 2), "status": previous}
    assert reconciler.reconcile(body, lambda _status: None) == previous  # no resize
    assert before.calls == calls
    reconciler.stop_moving(KEY)  # the move failed: served here again
    assert reconciler.served_here(KEY, UID)
    assert _ready(reconciler, "128Mi", 2)["capacityBytes"] == 128 << 20


def test_a_handed_over_volume_goes_and_is_not_made_again_until_it_comes_back(
        tmp_path: Path) -> None:
    docker = FakeDocker()
    reconciler = _reconciler("example", tmp_path, docker)
    files = Path(str(reconciler.make_arriving(_body("64Mi", 1))))
    reconciler.start_moving(KEY)
    assert reconciler.hand_over("ns", "data", UID) == []
    assert not files.exists()
    assert docker.volumes == {}
    reconciler.reconcile(_body("64Mi", 1), lambda _status: None)  # a late resync
    assert not files.exists()
    assert docker.volumes == {}
    assert not reconciler.served_here(KEY, UID)
    assert reconciler.make_arriving(_body("64Mi", 1)).is_dir()  # moved back here later
    assert reconciler.served_here(KEY, UID)


def test_a_received_tree_becomes_the_volumes_content_with_its_roots_owner_and_mode(
        tmp_path: Path) -> None:
    files = tmp_path / "volume"
    (files / "lost+found").mkdir(parents=True)  # what mkfs made there
    incoming, precopy = staging(files).incoming, staging(files).precopy
    (incoming / "lost+found").mkdir(parents=True)
    (incoming / "sub").mkdir()
    (incoming / "sub" / "f").write_text("data")
    (precopy / "stale").mkdir(parents=True)
    os.chown(incoming, 1234, 5678)
    os.chmod(incoming, 0o751)
    os.utime(incoming, ns=(1_000_000_000, 2_000_000_000))
    place(files, incoming)
    assert sorted(os.listdir(files)) == ["lost+found", "sub"]
    assert (files / "sub" / "f").read_text() == "data"
    info = os.stat(files)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (1234, 5678, 0o751)
    assert info.st_mtime_ns == 2_000_000_000


def test_a_name_the_new_volume_has_already_is_never_overwritten(tmp_path: Path) -> None:
    files = tmp_path / "volume"
    files.mkdir()
    (files / "kept").write_text("here before")
    incoming = staging(files).incoming
    incoming.mkdir()
    (incoming / "kept").write_text("received")
    with pytest.raises(OSError, match="exists in a volume made for the move"):
        place(files, incoming)
    assert (files / "kept").read_text() == "here before"


def test_only_the_checked_tree_is_ever_put_in_place(tmp_path: Path) -> None:
    """The first pass's tree is never the volume's content (a mix-up of the two
    lost the files the final pass had reused from it: found by the fleet test)."""
    files = tmp_path / "volume"
    precopy = staging(files).precopy
    precopy.mkdir(parents=True)
    (precopy / "partial").write_text("first pass")
    with pytest.raises(OSError, match="is not the checked tree"):
        place(files, precopy)
    assert (precopy / "partial").exists()
