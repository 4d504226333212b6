"""The status written while Docker or the revision store does not answer: the rest
stays as last written, but Ready is observed (the soak found Ready=True kept for 16 s
over a container a stop had just ended, while etcd was down)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gpudock.adapters.docker.errors import DockerUnavailableError
from gpudock.agent.handlers import replica_sets
from gpudock.agent.status_writer import StatusWriter
from gpudock.api.reasons import Reason
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set.status import serving_while_waiting, waiting_on
from gpudock.errors import StoreUnavailableError
from tests.unit.fakes.kube import InMemoryKube

KEY = ResourceKey("team-a", "knock")
NOW = "2026-12-07T13:00:00Z"
SHOWN: dict[str, Any] = {
    "phase": "Running", "containerID": "c2",
    "conditions": [{"type": "Ready", "status": "True", "reason": "ContainerRunning",
                    "message": "container team-a_knock-2 is running",
                    "lastTransitionTime": "2026-12-07T12:00:00Z"}]}


def _container(cid: str, revision: int, status: str) -> ObservedContainer:
    return ObservedContainer(id=cid, name=f"team-a_knock-{revision}", status=status,
                             owner=KEY, uid="uid-1", revision=revision)


def _status(containers: list[ObservedContainer] | None,
            shown: dict[str, Any] = SHOWN) -> dict[str, Any]:
    waiting = waiting_on(shown, Reason.REVISION_STORE_UNAVAILABLE, "etcd: refused", NOW)
    return serving_while_waiting(waiting, shown, containers, NOW)


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_ready_stays_while_the_named_container_runs() -> None:
    status = _status([_container("c1", 1, "exited"), _container("c2", 2, "running")])
    assert _ready(status)["status"] == "True"
    assert _ready(status)["lastTransitionTime"] == "2026-12-07T12:00:00Z"
    assert "phase" not in status  # a patch: the phase written stays


def test_a_stopped_container_is_not_ready_while_the_store_is_away() -> None:
    status = _status([_container("c1", 1, "running"), _container("c2", 2, "exited")])
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "ContainerNotRunning")
    assert ready["message"] == "container team-a_knock-2 is exited; waiting: etcd: refused"
    assert ready["lastTransitionTime"] == NOW
    assert status["phase"] == "Reconciling"
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RevisionStoreUnavailable"


def test_no_container_at_all_is_not_ready() -> None:
    ready = _ready(_status([]))
    assert (ready["status"], ready["message"]) == ("False", "no container; waiting: etcd: refused")


def test_a_phase_other_than_running_is_kept() -> None:
    status = _status([_container("c2", 2, "exited")], {**SHOWN, "phase": "Stopping"})
    assert _ready(status)["status"] == "False"
    assert "phase" not in status


def test_docker_not_answering_makes_ready_unknown() -> None:
    ready = _ready(_status(None))
    assert (ready["status"], ready["reason"]) == ("Unknown", "DockerUnavailable")
    assert ready["message"].startswith("whether its container runs is not known: ")


def test_a_status_that_claims_nothing_is_left_as_it_is() -> None:
    shown = {**SHOWN, "conditions": [{**SHOWN["conditions"][0], "status": "False"}]}
    status = _status([], shown)
    assert _ready(status)["status"] == "False"
    assert _ready(status)["lastTransitionTime"] == "2026-12-07T12:00:00Z"


class _Docker:
    def __init__(self, containers: list[ObservedContainer] | None) -> None:
        self.containers = containers

    def list_containers(self) -> list[ObservedContainer]:
        if self.containers is None:
            raise DockerUnavailableError("cannot reach Docker")
        return self.containers


def _agent(kube: InMemoryKube, containers: list[ObservedContainer] | None) -> Any:
    clock = lambda: NOW  # noqa: E731
    return SimpleNamespace(
        kube=kube, docker=_Docker(containers), now=clock,
        settings=SimpleNamespace(node_name="a"),
        replica_set_status=StatusWriter(kube, "gpureplicasets", "GpuReplicaSet", "a", clock))


def _resource(kube: InMemoryKube, bound: str) -> dict[str, Any]:
    kube.apply("gpureplicasets", "team-a", "knock", {"image": "img"})
    stored = kube.objects[("gpureplicasets", "team-a", "knock")]
    stored["metadata"].update(uid="uid-1", finalizers=["node.gpudock.dev/a"])
    stored["status"] = {**SHOWN, "nodeName": bound}
    return kube.get("gpureplicasets", "team-a", "knock")


def test_the_handler_writes_what_it_observes_while_the_store_is_away() -> None:
    kube = InMemoryKube()
    body = _resource(kube, "a")
    replica_sets._show_waiting(_agent(kube, [_container("c2", 2, "exited")]), body,
                               StoreUnavailableError("etcd: refused"))
    status = kube.objects[("gpureplicasets", "team-a", "knock")]["status"]
    assert _ready(status)["status"] == "False"
    assert status["nodeName"] == "a"


def test_the_handler_writes_nothing_once_a_migration_moved_the_binding() -> None:
    """The source during its hold, or a target that gave the instance back: the
    status is the other node's to write (a write here would bind it back)."""
    kube = InMemoryKube()
    body = _resource(kube, "b")
    replica_sets._show_waiting(_agent(kube, None), body, StoreUnavailableError("etcd"))
    assert kube.status_patches("knock") == []
    assert kube.objects[("gpureplicasets", "team-a", "knock")]["status"]["nodeName"] == "b"
