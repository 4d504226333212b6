"""Regression tests for what the chaos soak found (docs/reliability.md#soak), each
named after the finding."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import kopf
import pytest

from gpudock.adapters import container_events
from gpudock.adapters.docker.errors import HostPortBusyError, StaleTaskError
from gpudock.agent import migration_leftovers, migration_receiver
from gpudock.agent.handlers import node as node_handlers
from gpudock.core.observed import ImageInfo
from gpudock.core.revision import Revision, layer_let_go
from gpudock.scheduler import handlers as scheduler_handlers
from gpudock.scheduler import kopf_login
from gpudock.settings import SchedulerSettings
from tests.unit.fakes.node import Node

HOME = "/docker/gpudock/layers/u"


def _record(revision: int, **kw: Any) -> Revision:
    base: dict[str, Any] = dict(
        namespace="soak", name="box", revision=revision, uid="u", spec={"image": "img"},
        image="img", container_name=f"soak_box-{revision}", gpus=(), ports=(),
        created_at="t")
    return Revision(**{**base, **kw})


def test_a_revision_resumed_twice_lets_go_of_the_layer_its_first_container_came_from(
        ) -> None:
    # Stopped and started twice (or migrated there and back): the record's `layer`
    # moves from the first saved disk to the second one; the first was named by no
    # record any more and stayed on disk past the history limit and after a Purge.
    before = _record(4, layer=f"{HOME}/rev-4-first", saved_layer=f"{HOME}/rev-4-second")
    after = _record(4, layer=f"{HOME}/rev-4-second", saved_layer=f"{HOME}/rev-4-second")
    assert layer_let_go(before, after, [_record(3, saved_layer=f"{HOME}/rev-3"), after]) \
        == f"{HOME}/rev-4-first"


def test_a_migrated_revision_lets_go_of_the_copy_of_its_starting_layer() -> None:
    before = _record(4, layer=f"{HOME}/migrated-migrated-rev-4-a",
                     saved_layer=f"{HOME}/migrated-rev-4-b")
    after = _record(4, layer=f"{HOME}/migrated-rev-4-b", saved_layer=f"{HOME}/migrated-rev-4-b")
    assert layer_let_go(before, after, [after]) == f"{HOME}/migrated-migrated-rev-4-a"


def test_a_layer_another_record_still_names_is_kept() -> None:
    # Revision 5 was a rollback to 2: it started from revision 2's saved disk, which
    # stays revision 2's.
    before = _record(5, layer=f"{HOME}/rev-2", saved_layer=f"{HOME}/rev-5")
    after = _record(5, layer=f"{HOME}/rev-5", saved_layer=f"{HOME}/rev-5")
    assert layer_let_go(before, after, [_record(2, saved_layer=f"{HOME}/rev-2"), after]) \
        is None


def test_a_new_revision_or_the_same_layer_lets_go_of_nothing() -> None:
    after = _record(6, layer=f"{HOME}/rev-5")
    assert layer_let_go(None, after, [after]) is None
    assert layer_let_go(after, after, [after]) is None


# --------------------------------------------------------------------------------------
def _port_stuck_for(node: Node, monkeypatch: pytest.MonkeyPatch, container_id: str,
                    ) -> list[str]:
    """Docker refuses every start of that one container: its host port is "already
    allocated" (by Docker itself, after a start cut short by a restart of Docker)."""
    starts: list[str] = []
    real = node.docker.start

    def start(cid: str, name: str) -> None:
        if cid == container_id:
            starts.append(cid)
            raise HostPortBusyError(
                f"start {name}: driver failed programming external connectivity on "
                f"endpoint {name}: Bind for 0.0.0.0:40000 failed: port is already "
                "allocated", 40000)
        real(cid, name)
    monkeypatch.setattr(node.docker, "start", start)
    return starts


