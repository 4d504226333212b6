"""#14: the pure parts of the node's tenant policy (names, images, ports, ownership).
The behaviour itself is shown against the real stack in tests/integration/test_security.py."""

from __future__ import annotations

from typing import Any

import pytest

from gpudock.api import ownership
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.core import labels
from gpudock.core.observed import ImageInfo, ResourceKey
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.plan import plan_replica_set
from gpudock.core.replica_set.saved_disks import preserved_image, preserved_repository
from gpudock.errors import SpecError

KEY = ResourceKey("team-a", "knock")


def _obs(image: str = "img", **kw: Any) -> Observation:
    spec = GpuReplicaSetSpec.parse({"nodeName": "n1", "image": image,
                                    "imagePullPolicy": "IfNotPresent", **kw.pop("raw", {})})
    base: dict[str, Any] = dict(
        key=KEY, uid="uid-1", generation=1, spec=spec, previous_status={}, containers=(),
        inventory=(), port_range=(40000, 40010), allowed_host_paths=(),
        images_present=frozenset({image}), node_name="n1")
    base.update(kw)
    return Observation(**base)


def _reason(obs: Observation) -> str:
    plan = plan_replica_set(obs)
    assert plan.actions == ()
    return plan.status.conditions[2].reason


def test_14_8_names_fit_docker_for_the_longest_namespace_and_name() -> None:
    namespace, name = "n" * 63, "a" * 120 + "." + "b" * 132
    repository = preserved_repository(ResourceKey(namespace, name))
    assert len(preserved_image(ResourceKey(namespace, name), 9_999_999_999)) <= 255
    assert repository.startswith("gpudock-preserved/" + namespace + "_")
    # Another long name with the same prefix gets another name.
    other = preserved_repository(ResourceKey(namespace, name[:-1] + "c"))
    assert other != repository
    assert len(labels.hostname(name)) <= 63
    assert labels.object_name("team-a", "knock", 3) == "team-a_knock-3"  # short: unchanged


@pytest.mark.parametrize("image", [
    "gpudock-preserved/team-b_x:rev-1", "docker.io/gpudock-preserved/team-b_x:rev-1",
    "docker.io/library/gpudock-preserved/team-b_x:rev-1",
    "GPUDOCK-PRESERVED/team-b_x:rev-1", "gpudock-preserved/team-b_x@sha256:" + "0" * 64])
def test_14_2_preserved_repository_refused_however_written(image: str) -> None:
    assert _reason(_obs(image)) == "ReservedImage"


def test_14_2_saved_disk_refused_by_id_or_another_tag_through_its_labels() -> None:
    for image in ("sha256:" + "1" * 64, "innocent:latest"):
        info = ImageInfo(id="sha256:" + "1" * 64, owner=("team-b", "x", "uid-9"))
        assert _reason(_obs(image, images={image: info})) == "ReservedImage"
    tagged = ImageInfo(id="sha256:2", repo_tags=("gpudock-preserved/team-b_x:rev-2",))
    assert _reason(_obs("abc123", images={"abc123": tagged})) == "ReservedImage"


def test_14_3_explicit_host_port_outside_the_allowed_range_is_refused() -> None:
    assert _reason(_obs(raw={"ports": [{"containerPort": 22, "hostPort": 80}]})) == \
        "HostPortNotAllowed"
    widened = _obs(raw={"ports": [{"containerPort": 22, "hostPort": 8080}]},
                   explicit_port_range=(1024, 65535), inventory=())
    assert plan_replica_set(widened).actions  # started


def test_14_4_a_changed_node_name_changes_nothing() -> None:
    obs = _obs(node_name="n0")
    plan = plan_replica_set(obs)
    assert plan.actions == ()
    assert plan.status.conditions[2].reason == "NodeNameChanged"


def test_14_4_each_agent_has_its_own_finalizer_which_binds_the_resource() -> None:
    one, two = ownership.node_finalizer("node-1"), ownership.node_finalizer("node-2")
    assert one != two
    assert ownership.handled_here("node-1", [], "node-1")
    assert not ownership.handled_here("node-2", [one], "node-2")  # bound to node-1
    assert ownership.handled_here("node-2", [one], "node-1")  # moved: still node-1's
    assert not ownership.handled_here("node-2", [], "node-1")
    long = ownership.node_finalizer("x" * 253)
    assert len(long.split("/", 1)[1]) <= 63


def test_14_9_spec_size_is_bounded() -> None:
    with pytest.raises(SpecError, match="at most 32768"):
        GpuReplicaSetSpec.parse({"nodeName": "n", "image": "i",
                                 "env": [{"name": "A", "value": "x" * 200_000}]})
    with pytest.raises(SpecError, match="131072"):
        GpuReplicaSetSpec.parse({"nodeName": "n", "image": "i", "env": [
            {"name": f"V{i}", "value": "x" * 30_000} for i in range(5)]})
    fine = GpuReplicaSetSpec.parse({"nodeName": "n", "image": "i", "env": [
        {"name": f"V{i}", "value": "x" * 30_000} for i in range(4)]})
    assert len(fine.env) == 4


def test_14_7_host_aliases_and_dns_are_only_in_the_shape_when_set() -> None:
    plain = GpuReplicaSetSpec.parse({"nodeName": "n", "image": "i"})
    assert "hostAliases" not in plain.shape()
    assert "dnsConfig" not in plain.shape()
    spec = GpuReplicaSetSpec.parse({"nodeName": "n", "image": "i", "hostAliases": [
        {"ip": "10.0.0.5", "hostnames": ["db", "db.local"]}],
        "dnsConfig": {"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}]}})
    again = plain.with_shape(spec.shape())
    assert again.host_aliases == spec.host_aliases
    assert again.dns == spec.dns
