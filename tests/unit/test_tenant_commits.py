"""#28 items 3 and 7, the pure parts: where a namespace's commits may write, the room
a commit needs, and the pipe between docker save and docker load."""

from __future__ import annotations

import threading
import time

import pytest

from gpudock.adapters.image_rewrite import PIPE_BYTES, BoundedPipe
from gpudock.agent.commit_room import MARGIN, needed_bytes
from gpudock.api.image_commit import DEFAULT_REPOSITORY_TEMPLATE, name_problem

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
