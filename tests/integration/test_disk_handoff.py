"""#13: an instance's disk carried through an update, a rollback and a Stopped ->
Running cycle by the agent, on the stack's real dockerd (overlay2 over ext4): with the
writable-layer handoff (the default, --disk-saves layer) and with the commit fallback
forced (--disk-saves commit), every kind of change a user makes to an image's files
arrives exactly (contents, owners, modes, whiteouts, an opaque directory, a symlink,
a hard-link pair, a 1 GiB sparse file's size and data; with the handoff also an xattr
and the file's holes, which docker commit's archive does not keep: docs/revisions.md,
"What is not kept")."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import docker.models.containers
import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    only_container,
    saved_layers,
    sh,
    wait_settled,
)
from tests.integration.test_overlay_layers import CHANGES, SPARSE_SIZE, XATTR, _base_image
from tests.stack.localstack import IDLE_COMMAND, LocalStack, wait_for
from tests.stack.resources import grs

# What the user's changes look like from inside: names, types, modes, owners, sizes,
# link counts, contents (the sparse file by its size and tail: reading 1 GiB of holes
# four times would only cost time).
FINGERPRINT = """
for f in /root/marker /root/a /root/b /opt/app /opt/app/new.txt /opt/app/old.txt \
         /opt/tool /opt/sys.conf /root/sparse; do
  if [ -e "$f" ] || [ -L "$f" ]; then stat -c '%n %F %a %u:%g %s %h' "$f"
  else echo "$f absent"; fi
done
md5sum /root/marker /root/a /opt/app/new.txt
[ /root/a -ef /root/b ] && echo "a and b are one file"
readlink /opt/tool
if [ -e /root/big ]; then md5sum /root/big; fi
tail -c 4 /root/sparse
"""


def _fingerprint(container: docker.models.containers.Container) -> str:
    return sh(container, FINGERPRINT)


def _merged(container: docker.models.containers.Container, path: str) -> Path:
    """A path of the running container's filesystem, seen from the host."""
    container.reload()
    return Path(f"/proc/{container.attrs['State']['Pid']}/root{path}")


def _blocks(container: docker.models.containers.Container) -> int:
    return int(sh(container, "stat -c %b /root/sparse"))


def _saved_images(stack: LocalStack, namespace: str) -> list[str]:
    client = stack.docker_client()
    try:
        return [t for i in client.images.list() for t in i.tags
                if t.startswith(f"gpudock-preserved/{namespace}_box:")]
    finally:
        client.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("saves", ["layer", "commit"])
def test_the_disk_survives_update_rollback_and_stop_start_exactly(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, saves: str,
) -> None:
    carry_through_rollouts(stack, namespace, start_agent, saves)


