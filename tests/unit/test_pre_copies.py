"""An update's disk with one copy made while the instance runs (#23 item 6):
overlay_layers.pre_copy_layer, then save_layer taking over what did not change, then
hand_over of the stopped container's own layer; on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpudock.adapters import overlay_layers, tree_copy
from tests.unit.test_layer_saves import _layer


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test count as at rest at once (in use, a file changed in
    the last second is copied again: tested below without this)."""
    monkeypatch.setattr(tree_copy, "RACY_NS", -10**12)


@pytest.mark.usefixtures("settled")
def test_the_save_after_a_pre_copy_copies_what_changed_and_is_exact(tmp_path: Path) -> None:
    upper = _layer(tmp_path / "upper", {"big": b"x" * 2**20, "same": b"s" * 4096,
                                        "conf": b"old!", "gone": b"g", "dir/deep": b"d",
                                        "mode": b"m", "attr": b"a"})
    os.link(upper / "big", upper / "big-link")
    saved = tmp_path / "layers" / "rev-1"
    pre = overlay_layers.pre_copy_layer(upper, saved)
    assert pre.root.is_dir()
    assert not saved.exists()
    # While it "runs": rewritten with its old size and mtime (only ctime tells), a file
    # deleted, one added, a mode and an xattr changed, a hard link added.
    times = os.stat(upper / "conf")
    (upper / "conf").write_bytes(b"new!")
    os.utime(upper / "conf", ns=(times.st_atime_ns, times.st_mtime_ns))
    (upper / "gone").unlink()
    (upper / "dir" / "added").write_bytes(b"added")
    os.chmod(upper / "mode", 0o600)
    os.setxattr(upper / "attr", "user.note", b"1")
    os.link(upper / "same", upper / "same-link")
    overlay_layers.save_layer(upper, saved, pre_copy=pre)
    tree_copy.verify_copy(upper, saved)  # every byte, mode, owner, xattr and link
    assert (saved / "conf").read_bytes() == b"new!"
    assert not (saved / "gone").exists()
    assert os.stat(saved / "big").st_ino == os.stat(saved / "big-link").st_ino
    assert os.stat(saved / "same").st_ino == os.stat(saved / "same-link").st_ino
    # Taken over: big (one inode, two names) and dir/deep; "same" changed its link
    # count (a ctime change) and is copied again like the other changed files.
    assert pre.reused == 2
    assert not pre.root.exists()


def test_a_file_changed_in_the_last_second_is_never_taken_over(tmp_path: Path) -> None:
    upper = _layer(tmp_path / "upper", {"fresh": b"1234"})
    saved = tmp_path / "layers" / "rev-1"
    pre = overlay_layers.pre_copy_layer(upper, saved)
    assert pre.states == {}  # its ctime is within RACY_NS of the read
    overlay_layers.save_layer(upper, saved, pre_copy=pre)
    assert pre.reused == 0
    tree_copy.verify_copy(upper, saved)


@pytest.mark.usefixtures("settled")
def test_a_pre_copy_of_another_tree_takes_nothing_over(tmp_path: Path) -> None:
    """A state noted is an inode's: a file made anew at the same path, same size and
    bytes, is a new inode and is copied."""
    upper = _layer(tmp_path / "upper", {"f": b"body"})
    saved = tmp_path / "layers" / "rev-1"
    pre = overlay_layers.pre_copy_layer(upper, saved)
    (upper / "f").unlink()
    (upper / "f").write_bytes(b"BODY")
    overlay_layers.save_layer(upper, saved, pre_copy=pre)
    assert pre.reused == 0
    assert (saved / "f").read_bytes() == b"BODY"


def test_the_stopped_containers_layer_is_handed_over_only_when_it_is_what_was_saved(
        tmp_path: Path) -> None:
    upper = _layer(tmp_path / "old" / "diff", {"f": b"1", "d/g": b"2"})
    saved = tmp_path / "layers" / "rev-1"
    overlay_layers.save_layer(upper, saved)
    new = tmp_path / "new" / "diff"
    new.mkdir(parents=True)
    (upper / "f").write_bytes(b"12")  # changed after the save: not handed over
    with pytest.raises(overlay_layers.LayerCopyError, match="differs at 'f'"):
        overlay_layers.hand_over(upper, saved, new)
    assert (upper / "f").read_bytes() == b"12"
    assert not overlay_layers.filled(new)
    (upper / "f").write_bytes(b"1")
    os.utime(upper / "f", ns=(os.stat(saved / "f").st_atime_ns,
                              os.stat(saved / "f").st_mtime_ns))
    overlay_layers.hand_over(upper, saved, new)
    assert not upper.exists()  # moved, not copied
    assert (new / "d" / "g").read_bytes() == b"2"
    tree_copy.verify_copy(saved, new)
    with pytest.raises(overlay_layers.LayerCopyError, match="not empty"):
        overlay_layers.hand_over(new, saved, new)
