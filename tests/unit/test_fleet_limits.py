"""#22 item 8: limits, the pure parts: parsing, the per-GPU defaults, requests, the
node's checks, and the plan's choice between an in-place update and a new revision."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from gpudock.adapters.sqlite_revisions import SqliteRevisionStore
from gpudock.agent.node_health import held_requests
from gpudock.api.container_limits import CPU_PATTERN, format_cpu, parse_cpu
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.api.quantity import SIZE_PATTERN
from gpudock.api.reasons import Reason
from gpudock.cli.main import build_parser
from gpudock.core.container_config import spec_hash
from gpudock.core.limits import (
    ContainerLimits,
    LimitDefaults,
    NodeCapacity,
    Requests,
    allocation,
    limits_for,
    requests_for,
)
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation
from gpudock.core.replica_set.plan import plan_replica_set
from gpudock.core.revision import Revision, RevisionStore
from gpudock.errors import SpecError, StoreUnavailableError
from gpudock.settings import Settings, SettingsError, settings_from
from tests.unit.fakes.node import Node

KEY = ResourceKey("team-a", "knock")
GPUS = tuple(f"GPU-{i}" for i in range(4))
GI = 2**30
NODE = NodeCapacity(cpu=8000, memory=32 * GI)
DEFAULTS = LimitDefaults(cpu_per_gpu=2000, memory_per_gpu=4 * GI, shm_per_gpu=GI)


def _spec(**raw: Any) -> GpuReplicaSetSpec:
    return GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img", "gpuCount": 1,
                                    "imagePullPolicy": "IfNotPresent", **raw})


def _limits(cpu: str, memory: str) -> dict[str, Any]:
    return {"limits": {"cpu": cpu, "memory": memory}}


def _obs(spec: GpuReplicaSetSpec, *containers: ObservedContainer, **kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        key=KEY, uid="uid-1", generation=1, spec=spec, previous_status={},
        containers=containers, inventory=GPUS, port_range=(40000, 40010),
        allowed_host_paths=(), images_present=frozenset({"img"}),
        limit_defaults=DEFAULTS, node_capacity=NODE)
    base.update(kw)
    return Observation(**base)


def _running(spec: GpuReplicaSetSpec, limits: ContainerLimits) -> ObservedContainer:
    return ObservedContainer(id="c1", name="team-a_knock-1", status="running", owner=KEY,
                             uid="uid-1", revision=1, gpus=("GPU-0",),
                             spec_hash=spec_hash(spec), base_image=spec.image,
                             restart_policy="unless-stopped", limits=limits)


def _record(spec: GpuReplicaSetSpec) -> Revision:
    return Revision(namespace=KEY.namespace, name=KEY.name, revision=1, uid="uid-1",
                    spec=spec.shape(), image=spec.image, container_name="team-a_knock-1",
                    gpus=("GPU-0",), ports=(), created_at="t", container_id="c1")


# ------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "millis"), [("2", 2000), ("1.5", 1500), ("500m", 500),
                                              (3, 3000), (0.25, 250)])
def test_22_8_cpu_quantities(text: Any, millis: int) -> None:
    assert parse_cpu(text) == millis
    assert parse_cpu(format_cpu(millis)) == millis


def test_22_8_the_crd_uses_the_parsers_grammar() -> None:
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" /
                          "gpudock.dev_gpureplicasets.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in ("requests", "limits"):
        fields = spec["properties"]["resources"]["properties"][part]["properties"]
        assert fields["cpu"]["pattern"] == CPU_PATTERN
        assert fields["memory"]["pattern"] == SIZE_PATTERN
    assert spec["properties"]["shmSize"]["pattern"] == SIZE_PATTERN


@pytest.mark.parametrize(("resources", "reason"), [
    ({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}, Reason.LIMIT_BELOW_REQUEST),
    ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
     Reason.LIMIT_BELOW_REQUEST),
    ({"limits": {"memory": "4Mi"}}, Reason.BELOW_DOCKER_MINIMUM),
    ({"limits": {"cpu": "5m"}}, Reason.BELOW_DOCKER_MINIMUM),
])
def test_22_8_impossible_resources_are_refused_with_their_reason(
        resources: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(SpecError) as refused:
        _spec(resources=resources)
    assert refused.value.reason == reason


def test_22_8_limits_do_not_make_an_old_container_differ() -> None:
    """Containers and records made before the fields existed still match."""
    plain = _spec()
    limited = _spec(resources=_limits("2", "4Gi"), pidsLimit=100)
    assert limited.matches(plain.shape())
    assert plain.matches(limited.shape())
    assert spec_hash(limited) == spec_hash(plain)
    assert not _spec(shmSize="1Gi").matches(plain.shape())  # shm: a new revision


# ---------------------------------------------------------------------- defaults
def test_22_8_per_gpu_defaults_fill_what_the_spec_leaves_out() -> None:
    assert limits_for(_spec(gpuCount=2), DEFAULTS, NODE) == ContainerLimits(
        nano_cpus=4 * 10**9, memory=8 * GI, pids_limit=0, shm_size=2 * GI)
    # A default never asks for more CPUs than the node has.
    assert limits_for(_spec(gpuCount=4, resources={}), LimitDefaults(cpu_per_gpu=4000),
                      NODE).nano_cpus == 8 * 10**9
    # The spec's own values win; a request above the default raises the limit to it.
    mine = _spec(resources={"requests": {"cpu": "3"}, "limits": {"memory": "1Gi"}},
                 shmSize="256Mi", pidsLimit=50)
    assert limits_for(mine, DEFAULTS, NODE) == ContainerLimits(
        nano_cpus=3 * 10**9, memory=GI, pids_limit=50, shm_size=256 * 2**20)
    # No default (0): no limit; a request without a limit is only counted.
    bare = _spec(resources={"requests": {"cpu": "500m", "memory": "1Gi"}})
    assert limits_for(bare, LimitDefaults(), NODE) == ContainerLimits()
    assert requests_for(bare, LimitDefaults(), NODE) == Requests(500, GI)


def test_22_8_a_request_not_set_is_its_limit() -> None:
    spec = _spec(resources=_limits("1500m", "2Gi"))
    assert requests_for(spec, LimitDefaults(), NODE) == Requests(1500, 2 * GI)
    assert allocation([Requests(1500, 2 * GI), Requests(500, GI)]) == {
        "cpu": "2", "memory": "3Gi"}


def test_22_8_settings_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["agent", "--cpus-per-gpu", "1500m", "--memory-per-gpu",
                              "16Gi", "--shm-per-gpu", "8Gi"])
    assert settings_from(args, {}).limit_defaults == LimitDefaults(1500, 16 * GI, 8 * GI)
    assert settings_from(parser.parse_args(["agent"]), {}).limit_defaults == LimitDefaults()
    with pytest.raises(SettingsError):
        settings_from(parser.parse_args(["agent", "--memory-per-gpu", "1Mi"]), {})


# ------------------------------------------------------------------- the plan
def test_22_8_a_memory_change_is_one_in_place_update_noted_in_the_record() -> None:
    old = _spec(resources=_limits("2", "4Gi"))
    new = _spec(resources=_limits("3", "6Gi"), pidsLimit=200)
    running = _running(old, limits_for(old, DEFAULTS, NODE))
    plan = plan_replica_set(_obs(new, running, records=(_record(old),)))
    (update,) = plan.actions
    assert isinstance(update, act.UpdateLimits)
    assert update.container_id == "c1"
    assert update.limits.in_place() == (3 * 10**9, 6 * GI, 200)
    assert update.note is not None
    assert update.note.revision == 1
    assert update.note.spec["resources"] == {"limits": {"cpu": "3", "memory": "6Gi"}}
    assert plan.drift is None
    # Done: nothing more to do.
    updated = replace(running, limits=update.limits)
    assert plan_replica_set(_obs(new, updated, records=(update.note,))).actions == ()


def test_22_8_limits_changed_behind_the_agents_back_are_put_back_in_place() -> None:
    spec = _spec(resources=_limits("2", "4Gi"))
    changed = _running(spec, ContainerLimits(nano_cpus=10**9, memory=GI))
    plan = plan_replica_set(_obs(spec, changed, records=(_record(spec),)))
    (update,) = plan.actions
    assert isinstance(update, act.UpdateLimits)
    assert update.note is None
    assert plan.drift is not None


def test_22_8_shm_and_lifted_limits_are_a_new_revision() -> None:
    old = _spec(resources=_limits("2", "4Gi"))
    running = _running(old, limits_for(old, DEFAULTS, NODE))
    for new in (replace(old, shm_size=2 * GI),
                _spec(resources={}),  # back to the defaults: limited, in place
                ):
        plan = plan_replica_set(_obs(new, running, records=(_record(old),)))
        kinds = [type(a) for a in plan.actions]
        if new.shm_size:
            assert act.StartRevision in kinds
            assert act.UpdateLimits not in kinds
        else:
            assert kinds == [act.UpdateLimits]
    # No default and no limit: Docker cannot lift a limit in place.
    plan = plan_replica_set(_obs(_spec(), running, records=(_record(old),),
                                 limit_defaults=LimitDefaults()))
    assert act.StartRevision in [type(a) for a in plan.actions]


def test_22_8_more_cpu_than_the_node_has_is_refused_and_nothing_changes() -> None:
    old = _spec(resources=_limits("2", "4Gi"))
    running = _running(old, limits_for(old, DEFAULTS, NODE))
    for resources in (_limits("9", "4Gi"), {"requests": {"memory": "64Gi"},
                                            "limits": {"memory": "64Gi"}}):
        plan = plan_replica_set(_obs(_spec(resources=resources), running,
                                     records=(_record(old),)))
        assert plan.actions == ()
        assert plan.status.reason == Reason.EXCEEDS_NODE_CAPACITY
        assert plan.status.phase == "Running"  # the container serves on as it was


def test_22_8_a_new_container_gets_its_limits() -> None:
    spec = _spec(resources=_limits("1", "2Gi"), pidsLimit=64, shmSize="1Gi")
    (start,) = plan_replica_set(_obs(spec)).actions
    assert isinstance(start, act.StartRevision)
    assert start.config.limits == ContainerLimits(10**9, 2 * GI, 64, GI)


def test_22_8_allocated_sums_the_recorded_requests_of_each_instance(tmp_path: Path) -> None:
    """The newest container of each instance counts, by its record's spec (which an
    in-place change keeps current); one without a record counts its Docker limits."""
    store = SqliteRevisionStore(tmp_path / "r.sqlite3")
    spec = _spec(resources={"requests": {"cpu": "1500m", "memory": "3Gi"}})
    store.put(_record(spec))
    mine = _running(spec, ContainerLimits())
    older = replace(mine, id="c0", revision=0)
    stranger = replace(mine, id="c9", owner=ResourceKey("team-b", "x"),
                       limits=ContainerLimits(nano_cpus=5 * 10**8, memory=GI))
    settings = Settings(node_name="n1", limit_defaults=DEFAULTS)
    found = held_requests([older, mine, stranger], store, settings, NODE)
    assert found == [Requests(1500, 3 * GI), Requests(500, GI)]
    assert allocation(found) == {"cpu": "2", "memory": "4Gi"}
    store.close()


class _StoreAway:
    """A revision store whose etcd is stopped: every read fails after its timeout."""

    def __init__(self) -> None:
        self.asked = 0

    def get(self, namespace: str, name: str, revision: int) -> Revision | None:
        self.asked += 1
        raise StoreUnavailableError("etcd 127.0.0.1:2379: get: ConnectionFailedError")


def test_27_a_heartbeat_goes_on_while_the_revision_store_is_away() -> None:
    """The soak's etcd_stop: the heartbeat read each instance's record from the store,
    failed while etcd was stopped, and the node went NodeNotReady with its instances
    Degraded though their containers ran. Now every container counts its Docker
    limits then, and the store is asked once per heartbeat, not once per container."""
    spec = _spec()
    mine = _running(spec, ContainerLimits(nano_cpus=2 * 10**9, memory=2 * GI))
    other = replace(mine, id="c9", owner=ResourceKey("team-b", "x"),
                    limits=ContainerLimits(nano_cpus=5 * 10**8, memory=GI))
    store = _StoreAway()
    found = held_requests([mine, other], cast(RevisionStore, store),
                          Settings(node_name="n1", limit_defaults=DEFAULTS), NODE)
    assert found == [Requests(2000, 2 * GI), Requests(500, GI)]
    assert store.asked == 1


# ------------------------------------------------------- the real reconciler, fakes
def test_22_8_a_rollback_to_a_revision_without_limits_clears_them_from_the_spec(
        node: Node) -> None:
    """The spec written back is the revision's: limits it did not set are removed
    (a merge patch keeps what it does not name), and nothing rolls out after."""
    node.apply("box", "plain")
    assert node.settle("box")["revision"] == 1
    node.apply("box", "limits", shmSize="1Gi", pidsLimit=64,
               resources=_limits("1", "1Gi"))
    assert node.settle("box")["revision"] == 2
    assert node.only_container("box").limits == ContainerLimits(10**9, GI, 64, GI)
    node.patch("box", {"rollbackTo": {"revision": 1}})
    status = node.settle("box", passes=6)
    spec = node.kube.get("gpureplicasets", "team-a", "box")["spec"]
    assert not {"resources", "shmSize", "pidsLimit", "rollbackTo"} & set(spec)
    assert status["revision"] == 3
    assert len(status["history"]) == 3
    assert node.only_container("box").limits == ContainerLimits()


def test_22_8_an_in_place_change_on_the_fakes_keeps_the_container_and_its_record(
        node: Node) -> None:
    node.apply("box", "first", resources=_limits("1", "1Gi"))
    node.settle("box")
    first = node.only_container("box")
    node.apply("box", "more", resources=_limits("2", "2Gi"), pidsLimit=10)
    status = node.settle("box")
    assert (status["revision"], status["containerID"]) == (1, first.id)
    assert node.only_container("box").limits.in_place() == (2 * 10**9, 2 * GI, 10)
    (record,) = node.store.list("team-a", "box")
    assert record.spec["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert "LimitsUpdated" in node.reasons("box")