def carry_through_rollouts(stack: LocalStack, namespace: str, start_agent: AgentFactory,
                           saves: str, big_file_mib: int = 0) -> int:
    """Make the changes in revision 1, then update, roll back, stop and start, and
    check each revision's container has them exactly. With ``big_file_mib``, also a
    file of that much random data. Returns how many bytes Docker's root filesystem
    gained across the update (its used space after less before)."""
    client = stack.docker_client()
    image = _base_image(client)
    client.close()
    start_agent(gpus=2, extra_args=["--disk-saves", saves])
    spec = {"image": image, "command": IDLE_COMMAND}
    apply_spec(stack, namespace, "box", "first", gpus=1, **spec)
    wait_settled(stack, namespace, "box", revision=1)
    first = only_container(stack, namespace, "box")
    sh(first, CHANGES)
    if big_file_mib:
        sh(first, f"dd if=/dev/urandom of=/root/big bs=1M count={big_file_mib} "
                  "2>/dev/null && sync")
    os.setxattr(_merged(first, "/root/marker"), *XATTR)
    kept = _fingerprint(first)
    assert "/opt/sys.conf absent" in kept
    assert "/opt/app/old.txt absent" in kept
    assert f"/root/sparse regular file 644 0:0 {SPARSE_SIZE + 4} 1" in kept

    def assert_kept(revision: int) -> docker.models.containers.Container:
        container = only_container(stack, namespace, "box")
        assert container.labels["gpudock.dev/revision"] == str(revision)
        assert _fingerprint(container) == kept
        if saves == "layer":  # docker commit's archive drops user.* xattrs, fills holes
            assert os.getxattr(_merged(container, "/root/marker"), XATTR[0]) == XATTR[1]
            assert _blocks(container) * 512 < 1 << 20
        return container

    # An update: a new container, the same files.
    used_before = _used_bytes(stack.docker_root)
    apply_spec(stack, namespace, "box", "two GPUs", gpus=2, **spec)
    wait_settled(stack, namespace, "box", revision=2)
    gained = _used_bytes(stack.docker_root) - used_before
    second = assert_kept(2)
    assert second.id != first.id
    sh(second, "echo v2 > /root/marker && rm /root/b")  # revision 2's own changes

    # A rollback to revision 1: its disk as it was saved, without revision 2's changes.
    stack.kubectl("patch", "grs", "box", "-n", namespace, "--type=merge", "-p",
                  '{"spec": {"rollbackTo": {"revision": 1}}}')
    wait_for(lambda: "rollbackTo" not in grs(stack, namespace, "box")["spec"], 120,
             what="rollbackTo cleared")
    wait_settled(stack, namespace, "box", revision=3)
    assert_kept(3)

    # Stopped, then Running: the container is gone in between, the disk is not.
    apply_spec(stack, namespace, "box", "stop", gpus=1, state="Stopped", **spec)
    wait_settled(stack, namespace, "box", phase="Stopped", revision=3)
    apply_spec(stack, namespace, "box", "start", gpus=1, state="Running", **spec)
    wait_settled(stack, namespace, "box", revision=3)
    assert_kept(3)

    mine = saved_layers(stack, grs(stack, namespace, "box")["metadata"]["uid"])
    if saves == "layer":  # no image was committed; the saved layers are directories
        assert _saved_images(stack, namespace) == []
        assert sorted(p.name.split("-")[1] for p in mine) == ["1", "2", "3"]
    else:
        assert _saved_images(stack, namespace)
        assert mine == []
    return gained


def _used_bytes(path: Path) -> int:
    os.sync()
    info = os.statvfs(path)
    return (info.f_blocks - info.f_bfree) * info.f_frsize


@pytest.mark.timeout(300)
def test_an_update_copies_the_disk_once_while_it_runs_and_moves_the_layer_itself(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    """#23 item 6: the save is made while the instance serves (files unchanged since
    are not copied again after the stop), and the new container gets the old one's
    own writable layer by rename: the same directory inode, the saved copy apart."""
    start_agent(gpus=2)
    apply_spec(stack, namespace, "box", "first", gpus=1)
    wait_settled(stack, namespace, "box", revision=1)
    old = only_container(stack, namespace, "box")
    sh(old, "mkdir -p /root && head -c 33554432 /dev/urandom > /root/data && "
            "echo kept > /root/note && md5sum /root/data > /root/data.md5")
    upper = Path(old.attrs["GraphDriver"]["Data"]["UpperDir"])
    layer_inode = upper.stat().st_ino
    wait_for(lambda: all(time.time_ns() - os.stat(p).st_ctime_ns > 1_200_000_000
                         for p in (upper / "root" / "data", upper / "root" / "note")),
             10, interval=0.1, what="the files' ctime older than the second a pre-copy "
             "does not trust")
    apply_spec(stack, namespace, "box", "more GPUs", gpus=2)
    wait_settled(stack, namespace, "box", revision=2)
    new = only_container(stack, namespace, "box")
    assert new.id != old.id
    new_upper = Path(new.attrs["GraphDriver"]["Data"]["UpperDir"])
    assert new_upper.stat().st_ino == layer_inode  # moved, not copied
    assert sh(new, "cat /root/note").strip() == "kept"
    sh(new, "md5sum -c /root/data.md5")
    (saved,) = saved_layers(stack, grs(stack, namespace, "box")["metadata"]["uid"])
    assert (saved / "root" / "data").stat().st_ino != (new_upper / "root" / "data").stat().st_ino
    assert (saved / "root" / "data").read_bytes() == (new_upper / "root" / "data").read_bytes()
    events = json.loads(stack.kubectl("get", "events", "-n", namespace, "-o",
                                      "json").stdout)["items"]
    saves = [e["message"] for e in events if e.get("reason") == "DiskSaved"]
    assert any("copied while it ran, unchanged since" in m for m in saves), saves