def test_a_never_started_container_whose_port_docker_kept_allocated_is_made_again(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    # The soak: dockerd restarted in the middle of a revision's start; the new dockerd
    # refused every later start of that container (port already allocated), the
    # instance stayed HostPortInUse, and each retry started it 64 times in a second.
    node.apply("box", gpus=1, state="Paused", ports=[{"containerPort": 8000}])
    node.settle("box")
    created = node.only_container("box")
    assert created.status == "created"
    starts = _port_stuck_for(node, monkeypatch, created.id)
    node.apply("box", gpus=1, ports=[{"containerPort": 8000}])
    status = node.settle("box")
    assert status["phase"] == "Running", status
    again = node.only_container("box")
    assert (again.id != created.id, again.status) == (True, "running")
    assert starts == [created.id]
    assert "Recreated" in node.reasons("box")


def test_a_container_that_ran_whose_port_is_held_is_started_once_per_reconcile(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.apply("box", gpus=1, ports=[{"containerPort": 8000}])
    assert node.settle("box")["phase"] == "Running"
    container = node.only_container("box")
    node.docker.stop(container.id, container.name)  # behind the agent's back
    starts = _port_stuck_for(node, monkeypatch, container.id)
    node.reconcile("box")
    assert len(starts) == 1   # not once per port of the range (64)
    assert node.only_container("box").id == container.id   # its disk is the user's
    assert node.condition("box", "Degraded")["reason"] == "HostPortInUse"


def test_a_container_that_ran_and_whose_start_containerd_refuses_is_saved_and_made_again(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    # The soak: dockerd SIGKILLed while the agent started an instance's container;
    # containerd kept the task of that start and refused every later one ("task ...:
    # already exists"); the container had run, so the agent left it down for good.
    node.apply("box", gpus=1)
    assert node.settle("box")["phase"] == "Running"
    container = node.only_container("box")
    container.files["/root/installed-by-user"] = b"v1"
    node.docker.stop(container.id, container.name)
    starts: list[str] = []
    real = node.docker.start

    def start(cid: str, name: str) -> None:
        if cid == container.id:
            starts.append(cid)
            raise StaleTaskError(f"start {name}: containerd kept a task of it from a "
                                 f"start cut short by a restart of Docker: task {cid}: "
                                 "already exists")
        real(cid, name)
    monkeypatch.setattr(node.docker, "start", start)
    status = node.settle("box")
    assert (status["phase"], status["revision"]) == ("Running", 1), status
    again = node.only_container("box")
    assert (again.id != container.id, again.status) == (True, "running")
    assert again.files["/root/installed-by-user"] == b"v1"
    assert starts == [container.id]


class _OpenUntilClosed:
    """A stream of no event that stays open until the cache closes it."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.closed.wait()
        return iter(())

    def close(self) -> None:
        self.closed.set()


def test_every_resource_looks_again_when_dockers_event_stream_is_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The soak: after a restart of dockerd an instance stayed Ready=True with no
    # running container for 16 s and more (settled resources are looked at up to 4
    # resyncs apart, and the stops came while the stream was broken: no event).
    monkeypatch.setattr(container_events, "RECONNECT_SECONDS", 0.0)
    opened: list[int] = []
    back = threading.Event()

    def events() -> Iterable[dict[str, Any]]:
        opened.append(len(opened))
        if len(opened) == 1:
            return iter(())   # the first stream ends: dockerd went away
        return _OpenUntilClosed()   # the second one stays open

    cache = container_events.ContainerCache(events)
    cache.follow(lambda _uid: None, back.set)
    try:
        assert back.wait(5)
    finally:
        cache.close()


def test_kopf_retries_an_api_server_away_for_longer_than_a_minute() -> None:
    # The soak: the kube-apiserver stopped for 30-60 s, then answering 403 for a while
    # (its RBAC not loaded yet): kopf's default retries (8, 54 s in all) ran out, the
    # watches gave up and each agent's kopf stopped for good.
    settings = kopf.OperatorSettings()
    kopf_login.retry_the_api_server(settings)
    backoffs = settings.networking.error_backoffs
    assert not isinstance(backoffs, (int, float))
    assert not hasattr(backoffs, "__len__")
    first = list(itertools.islice(iter(backoffs), 50))
    again = list(itertools.islice(iter(backoffs), 50))   # afresh for every request
    assert first == again
    assert first[:8] == [1, 1, 2, 3, 5, 8, 13, 21]
    assert sum(first) > 600
    assert max(first) <= 30


def test_an_agent_whose_stop_hangs_exits_anyway(monkeypatch: pytest.MonkeyPatch) -> None:
    # The soak: kopf stopped (its watches gave up), but a blocked worker thread kept
    # the process alive for good: no liveness endpoint, no exit for a supervisor.
    exits: list[int] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        exited.set()
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    node_handlers.exit_if_stuck(0.01)
    assert exited.wait(5)
    assert exits == [1]


def test_a_migration_whose_records_the_target_could_not_keep_leaves_no_empty_layers_dir(
        tmp_path: Path) -> None:
    """The soak (etcd_stop, seed 2027): the target received the trees, its store.put
    failed, and the session removed the trees but left ``layers/<uid>/``, empty."""
    home = tmp_path / "layers"
    received = [home / "uid-1" / "migrated-rev-1-x", home / "uid-1" / "migrated-rev-1-x.pre"]
    for tree in received:
        (tree / "root").mkdir(parents=True)
        (tree / "root" / "file").write_text("bytes")
    kept = home / "uid-2" / "migrated-rev-3-y"
    (kept / "etc").mkdir(parents=True)
    own = home / "uid-2" / "rev-2"  # this node's own saved layer of another instance
    own.mkdir()
    migration_leftovers.drop_received([*received, kept])
    assert not (home / "uid-1").exists()
    assert [p.name for p in (home / "uid-2").iterdir()] == ["rev-2"]


def test_a_migration_never_moves_a_tag_that_names_another_image_on_its_target() -> None:
    """The soak (seed 2027, 06:10): within 4 s of a migration into node a, its test
    tags named node b's image IDs, and an instance of node a whose saved disk was over
    the old image stopped with ImageChanged. The target now refuses such a load
    before the source stops."""
    here = {"img:1": ImageInfo(id="sha256:" + "a" * 64),
            "other:2": ImageInfo(id="sha256:" + "c" * 64)}
    wanted = [{"image": "img:1", "id": "sha256:" + "b" * 64},      # the tag names a here
              {"image": "other:2", "id": "sha256:" + "c" * 64},    # the same image
              {"image": "new:3", "id": "sha256:" + "d" * 64}]      # not here: loaded
    moved = migration_receiver.tags_it_would_move(wanted, here.get)
    assert moved == [f"img:1 names sha256:{'a' * 12}, not sha256:{'b' * 12}"]


class _Follower:
    """A LeaderElector that never gets the Lease; counts what the loop asks of it."""

    def __init__(self) -> None:
        self.steps = 0
        self.asked = 0

    def step(self) -> bool:
        self.steps += 1
        return False

    @property
    def leading(self) -> bool:
        self.asked += 1
        return False


def test_an_agent_that_does_not_lead_the_scheduler_does_not_spin_on_the_fleets_changes(
        ) -> None:
    # The soak's SQLite node (the follower) used 70-90% of a core: every watch event
    # sets the cache's wake, which only a leader's pass clears, and the follower
    # waited on it: at once, again and again (thousands of turns a second).
    scheduler = scheduler_handlers.Scheduler(SchedulerSettings("soak-b"))
    scheduler.cache.wake.set()
    follower = _Follower()

    async def never(_: Any) -> None:
        raise AssertionError("a follower never schedules")

    async def for_a_while() -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(scheduler_handlers._elect_and_schedule(
                scheduler, cast(Any, follower), never), timeout=1.0)

    asyncio.run(for_a_while())
    assert follower.steps == 1       # one try of the Lease (every RETRY_SECONDS)
    assert follower.asked <= 4, follower.asked
    assert scheduler.cache.wake.is_set()   # kept for when it leads


def test_a_docker_client_that_cannot_connect_leaves_no_unclosed_socket(
        tmp_path: Path) -> None:
    # The suite's soak failed with "Exception ignored in: <socket.socket fd=24,
    # family=1, ...>: ResourceWarning: unclosed": docker-py's failed connect to a
    # dockerd being restarted left its socket to the garbage collector. The stack
    # closes it (tests/stack/docker_sockets.py); warnings are errors in the suite,
    # so a leaked socket fails this test when the collector finds it.
    import tests.stack  # noqa: F401  (the stack's clients, as every stack test has them)

    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as bound:   # bound, not listening: refused
        bound.bind(str(path))
        for _ in range(3):
            with pytest.raises(docker.errors.DockerException):
                docker.DockerClient(base_url=f"unix://{path}", timeout=5)
        gc.collect()
