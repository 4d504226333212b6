"""#25 item 4: the annotation gpudock.dev/redeploy makes a new revision of the same spec
(core/replica_set/redeploy.py), through the real reconciler over the fakes: the disk
carried, GPUs and ports kept, CONTAINER_VERSION of the new revision, the value recorded
in the revision's shape; the same value again, an agent restart or the annotation
removed change nothing; a rollback is neither blocked nor followed by a redeploy."""

from __future__ import annotations

from typing import Any

from gpudock.api.gpu_replica_set import REDEPLOY_ANNOTATION
from tests.unit.fakes.docker import FakeContainer
from tests.unit.fakes.node import GRS, NAMESPACE, Node

MARKER = "/root/installed-by-user"
PORTS = [{"containerPort": 22}]


def _env(container: FakeContainer) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.env if "=" in e)


def _running(node: Node, **spec: Any) -> FakeContainer:
    node.apply("box", "first", gpus=2, ports=PORTS, **spec)
    assert node.settle("box")["revision"] == 1
    container = node.only_container("box")
    node.docker.write_file(container.id, MARKER, b"v1")
    return container


def _redeploy(node: Node, value: str | None) -> dict[str, Any]:
    node.annotate("box", REDEPLOY_ANNOTATION, value)
    return node.settle("box")


def test_25_4_a_new_value_is_a_new_revision_of_the_same_spec(node: Node) -> None:
    first = _running(node)
    before = node.status("box")
    generation = node.kube.get(GRS, NAMESPACE, "box")["metadata"]["generation"]
    status = _redeploy(node, "2026-12-05T18:00:00Z")
    container = node.only_container("box")
    assert (status["phase"], status["revision"]) == ("Running", 2)
    assert container.id != first.id
    assert node.docker.read_file(container.id, MARKER) == b"v1"  # the disk carried
    assert (status["gpus"], status["ports"]) == (before["gpus"], before["ports"])
    assert _env(container)["CONTAINER_VERSION"] == "2"
    assert status["history"][-1]["changeCause"] == \
        "redeploy (gpudock.dev/redeploy=2026-12-05T18:00:00Z)"
    record = node.store.list(NAMESPACE, "box")[-1]
    assert record.spec["redeploy"] == "2026-12-05T18:00:00Z"  # what it was made for
    body = node.kube.get(GRS, NAMESPACE, "box")
    assert "redeploy" not in body["spec"]  # the spec is untouched
    assert body["metadata"]["generation"] == generation


def test_25_4_the_same_value_again_and_an_agent_restart_change_nothing(node: Node) -> None:
    _running(node)
    _redeploy(node, "one")
    container = node.only_container("box")
    node.annotate("box", "unrelated", "x")  # another annotation: same token seen again
    assert node.settle("box")["revision"] == 2
    node.start_agent()  # decides from the records, not from the status
    node.kube.objects[(GRS, NAMESPACE, "box")]["status"] = {}
    status = node.settle("box")
    assert status["revision"] == 2
    assert node.only_container("box").id == container.id
    assert [r.revision for r in node.store.list(NAMESPACE, "box")] == [1, 2]


def test_25_4_removing_the_annotation_does_not_redeploy_a_new_value_does(
        node: Node) -> None:
    _running(node)
    _redeploy(node, "one")
    container = node.only_container("box")
    assert _redeploy(node, None)["revision"] == 2
    assert node.only_container("box").id == container.id
    status = _redeploy(node, "two")
    assert status["revision"] == 3
    assert _env(node.only_container("box"))["CONTAINER_VERSION"] == "3"
    assert node.docker.read_file(node.only_container("box").id, MARKER) == b"v1"


def test_25_4_a_spec_change_with_the_token_is_one_revision_with_its_cause(
        node: Node) -> None:
    _running(node)
    node.annotate("box", REDEPLOY_ANNOTATION, "one")
    node.apply("box", "three GPUs", gpus=3, ports=PORTS)  # annotations: change-cause only
    status = node.settle("box")
    assert (status["revision"], status["history"][-1]["changeCause"]) == (2, "three GPUs")


def test_25_4_a_rollback_keeps_the_token_and_no_redeploy_follows(node: Node) -> None:
    _running(node)
    _redeploy(node, "one")
    node.patch("box", {"rollbackTo": {"revision": 1}})
    status = node.settle("box")
    assert (status["revision"], status["history"][-1]["rollbackOf"]) == (3, 1)
    spec = node.kube.get(GRS, NAMESPACE, "box")["spec"]
    assert "redeploy" not in spec
    assert "rollbackTo" not in spec
    assert node.store.list(NAMESPACE, "box")[-1].spec["redeploy"] == "one"
    container = node.only_container("box")
    assert _env(container)["CONTAINER_VERSION"] == "3"
    node.start_agent()
    assert node.settle("box")["revision"] == 3  # the rollback's record has the token
    assert node.only_container("box").id == container.id
    # A rollback to the redeployed revision restores its spec, not its token.
    node.patch("box", {"rollbackTo": {"revision": 2}})
    assert node.settle("box")["revision"] == 4
    assert node.settle("box")["revision"] == 4


def test_25_4_stopped_then_running_with_a_new_value_is_a_new_revision(node: Node) -> None:
    """The REST API's /restart: state Running and a new value, the disk kept."""
    _running(node)
    held = node.status("box")["gpus"]
    node.patch("box", {"state": "Stopped"})
    assert node.settle("box")["phase"] == "Stopped"
    node.patch("box", {"state": "Running"})
    node.annotate("box", REDEPLOY_ANNOTATION, "restart-1")
    status = node.settle("box")
    assert (status["phase"], status["revision"]) == ("Running", 2)
    assert sorted(status["gpus"]) == sorted(held)
    container = node.only_container("box")
    assert node.docker.read_file(container.id, MARKER) == b"v1"
    assert _env(container)["CONTAINER_VERSION"] == "2"


def test_25_4_paused_makes_the_new_revision_without_starting_it(node: Node) -> None:
    _running(node)
    node.patch("box", {"state": "Paused"})
    node.settle("box")
    status = _redeploy(node, "one")
    container = node.only_container("box")
    assert (status["phase"], status["revision"]) == ("Paused", 2)
    assert container.status != "running"
    node.patch("box", {"state": "Running"})
    assert node.settle("box")["revision"] == 2
    assert node.docker.read_file(node.only_container("box").id, MARKER) == b"v1"


def test_25_4_a_new_value_changes_the_digest_kopf_wakes_the_daemon_by() -> None:
    """kopf leaves gpudock.dev/ annotations out (its storage prefix): the digest has
    the value, and a resource without it keeps the digest it had."""
    import kopf

    from gpudock.agent.handlers.node import DigestDiffBaseStorage

    storage = DigestDiffBaseStorage(prefix="gpudock.dev", key="last-handled-configuration")

    def digest(**annotations: str) -> Any:
        return storage.build(body=kopf.Body({
            "metadata": {"annotations": {"gpudock.dev/kopf-managed": "yes",
                                         **annotations}},
            "spec": {"image": "img"}}))

    plain = digest()
    assert digest(**{"gpudock.dev/other": "1"}) == plain  # what kopf does
    assert digest(**{REDEPLOY_ANNOTATION: "one"}) not in (plain, digest(
        **{REDEPLOY_ANNOTATION: "two"}))


def test_25_4_a_committed_image_does_not_keep_the_instances_revision() -> None:
    from gpudock.agent.image_committer import clean_config

    config = {"Env": ["PATH=/bin", "CONTAINER_VERSION=3"], "Labels": None}
    assert clean_config(config, [])["Env"] == ["PATH=/bin"]
