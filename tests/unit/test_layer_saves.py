"""Saved copies of a writable layer share unchanged files with the previous one
(overlay_layers.save_layer), on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpudock.adapters import overlay_layers, tree_copy


def _layer(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
    return root


def test_a_save_links_what_did_not_change_and_copies_what_did(tmp_path: Path) -> None:
    first = _layer(tmp_path / "upper-1", {"big": b"x" * 2**20, "conf": b"old!"})
    overlay_layers.save_layer(first, tmp_path / "saved" / "rev-1")
    # The next revision's layer: "big" untouched; "conf" rewritten with its old size
    # and time (only its bytes tell), a hard-link pair added.
    second = _layer(tmp_path / "upper-2", {"big": b"x" * 2**20, "conf": b"new!"})
    os.link(second / "conf", second / "conf-link")
    overlay_layers.save_layer(second, tmp_path / "saved" / "rev-2",
                              previous=tmp_path / "saved" / "rev-1")
    one, two = tmp_path / "saved" / "rev-1", tmp_path / "saved" / "rev-2"
    assert os.stat(two / "big").st_ino == os.stat(one / "big").st_ino  # shared
    assert (two / "conf").read_bytes() == b"new!"
    assert (one / "conf").read_bytes() == b"old!"  # the earlier save is untouched
    assert os.stat(two / "conf").st_ino == os.stat(two / "conf-link").st_ino
    tree_copy.verify_copy(second, two)  # every byte, mode, time and link of the layer
    assert not list((tmp_path / "saved").glob(f"*{overlay_layers.STAGING_SUFFIX}"))


def test_a_link_to_a_file_outside_the_tree_is_not_a_difference(tmp_path: Path) -> None:
    alone = _layer(tmp_path / "alone", {"f": b"body"})
    linked = _layer(tmp_path / "linked", {})
    os.link(alone / "f", linked / "f")  # nlink 2, but the other link is elsewhere
    assert tree_copy.manifest(linked) == tree_copy.manifest(_layer(
        tmp_path / "copy", {"f": b"body"}))


def test_a_save_never_replaces_an_earlier_one(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "upper", {"f": b"1"})
    overlay_layers.save_layer(layer, tmp_path / "rev-1")
    with pytest.raises(overlay_layers.LayerCopyError, match="exists already"):
        overlay_layers.save_layer(_layer(tmp_path / "other", {"f": b"2"}), tmp_path / "rev-1")
    assert (tmp_path / "rev-1" / "f").read_bytes() == b"1"
