"""#14.1: the hostPath policy on a real directory tree (symlinks made with os.symlink)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.errors import UserError


def _reason(policy: HostPathPolicy, path: Path, read_only: bool = False) -> str:
    with pytest.raises(UserError) as caught:
        policy.resolve(str(path), namespace="ns", read_only=read_only)
    return caught.value.reason


def test_symlinks_at_any_level_are_followed_before_deciding(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "real").mkdir()
    outside.mkdir()
    os.symlink("/", root / "hostroot")
    os.symlink(outside, root / "a" / "b" / "out")
    os.symlink("../../../outside", root / "a" / "b" / "up")
    os.symlink(root / "real", root / "inside")
    policy = HostPathPolicy((str(root),))
    for path in (root / "hostroot", root / "hostroot" / "etc", root / "a" / "b" / "out",
                 root / "a" / "b" / "up"):
        assert _reason(policy, path) == "HostPathNotAllowed"
    assert policy.resolve(str(root / "inside"), namespace="ns", read_only=False) == \
        str(root / "real")
    assert _reason(policy, root / "not-yet") == "HostPathMissing"
    assert _reason(policy, tmp_path / "elsewhere") == "HostPathNotAllowed"


def test_a_root_that_is_itself_a_symlink_is_resolved_too(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data", tmp_path / "link")
    (tmp_path / "data" / "x").mkdir()
    policy = HostPathPolicy((str(tmp_path / "link"),))
    assert policy.resolve(str(tmp_path / "link" / "x"), namespace="ns", read_only=False) == \
        str(tmp_path / "data" / "x")


def test_read_only_roots_need_read_only_mounts(tmp_path: Path) -> None:
    (tmp_path / "rw" / "ro" / "set").mkdir(parents=True)
    policy = HostPathPolicy((str(tmp_path / "rw"),), (str(tmp_path / "rw" / "ro"),))
    target = tmp_path / "rw" / "ro" / "set"
    assert _reason(policy, target) == "HostPathReadOnly"  # the narrower root decides
    assert policy.resolve(str(target), namespace="ns", read_only=True) == str(target)
    assert policy.resolve(str(tmp_path / "rw"), namespace="ns", read_only=False) == \
        str(tmp_path / "rw")
