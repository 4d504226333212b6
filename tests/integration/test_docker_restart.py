"""#28 item 13 against the real stack: Docker killed in the middle of the start of an
update's new container. containerd keeps the task of that start, so every later
start of the container fails with "task ... already exists"; the agent used to
retry it forever with the instance down. A container that never ran holds nothing of
the user's (its disk is the saved layer it was made from): the agent removes it and
makes it again, and the instance runs with the user's files."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import docker.errors
import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import containers

pytestmark = pytest.mark.timeout(300)
POINT = "StartRevision.layerCopied"  # created, the saved layer in, not started


def _shims_of(container_id: str) -> list[int]:
    """The containerd shims (and what they run) left for ``container_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"containerd-shim" in argv[0] and container_id.encode() in argv:
                found.append(int(entry.name))
    return found


def _parents() -> dict[int, int]:
    """Every process's parent."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _kill_shims(container_id: str) -> None:
    """The stale task's shim and everything under it (its `runc init` holds the
    container's mounts, and with them Docker's root, in a namespace of its own)."""
    doomed = set(_shims_of(container_id))
    parents = _parents()
    while True:
        below = {pid for pid, parent in parents.items() if parent in doomed} - doomed
        if not below:
            break
        doomed |= below
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_28_13_a_restart_of_docker_during_a_start_does_not_keep_the_instance_down(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    agent = start_agent()
    apply_spec(stack, namespace, "restart", "v1", gpus=1)
    wait_settled(stack, namespace, "restart", revision=1)
    touch_the_disk(stack, namespace, "before-restart", name="restart")
    agent.stop()
    agent = start_agent(extra_args=["--crash-at", POINT])
    apply_spec(stack, namespace, "restart", "v2", gpus=2)
    assert agent.wait_exit(90) == -signal.SIGKILL
    (created,) = [c for c in containers(stack, namespace) if c.status == "created"]
    stale = str(created.id)
    # The GPU runtime, for this start only: runc, except that its `start` (the task
    # is made by then) says where it is and waits, so Docker is killed right there.
    held = tmp_path / "held"
    holding = tmp_path / "holding-runc"
    holding.write_text(f"#!/bin/sh\ncase \" $* \" in *\" start \"*) echo $$ > {held}.tmp && "
                       f"mv {held}.tmp {held}; exec sleep 600;; esac\nexec /usr/sbin/runc \"$@\"\n")
    holding.chmod(0o755)
    try:
        stack.restart_dockerd(nvidia_runtime=str(holding))
        starting = threading.Thread(target=_start_quietly, args=(stack, stale))
        starting.start()
        wait_for(held.exists, 60, what="the start to reach runc's start")
        stack.restart_dockerd(kill=True)  # and the runtime as it was
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(held.read_text()), signal.SIGKILL)
        starting.join(30)
        client = stack.docker_client()
        with pytest.raises(docker.errors.APIError, match=r"already exists|already in use"):
            client.api.start(stale)  # what the agent meets: every start fails so
        client.close()
        start_agent()
        wait_settled(stack, namespace, "restart", revision=2, timeout=120)
        assert_disk_kept(stack, namespace, "before-restart", name="restart")
        running = only_container(stack, namespace, "restart")
        assert running.id != stale
        assert running.status == "running"
        events = stack.kubectl("get", "events", "-n", namespace, "-o",
                               "jsonpath={.items[*].reason}").stdout
        assert "Recreated" in events
    finally:
        if str(holding) in " ".join(stack.processes["dockerd"].argv):
            stack.restart_dockerd()  # the runtime as it was
        _kill_shims(stale)  # containerd keeps the stale task's shim: not the test's to leak


def _start_quietly(stack: LocalStack, container_id: str) -> None:
    """Docker's start of the container; its connection dies with Docker."""
    client = stack.docker_client()
    try:
        with contextlib.suppress(Exception):
            client.api.start(container_id)
    finally:
        client.close()
