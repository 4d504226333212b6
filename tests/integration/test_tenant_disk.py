"""#28 item 4 against the real stack: an update counts inodes as well as bytes before
anything stops. A tenant that used every inode of Docker's root cannot leave another
tenant's instance stopped with no new container. Test names carry the item."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.integration.test_security import _wait_reason
from tests.stack.localstack import LocalStack
from tests.stack.resources import containers, status

pytestmark = pytest.mark.timeout(300)
LEFT = 300  # inodes left free: fewer than the instance's layer and a new container need


def test_28_4_an_update_without_inodes_keeps_the_instance_running(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    if os.statvfs(stack.docker_root).f_files == 0 or stack.docker_root_fs != "ext4":
        pytest.skip("Docker's root has no fixed number of inodes to use up")
    start_agent(extra_args=["--resync-seconds", "2"])
    apply_spec(stack, namespace, "inodes", "v1", gpus=1)
    wait_settled(stack, namespace, "inodes", revision=1)
    touch_the_disk(stack, namespace, "before-inodes", name="inodes")
    # What the user installed: 2000 small files (a Python package or two).
    sh(only_container(stack, namespace, "inodes"),
       "mkdir -p /root/pkg && cd /root/pkg && for i in $(seq 2000); do : > f$i; done")
    before = only_container(stack, namespace, "inodes").id
    filler = stack.docker_root / "gpudock-test-inodes"  # another tenant's files
    filler.mkdir()
    try:
        fd = os.open(filler, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(os.statvfs(stack.docker_root).f_favail - LEFT):
                os.close(os.open(str(i), os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        finally:
            os.close(fd)
        apply_spec(stack, namespace, "inodes", "v2", gpus=2)
        message = _wait_reason(stack, namespace, "inodes", "DiskFull")
        assert "inodes" in message
        assert "the instance keeps running" in message
        (container,) = containers(stack, namespace)
        assert container.id == before
        assert container.status == "running"
        assert status(stack, namespace, "inodes")["phase"] == "Running"
    finally:
        shutil.rmtree(filler)
    wait_settled(stack, namespace, "inodes", revision=2)  # inodes again: it goes on
    assert_disk_kept(stack, namespace, "before-inodes", name="inodes")
    count = sh(only_container(stack, namespace, "inodes"), "ls /root/pkg | wc -l").strip()
    assert count == "2000"
