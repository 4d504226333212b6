"""#13: a container's overlay2 writable layer carried into a new container as files
(adapters/overlay_layers.py), on the stack's real dockerd (overlay2 over ext4): every
kind of change a user makes to an image's files arrives exactly, through a handoff
from a stopped container and through a saved copy (what a rollback and a
Stopped -> Running start will use)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.models.containers
import pytest

from gpudock.adapters import file_data, overlay_layers, tree_copy
from tests.integration.revisions import sh
from tests.stack.filesystems import loop_mounted
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack

SPARSE_SIZE = 1 << 30
# The user's changes, each of a kind overlayfs stores differently in the upper dir.
CHANGES = " && ".join([
    "echo v1 > /root/marker && chmod 4750 /root/marker",  # a new file, setuid mode
    "rm /opt/sys.conf",  # a file of the image deleted: a whiteout
    "rm -rf /opt/app && mkdir /opt/app && echo new > /opt/app/new.txt",  # opaque dir
    "rm /opt/tool && ln -s /bin/busybox /opt/tool",  # a file replaced by a symlink
    "echo pair > /root/a && ln /root/a /root/b && chown 1234:5678 /root/a",  # hard links
    f"dd if=/dev/zero of=/root/sparse bs=1 count=0 seek={SPARSE_SIZE} 2>/dev/null",
    "echo end >> /root/sparse",  # 1 GiB, nearly all hole
])
XATTR = ("user.gpudock-test", b"kept")


class Containers:
    """The stack's dockerd, and the containers a test made there (removed after)."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.made: list[str] = []

    def created(self, image: str) -> docker.models.containers.Container:
        container = self.client.containers.create(image, ["sleep", "3600"])
        self.made.append(str(container.id))
        return container


@pytest.fixture
def node(stack: LocalStack) -> Iterator[Containers]:
    node = Containers(stack.docker_client())
    try:
        yield node
    finally:
        for container_id in node.made:
            node.client.api.remove_container(container_id, force=True)
        node.client.close()


def _base_image(client: docker.DockerClient) -> str:
    """An image with files under /opt for the user to delete, replace and relink."""
    setup = client.containers.run(BUSYBOX_IMAGE, [
        "sh", "-c", "mkdir -p /opt/app && echo a > /opt/app/old.txt && echo conf > "
        "/opt/sys.conf && cp /bin/busybox /opt/tool"], detach=True)
    setup.wait()
    tag = f"gpudock-test/layer-base:{uuid.uuid4().hex[:8]}"
    setup.commit(*tag.split(":"))
    setup.remove()
    return tag


def _upper(container: docker.models.containers.Container) -> Path:
    container.reload()
    upper = overlay_layers.writable_layer(container.attrs)
    assert upper is not None, container.attrs["GraphDriver"]
    return upper


def _assert_changes_kept(container: docker.models.containers.Container) -> None:
    assert sh(container, "cat /root/marker") == "v1\n"
    assert sh(container, "stat -c %a /root/marker") == "4750\n"
    assert sh(container, "test -e /opt/sys.conf && echo there || echo gone") == "gone\n"
    assert sh(container, "ls -A /opt/app") == "new.txt\n"  # the image's old.txt hidden
    assert sh(container, "readlink /opt/tool") == "/bin/busybox\n"
    inodes = sh(container, "stat -c '%i %h %u:%g' /root/a /root/b").splitlines()
    assert inodes[0] == inodes[1]
    assert inodes[0].split()[1:] == ["2", "1234:5678"]
    size, blocks = sh(container, "stat -c '%s %b' /root/sparse").split()
    assert int(size) == SPARSE_SIZE + 4
    assert int(blocks) * 512 < 1 << 20  # still sparse: under 1 MiB on disk
    assert sh(container, "tail -c 4 /root/sparse") == "end\n"
    assert os.getxattr(_upper(container) / "root" / "marker", XATTR[0]) == XATTR[1]


