"""#28 items 9-11: trees a tenant wrote cannot break the node's handling of them. On
real files under tmp_path: a sparse terabyte is measured by its blocks (9), a hole and
written zeros are the same content and a layer that cannot be saved whole is refused,
never committed (10), and a tree 5000 directories deep is walked, copied, checked and
removed without recursion (11). tests/integration/test_tenant_trees.py shows each
against the real stack."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from gpudock.adapters import overlay_layers, tree_copy, user_trees
from gpudock.adapters.host_tools import VolumeToolError
from gpudock.agent.disk_saves import FAILED_SAVE_RETRY, SAVE_MARGIN, DiskSaves
from gpudock.api.reasons import Reason
from gpudock.core.revision import Revision
from gpudock.crash_points import CrashPoints
from gpudock.errors import UserError
from tests.unit.fakes.node import Node, agent_settings

TiB = 2**40
MiB = 2**20
DEPTH = 5000


def _sparse(path: Path, size: int, tail: bytes = b"") -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(size)
        handle.write(tail)
    return path


def _deep(root: Path, depth: int = DEPTH, name: str = "d") -> None:
    """``root/d/d/.../d/bottom`` (``depth`` directories: its path is far beyond
    PATH_MAX), made one name at a time."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        bottom = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(bottom, b"at the bottom")
        os.close(bottom)
        os.link("bottom", "bottom-link", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def _bottom(root: Path, depth: int = DEPTH) -> bytes:
    fd = user_trees.open_dir(os.open(root, os.O_RDONLY | os.O_DIRECTORY), ["d"] * depth)
    try:
        handle = os.open("bottom", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(handle, 100)
        finally:
            os.close(handle)
    finally:
        os.close(fd)


class _Docker:
    """What DiskSaves asks of Docker for a layer save, over a real directory."""

    def __init__(self, root: Path, upper: Path) -> None:
        (root / "overlay2").mkdir(parents=True)
        self.root, self.upper = root, upper
        self.free: int | None = 10 * 2**30
        self.apparent = 0  # Docker's SizeRw: apparent sizes
        self.calls: list[str] = []

    def storage(self) -> tuple[str, str]:
        return "overlay2", str(self.root)

    def writable_layer_dir(self, container_id: str) -> str | None:
        return str(self.upper)

    def writable_layer_bytes(self, container_id: str) -> int:
        return self.apparent

    def free_bytes(self) -> int | None:
        return self.free

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
        return call


class _Store:
    def __init__(self) -> None:
        self.records: list[Revision] = []

    def put(self, record: Revision) -> None:
        self.records.append(record)


@pytest.fixture
def saves(tmp_path: Path) -> tuple[DiskSaves, _Docker, list[float]]:
    upper = tmp_path / "upper"
    upper.mkdir()
    docker = _Docker(tmp_path / "docker", upper)
    now = [1000.0]
    settings = agent_settings(tmp_path / "state", 1, "--disk-saves", "layer")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return (DiskSaves(settings, cast(Any, docker), cast(Any, _Store()),
                      CrashPoints(()), clock=lambda: now[0]), docker, now)


def _record() -> Revision:
    return Revision(namespace="team-a", name="box", revision=1, uid="u", spec={},
                    image="img", container_name="team-a_box-1", gpus=(), ports=(),
                    created_at="", change_cause="", generation=1)


# ------------------------------------------------- 9: what a tree holds, not its sizes
def test_item9_a_tree_is_measured_by_its_blocks_not_its_apparent_sizes(
        tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    _sparse(tree / "terabyte", TiB, b"tail")
    (tree / "data").write_bytes(os.urandom(MiB))
    os.link(tree / "data", tree / "data-link")  # counted once
    measured = user_trees.tree_bytes(tree)
    assert MiB <= measured < 2 * MiB


def test_item9_the_save_check_counts_the_layers_blocks(
        saves: tuple[DiskSaves, _Docker, list[float]]) -> None:
    disks, docker, _ = saves
    _sparse(docker.upper / "terabyte", TiB, b"tail")
    docker.apparent = TiB + 4  # what Docker says (SizeRw): refused on that count
    docker.free = 2**30
    disks.check_room("c1", "box")  # a layer copy keeps the hole: it fits
    (docker.upper / "data").write_bytes(os.urandom(8 * MiB))
    docker.free = SAVE_MARGIN + MiB
    with pytest.raises(UserError) as refused:
        disks.check_room("c1", "box")
    assert refused.value.reason is Reason.DISK_FULL


def test_item9_a_commit_is_checked_by_the_apparent_size_it_writes(
        tmp_path: Path, saves: tuple[DiskSaves, _Docker, list[float]]) -> None:
    disks, docker, _ = saves
    _sparse(docker.upper / "terabyte", TiB)
    docker.apparent = TiB
    disks._settings = agent_settings(tmp_path / "state", 1, "--disk-saves", "commit")
    with pytest.raises(UserError, match="needs about"):  # a commit fills the hole
        disks.check_room("c1", "box")


# ---------------------------------------------------- 10: zeros, holes, no fallback
def test_item10_a_hole_and_written_zeros_are_the_same_content(tmp_path: Path) -> None:
    dense, holey = tmp_path / "dense", tmp_path / "holey"
    for tree in (dense, holey):
        tree.mkdir()
    (dense / "f").write_bytes(bytes(3 * MiB) + b"tail")
    _sparse(holey / "f", 3 * MiB, b"tail")
    assert os.stat(dense / "f").st_blocks > os.stat(holey / "f").st_blocks
    os.utime(holey / "f", ns=(os.stat(dense / "f").st_atime_ns,
                              os.stat(dense / "f").st_mtime_ns))
    tree_copy.verify_copy(dense, holey)  # the same bytes
    with open(holey / "f", "r+b") as handle:  # one byte differs inside the hole
        handle.seek(MiB + 5)
        handle.write(b"x")
    os.utime(holey / "f", ns=(os.stat(dense / "f").st_atime_ns,
                              os.stat(dense / "f").st_mtime_ns))
    with pytest.raises(VolumeToolError, match="differs at 'f'"):
        tree_copy.verify_copy(dense, holey)


def test_item10_a_copy_keeps_zero_runs_holes_and_xattrs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "zeros").write_bytes(bytes(2 * MiB) + b"x" + bytes(MiB))
    _sparse(source / "sparse", TiB, b"end")
    os.setxattr(source / "zeros", "user.origin", b"kept")
    os.setxattr(source, "trusted.overlay.opaque", b"y")
    os.mkfifo(source / "fifo", 0o604)
    os.mknod(source / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
    os.symlink("zeros", source / "link")
    saved = tmp_path / "saved" / "rev-1"
    overlay_layers.save_layer(source, saved)
    tree_copy.verify_copy(source, saved)  # every byte too
    assert os.getxattr(saved / "zeros", "user.origin") == b"kept"
    assert os.getxattr(saved, "trusted.overlay.opaque") == b"y"
    assert os.stat(saved / "sparse").st_blocks * 512 < MiB
    assert (saved / "zeros").read_bytes() == (source / "zeros").read_bytes()
    assert stat.S_ISCHR(os.lstat(saved / "whiteout").st_mode)


def test_item10_a_layer_save_that_fails_is_refused_never_committed(
        saves: tuple[DiskSaves, _Docker, list[float]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    disks, docker, now = saves
    (docker.upper / "f").write_bytes(b"x")

    def broken(*_: Any, **__: Any) -> None:
        raise overlay_layers.LayerCopyError("the copy differs at 'f'")

    monkeypatch.setattr(overlay_layers, "save_layer", broken)
    layer = str(docker.root / "gpudock" / "layers" / "u" / "rev-1-c1")
    with pytest.raises(UserError) as refused:
        disks.save(cast(Any, None), "c1", "box-1", "gpudock-preserved/x:rev-1", _record(),
                   layer, None)
    assert refused.value.reason is Reason.DISK_SAVE_FAILED
    assert "differs at 'f'" in refused.value.message
    assert docker.calls == ["start"]  # the instance runs on; nothing was committed
    # Not stopped again for the same failure at every pass...
    with pytest.raises(UserError) as again:
        disks.check_room("c1", "box-1")
    assert again.value.reason is Reason.DISK_SAVE_FAILED
    now[0] += FAILED_SAVE_RETRY + 1  # ... but tried again later
    disks.check_room("c1", "box-1")


# ---------------------------------------------------------- 11: 5000 levels deep
def test_item11_a_5000_deep_tree_is_walked_copied_checked_and_removed(
        tmp_path: Path) -> None:
    source = tmp_path / "source"
    _deep(source)
    assert sys.getrecursionlimit() < DEPTH  # recursion would fail here
    assert user_trees.tree_bytes(source) >= DEPTH * 4096
    saved = tmp_path / "layers" / "rev-1"
    overlay_layers.save_layer(source, saved)
    tree_copy.verify_copy(source, saved)
    assert _bottom(saved) == b"at the bottom"
    handed = tmp_path / "upper"
    handed.mkdir()
    overlay_layers.copy_layer(saved, handed)
    assert _bottom(handed) == b"at the bottom"
    fd = user_trees.open_dir(os.open(handed, os.O_RDONLY), ["d"] * DEPTH)
    try:
        assert os.stat("bottom", dir_fd=fd).st_ino == os.stat("bottom-link", dir_fd=fd).st_ino
        os.unlink("bottom-link", dir_fd=fd)
    finally:
        os.close(fd)
    with pytest.raises(VolumeToolError, match=r"differs at '\.\.\./.*(5001 levels deep)"):
        tree_copy.verify_copy(saved, handed, content=False)
    assert overlay_layers.remove_saved(saved, tmp_path / "layers")
    user_trees.remove_tree(handed)
    user_trees.remove_tree(source)
    assert [p for p in (saved, handed, source) if p.exists()] == []


def test_item11_removal_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"x")
    tree = tmp_path / "tree"
    _deep(tree, 50)
    os.symlink(outside, tree / "d" / "escape")
    user_trees.remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_bytes() == b"x"


def test_item9_a_delete_never_removes_a_disk_it_could_not_save(node: Node) -> None:
    """No room for a real save (not a sparse file's): the container and its files
    stay, and the delete is tried again; nothing is removed unsaved."""
    node.apply("box", "first", gpus=2)
    assert node.settle("box")["phase"] == "Running"
    node.docker.free = 2**20  # no room for any save
    with pytest.raises(UserError) as refused:
        node.delete("box")
    assert refused.value.reason == Reason.DISK_FULL
    assert len(node.containers("box")) == 1


def test_item11_a_walk_never_goes_where_a_change_under_it_leads(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "x").mkdir(parents=True)
    (tree / "b" / "c").mkdir(parents=True)
    (tree / "b" / "c" / "f").write_bytes(b"f")
    seen: list[tuple[str, str]] = []

    def walk() -> None:
        for step in user_trees.walk(tree):
            seen.append((type(step).__name__, step.name))
            if step.name == "a" and isinstance(step, user_trees.Entry):
                # replaced by a symlink before the walk goes in: not followed
                (tree / "a" / "x").rmdir()
                (tree / "a").rmdir()
                (tree / "a").symlink_to(tmp_path)
            if step.name == "f":  # the directory the walk is in moved elsewhere
                (tree / "b" / "c").rename(tree / "moved")

    with pytest.raises(OSError, match="moved during the walk"):
        walk()
    assert seen == [("Entry", "a"), ("Leave", "a"), ("Entry", "b"), ("Entry", "c"),
                    ("Entry", "f")]
