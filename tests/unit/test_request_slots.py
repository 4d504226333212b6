"""#28 item 1: the slots of the one-shot requests (agent/request_slots.py), and the
request handler over them: ExecRequests run on the request pool, never on the pool
the reconciles and the heartbeat use, at most --max-running-execs-per-namespace of a
namespace at once; the others are Pending with the reason and start when a slot frees."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from gpudock.agent.handlers import requests
from gpudock.agent.request_slots import Claim, RequestSlots
from gpudock.agent.wiring import NodeAgent, RequestBook
from gpudock.api import exec_request, gpu_replica_set
from gpudock.api.reasons import Reason
from tests.unit.fakes.kube import InMemoryKube
from tests.unit.fakes.node import NODE_NAME, agent_settings

A, B, C = Claim("team-a", True), Claim("team-b", True), Claim("team-c", True)


def test_a_namespace_runs_at_most_its_cap_and_the_node_at_most_its_total() -> None:
    slots = RequestSlots(total=3, per_namespace=2)
    assert slots.try_take(A) is None
    assert slots.try_take(A) is None
    third = slots.try_take(A)
    assert third is not None
    assert third.reason is Reason.EXEC_LIMIT_REACHED
    assert "--max-running-execs-per-namespace 2" in third.message
    assert "team-a" in third.message
    assert slots.try_take(B) is None  # another namespace is not held back by A's cap
    full = slots.try_take(C)
    assert full is not None
    assert full.reason is Reason.REQUEST_LIMIT_REACHED
    assert "--max-running-requests 3" in full.message
    assert (slots.running(), slots.running("team-a"), slots.running("team-b")) == (3, 2, 1)


def test_image_commits_take_a_slot_of_the_node_but_not_of_the_namespace() -> None:
    slots = RequestSlots(total=3, per_namespace=1)
    commit = Claim("team-a", False)
    assert slots.try_take(A) is None
    assert slots.try_take(commit) is None
    assert slots.try_take(commit) is None
    assert slots.running("team-a") == 1
    assert slots.running() == 3


def test_a_freed_slot_goes_to_the_first_waiting_request_that_may_have_it() -> None:
    async def scenario() -> list[str]:
        slots = RequestSlots(total=3, per_namespace=2)
        for claim in (A, A, B):
            assert slots.try_take(claim) is None
        started: list[str] = []

        async def wait(name: str, claim: Claim) -> None:
            await slots.take(claim)
            started.append(name)

        tasks = [asyncio.create_task(wait(n, c)) for n, c in
                 (("a3", A), ("c1", C), ("a4", A))]
        await asyncio.sleep(0)
        assert (started, slots.waiting()) == ([], 3)
        slots.give_back(B)  # team-b's slot: team-a is still full, c1 may have it
        await asyncio.sleep(0)
        assert started == ["c1"]
        slots.give_back(A)  # a3 asked first
        await asyncio.sleep(0)
        assert started == ["c1", "a3"]
        tasks[2].cancel()  # a4 gives up waiting: it takes nothing
        await asyncio.gather(*tasks, return_exceptions=True)
        slots.give_back(A)
        assert (slots.running(), slots.running("team-a"), slots.waiting()) == (2, 1, 0)
        return started

    assert asyncio.run(scenario()) == ["c1", "a3"]


# --------------------------------------------------------- the handler over the slots
class BlockingRuns:
    """kind.run: records the thread each request ran on, and runs until released."""

    def __init__(self) -> None:
        self.threads: dict[str, str] = {}
        self.release: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def gate(self, name: str) -> threading.Event:
        with self.lock:
            return self.release.setdefault(name, threading.Event())

    def run(self, body: dict[str, Any], target: dict[str, Any], settings: Any, docker: Any,
            now: Callable[[], str], started: Callable[[dict[str, Any]], None],
            ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.threads[name] = threading.current_thread().name
        started({"phase": "Running", "reason": None, "node": settings.node_name})
        assert self.gate(name).wait(120)  # generous: a loaded machine is slow, never stuck
        return {"phase": "Completed", "reason": None, "exitCode": 0,
                "conditions": [{"type": "Complete", "status": "True",
                                "reason": Reason.COMPLETED, "message": "done"}]}


def _phase(kube: InMemoryKube, namespace: str, name: str) -> tuple[str | None, str | None]:
    status = kube.get(exec_request.PLURAL, namespace, name).get("status") or {}
    return status.get("phase"), status.get("reason")


async def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


def test_exec_requests_wait_pending_and_run_on_their_own_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    settings = agent_settings(tmp_path, 0, "--max-running-requests", "3",
                              "--max-running-execs-per-namespace", "2")
    kube, runs = InMemoryKube(), BlockingRuns()
    for namespace in ("team-a", "team-b"):
        kube.apply(gpu_replica_set.PLURAL, namespace, "box", {"nodeName": NODE_NAME})
    kind = requests.RequestKind(exec_request.PLURAL, ("Completed", "Failed"), runs.run,
                                False, lambda *args: None, True)
    agent = cast(NodeAgent, SimpleNamespace(
        settings=settings, kube=kube, docker=None, now=lambda: "2026-11-22T10:00:00Z",
        requests=RequestBook(),
        request_slots=RequestSlots(settings.max_running_requests,
                                   settings.max_running_execs_per_namespace),
        request_pool=concurrent.futures.ThreadPoolExecutor(
            settings.max_running_requests, thread_name_prefix="gpudock-request")))
    logger = logging.getLogger("test")

    async def seen(namespace: str, name: str, type_: str = "ADDED") -> None:
        body = kube.get(exec_request.PLURAL, namespace, name) if type_ != "DELETED" else \
            {"metadata": {"namespace": namespace, "name": name,
                          "uid": f"uid-{namespace}-{name}"}}
        await requests._seen(kind, cast(kopf.Body, body), agent, type_, logger)

    def create(namespace: str, name: str) -> None:
        kube.apply(exec_request.PLURAL, namespace, name, {"replicaSetName": "box",
                                                          "command": ["sleep", "300"]})
        kube.objects[(exec_request.PLURAL, namespace, name)]["metadata"]["uid"] = \
            f"uid-{namespace}-{name}"

    async def scenario() -> None:
        # The pool the reconciles and the heartbeat use: one thread, so a request run
        # on it would stall the check below.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reconciles"))
        for name in ("a1", "a2", "a3", "a4"):
            create("team-a", name)
            await seen("team-a", name)
        await _until(lambda: len(runs.threads) == 2, "two of team-a run")
        waiting = sorted({"a1", "a2", "a3", "a4"} - set(runs.threads))
        # The two that run can start before the others have found their slots taken
        # and written so (on the one reconciles thread): wait for a status, then check it.
        await _until(lambda: all(_phase(kube, "team-a", name) != (None, None)
                                 for name in waiting), "the waiting ones' status written")
        for name in waiting:
            assert _phase(kube, "team-a", name) == ("Pending", Reason.EXEC_LIMIT_REACHED)
        create("team-b", "b1")
        await seen("team-b", "b1")
        await _until(lambda: "b1" in runs.threads, "team-b's request runs beside them")
        # Every request slot is taken; what the reconciles use is not.
        # (a request run on that one thread would hold it until its gate: 120 s)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 30) == "free"
        assert all(t.startswith("gpudock-request") for t in runs.threads.values())

        await seen("team-a", waiting[1], "DELETED")  # dropped while it waits
        runs.gate(sorted(runs.threads)[0]).set()
        await _until(lambda: waiting[0] in runs.threads, "a waiting one started")
        # run records its thread before its started() writes Running: wait for that.
        await _until(lambda: _phase(kube, "team-a", waiting[0])[0] != "Pending",
                     "the started one's status written")
        assert _phase(kube, "team-a", waiting[0])[0] == "Running"
        for name in ("a1", "a2", "a3", "a4", "b1"):
            runs.gate(name).set()
        await _until(lambda: not agent.requests.running, "every request done")
        assert waiting[1] not in runs.threads
        assert agent.request_slots.running() == 0

    try:
        asyncio.run(scenario())
    finally:
        agent.request_pool.shutdown(wait=True)
    for name in set(runs.threads) - {"b1"}:
        assert _phase(kube, "team-a", name) == ("Completed", None)
