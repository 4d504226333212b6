"""#28 items 3 and 7, the pure parts: where a namespace's commits may write, the room
a commit needs, and the pipe between docker save and docker load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gpudock.adapters.docker.errors import DiskFullError, DockerUnavailableError
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.image_rewrite import PIPE_BYTES, BoundedPipe
from gpudock.agent import image_committer
from gpudock.agent.commit_room import MARGIN, needed_bytes
from gpudock.api.image_commit import DEFAULT_REPOSITORY_TEMPLATE, name_problem
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.settings import Settings

MiB = 2**20


@pytest.mark.parametrize("image", [
    "busybox:latest", "docker.io/library/busybox:latest", "team-a/knock:v1",
    "gpudock.invalid/team-b/knock:v1", "gpudock.invalid/team-a-b/knock:v1",
    "gpudock.invalid/team-aknock:v1", "evil.example/gpudock.invalid/team-a/x:v1",
])
def test_28_7_a_commit_may_not_write_outside_its_namespace_repository(image: str) -> None:
    problem = name_problem(image, DEFAULT_REPOSITORY_TEMPLATE, "team-a")
    assert problem is not None
    assert "gpudock.invalid/team-a/" in problem


@pytest.mark.parametrize("image", ["gpudock.invalid/team-a/knock:v1",
                                   "gpudock.invalid/team-a/tools/knock:2026-11-22"])
def test_28_7_a_commit_may_write_under_its_namespace_repository(image: str) -> None:
    assert name_problem(image, DEFAULT_REPOSITORY_TEMPLATE, "team-a") is None


def test_28_3_a_commit_needs_its_layer_dense_and_the_image_twice() -> None:
    # 30 GiB of sparse file (apparent size, written dense) over a 4 GiB image.
    gib = 2**30
    assert needed_bytes(30 * gib, 4 * gib) == 30 * gib + 2 * 34 * gib + MARGIN


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_28_3_the_pipe_from_docker_save_to_docker_load_holds_at_most_its_limit() -> None:
    pipe = BoundedPipe()
    data = [bytes([i]) * MiB for i in range(4 * PIPE_BYTES // MiB)]

    def write() -> None:
        for chunk in data:
            pipe.write(chunk)
        pipe.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    chunks, got, most = pipe.chunks(), [], 0
    while True:
        # A reader slower than the writer: the writer fills the pipe, then waits.
        _wait(lambda: pipe.held >= PIPE_BYTES or not writer.is_alive(), "a full pipe")
        most = max(most, pipe.held)
        chunk = next(chunks, None)
        if chunk is None:
            break
        got.append(chunk)
    assert b"".join(got) == b"".join(data)
    assert most <= PIPE_BYTES


def test_28_3_a_reader_that_gives_up_ends_the_writer() -> None:
    pipe = BoundedPipe()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            while True:
                pipe.write(b"x" * MiB)
        except BrokenPipeError as exc:
            failed.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    _wait(lambda: pipe.held >= PIPE_BYTES, "a full pipe")
    pipe.abandon()
    writer.join(10)
    assert not writer.is_alive()
    assert failed


class _Node:
    """What image_committer.run asks of Docker; ``fail`` names the step that fails."""

    def __init__(self, fail: str, error: Exception, free: int = 2**40) -> None:
        self.fail, self.error, self.free = fail, error, free
        self.container = ObservedContainer(
            id="c1", name="gpudock-team-a-src", status="running",
            owner=ResourceKey("team-a", "src"), uid="u1", revision=1,
            base_image="busybox:1", image="busybox:1")
        self.removed: list[str] = []
        self.steps: list[str] = []

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if name == self.fail:
            raise self.error

    def list_containers(self) -> list[ObservedContainer]:
        return [self.container]

    def image_info(self, image: str) -> None:
        return None

    def writable_layer_bytes(self, container_id: str) -> int:
        return 10 * MiB

    def writable_layer_dir(self, container_id: str) -> None:
        return None

    def free_bytes(self) -> int:
        return self.free

    def free_inodes(self) -> None:
        return None

    def image_config(self, image: str) -> tuple[str, int, dict[str, Any]]:
        return "sha256:b", 4 * MiB, {"Env": []}

    def commit_to(self, container_id: str, name: str, image: str, *, pause: bool) -> None:
        self._step("commit")

    def save_image(self, image: str, chunk_size: int) -> Iterator[bytes]:
        self._step("save")
        return iter(())

    def load_image(self, chunks: Iterator[bytes], what: str) -> None:
        self._step("load")

    def remove_image(self, image: str) -> bool:
        self.removed.append(image)
        return True


def _run_commit(node: _Node) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    body = {"metadata": {"namespace": "team-a", "name": "c", "uid": "cu"},
            "spec": {"replicaSetName": "src", "image": "gpudock.invalid/team-a/x:v1"}}
    target = {"metadata": {"namespace": "team-a", "name": "src", "uid": "u1"},
              "spec": {"state": "Running"}}
    started: list[dict[str, Any]] = []
    final = image_committer.run(body, target, Settings(node_name="n1"), cast(Any, node),
                                lambda: "2026-12-05T10:00:00Z", started.append)
    return final, started


@pytest.mark.parametrize(("fail", "error", "reason"), [
    ("commit", DockerUnavailableError("commit: Docker failed (HTTP 500): boom"),
     Reason.DOCKER_UNAVAILABLE),
    ("load", DiskFullError("load: write /var/lib/docker/tmp/x: no space left on device"),
     Reason.DISK_FULL),
])
def test_28_3_a_commit_that_fails_while_it_runs_says_what_failed(
        fail: str, error: Exception, reason: Reason) -> None:
    """Not left Running for the next event to call it AgentRestarted."""
    node = _Node(fail, error)
    final, started = _run_commit(node)
    assert started  # it ran: the status said Running
    assert (final["phase"], final["reason"]) == ("Failed", reason)
    assert str(error).split(": ", 1)[-1] in final["conditions"][0]["message"]
    assert node.removed == [image_committer.scratch_tag(
        {"metadata": {"namespace": "team-a", "name": "c", "uid": "cu"}})]


def test_28_3_a_commit_that_cannot_fit_is_refused_before_it_runs() -> None:
    node = _Node("", Exception(), free=100 * MiB)  # needs 10 + 2 x 14 + 64 MiB
    final, started = _run_commit(node)
    assert not started
    assert node.steps == []
    assert (final["phase"], final["reason"]) == ("Failed", Reason.DISK_FULL)
    assert "needs about 102 MiB" in final["conditions"][0]["message"]
    assert "100 MiB are free" in final["conditions"][0]["message"]


def test_28_3_a_failed_docker_load_is_an_error_not_an_empty_success() -> None:
    """Docker answers docker load with 200, then says in the stream that it failed."""
    class Api:
        def load_image(self, data: Any, quiet: bool) -> Iterator[dict[str, Any]]:
            list(data)
            yield {"error": "write /var/lib/docker/tmp/x: no space left on device"}

    runtime = DockerRuntime()
    runtime._client = cast(Any, SimpleNamespace(api=Api()))
    with pytest.raises(DiskFullError):
        runtime.load_image(iter([b"tar"]), "load x")