def test_a_writable_layer_handed_over_and_restored_keeps_every_kind_of_change(
    node: Containers, tmp_path: Path,
) -> None:
    image = _base_image(node.client)
    old = node.created(image)
    old.start()
    sh(old, CHANGES)
    old.stop(timeout=0)
    os.setxattr(_upper(old) / "root" / "marker", *XATTR)

    # An update: a new container of the same image gets the stopped one's layer.
    new = node.created(image)
    overlay_layers.copy_layer(_upper(old), _upper(new))
    tree_copy.verify_copy(_upper(old), _upper(new))  # every byte, not only sizes
    new.start()
    _assert_changes_kept(new)
    sh(new, "echo v2 > /root/marker")
    new.stop(timeout=0)

    # A Stopped -> Running start (or a rollback): the layer saved, then restored into
    # a container made later.
    saved = tmp_path / "saved" / "rev-2"
    overlay_layers.save_layer(_upper(new), saved)
    tree_copy.verify_copy(_upper(new), saved)
    later = node.created(image)
    overlay_layers.copy_layer(saved, _upper(later))
    later.start()
    assert sh(later, "cat /root/marker") == "v2\n"
    sh(later, "echo v1 > /root/marker")  # back to the first state for the checks
    _assert_changes_kept(later)
    # The old container's layer was only read.
    assert (_upper(old) / "root" / "marker").read_text() == "v1\n"
    assert not list(saved.parent.glob(f"*{overlay_layers.STAGING_SUFFIX}"))
    node.client.images.remove(image, force=True)


def test_a_layer_is_never_copied_over_a_container_that_ran(
    node: Containers, tmp_path: Path,
) -> None:
    ran = node.created(BUSYBOX_IMAGE)
    ran.start()
    sh(ran, "echo mine > /root/own")
    ran.stop(timeout=0)
    source = tmp_path / "other"
    (source / "root").mkdir(parents=True)
    (source / "root" / "own").write_text("theirs\n")
    with pytest.raises(overlay_layers.LayerCopyError, match="not empty"):
        overlay_layers.copy_layer(source, _upper(ran))
    assert (_upper(ran) / "root" / "own").read_text() == "mine\n"
    with pytest.raises(overlay_layers.LayerCopyError, match="exists already"):
        overlay_layers.save_layer(source, _upper(ran))


def test_a_layer_docker_does_not_keep_on_overlay2_is_not_reachable() -> None:
    assert overlay_layers.writable_layer({"GraphDriver": {"Name": "vfs", "Data": None}}) \
        is None
    assert overlay_layers.writable_layer({"GraphDriver": {"Name": "overlay2", "Data": {
        "UpperDir": "/nonexistent/diff"}}}) is None


@pytest.mark.parametrize("mkfs", [["mkfs.btrfs", "-q"], ["mkfs.xfs", "-q", "-m", "reflink=1"]],
                         ids=["btrfs", "xfs"])
def test_on_xfs_and_btrfs_saves_and_handoffs_share_blocks(
    tmp_path: Path, mkfs: list[str],
) -> None:
    """What the handoff writes where Docker's root is XFS or btrfs: reflinked copies,
    so saving a layer and putting it into a new container cost metadata, not the
    size of the user's files (on ext4 they cost a copy of the files changed)."""
    with loop_mounted(tmp_path, mkfs, "2G") as root:
        assert file_data.shares_blocks(root)
        upper = root / "upper"
        (upper / "root").mkdir(parents=True)
        big = upper / "root" / "weights.bin"
        big.write_bytes(os.urandom(1 << 20) * 256)  # 256 MiB
        (upper / "root" / "marker").write_text("v1\n")
        first, second, handed = root / "rev-1", root / "rev-2", root / "new-upper"
        overlay_layers.save_layer(upper, first)
        (upper / "root" / "marker").write_text("v2\n")  # the next revision's change
        used = _used_bytes(root)
        overlay_layers.save_layer(upper, second, previous=first)
        handed.mkdir()
        overlay_layers.copy_layer(second, handed)
        grew = _used_bytes(root) - used
        print(f"{mkfs[0]}: saving and handing over a 256 MiB layer wrote {grew >> 20} MiB")
        assert grew < 32 << 20, f"{grew >> 20} MiB written for a 256 MiB layer"
        for copy in (second, handed):
            tree_copy.verify_copy(upper, copy)
        for copy in (first, second, handed):
            assert (copy / "root" / "weights.bin").stat().st_nlink == 1  # not hard links
        assert (handed / "root" / "marker").read_text() == "v2\n"
        assert (first / "root" / "marker").read_text() == "v1\n"


def _used_bytes(mount: Path) -> int:
    subprocess.run(["sync", "-f", str(mount)], check=True)
    info = os.statvfs(mount)
    return (info.f_blocks - info.f_bfree) * info.f_frsize
