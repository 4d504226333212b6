"""The typed models parse what the CRD accepts and refuse, with a message, what it
should not have let through."""

from __future__ import annotations

from typing import Any

import pytest

from gpudock.api.container_fields import MountSpec, PortSpec, Protocol
from gpudock.api.gpu_replica_set import DesiredState, GpuReplicaSetSpec, HistoryPolicy
from gpudock.api.paths import is_clean_absolute_path, is_under
from gpudock.api.sized_volume import SizedVolumeSpec
from gpudock.core.container_config import build_container_config
from gpudock.core.observed import ResourceKey
from gpudock.errors import SpecError

FULL = {
    "nodeName": "gpu-node-1",
    "image": "nvidia/cuda:12.4.1-base-ubuntu22.04",
    "command": ["sleep", "infinity"],
    "gpuCount": 3,
    "env": [{"name": "USER", "value": "foo"}],
    "ports": [{"containerPort": 22}, {"containerPort": 53, "protocol": "UDP",
                                       "hostPort": 40053}],
    "mounts": [{"volume": "data", "mountPath": "/root/data"},
               {"hostPath": "/mynfs/ctr-knock", "mountPath": "/root/fs", "readOnly": True}],
    "state": "Paused",
    "revisionHistoryLimit": 5,
    "historyPolicy": "Purge",
    "rollbackTo": {"revision": 2},
}


def test_full_spec_parses() -> None:
    spec = GpuReplicaSetSpec.parse(FULL)
    assert spec.gpu_count == 3
    assert spec.command == ("sleep", "infinity")
    assert spec.ports == (PortSpec(22), PortSpec(53, Protocol.UDP, 40053))
    assert spec.mounts[0] == MountSpec("/root/data", volume="data")
    assert spec.mounts[1] == MountSpec("/root/fs", host_path="/mynfs/ctr-knock", read_only=True)
    assert spec.state is DesiredState.PAUSED
    assert spec.history_policy is HistoryPolicy.PURGE
    assert spec.rollback_to == 2


def test_minimal_spec_gets_the_schema_defaults() -> None:
    spec = GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "busybox"})
    assert (spec.gpu_count, spec.state, spec.revision_history_limit) == (
        0, DesiredState.RUNNING, 10)
    assert spec.history_policy is HistoryPolicy.RETAIN
    assert spec.rollback_to is None
    assert spec.init is True


def test_init_is_in_the_shape_only_when_turned_off() -> None:
    """A container made before spec.init existed matches a spec that leaves it at its
    default (no restart on the agent's upgrade); turning it off is a new revision,
    and a rollback writes it back."""
    plain = GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "busybox"})
    without = GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "busybox", "init": False})
    assert "init" not in plain.shape()
    assert without.shape()["init"] is False
    assert not plain.matches(without.shape())
    assert plain.matches(GpuReplicaSetSpec.parse(
        {"nodeName": "n1", "image": "busybox", "init": True}).shape())
    assert plain.with_shape(without.shape()).init is False
    config = build_container_config(ResourceKey("ns", "a"), "uid", without, revision=1,
                                    gpus=(), ports=(), volume_names={})
    assert config.init is False


@pytest.mark.parametrize(("change", "message"), [
    ({"gpuCount": -1}, "gpuCount must be >= 0"),
    ({"gpuCount": "2"}, "gpuCount must be an integer"),
    ({"image": ""}, "image must be a non-empty string"),
    ({"state": "Sleeping"}, "state must be one of Running, Paused, Stopped"),
    ({"nodeName": "Bad_Node"}, "not a valid node name"),
    ({"env": [{"name": "1=x", "value": ""}]}, "not a valid variable name"),
    ({"env": [{"name": "A"}, {"name": "A"}]}, "env names must be unique"),
    ({"ports": [{"containerPort": 70000}]}, "containerPort must be <= 65535"),
    ({"ports": [{"containerPort": 22}, {"containerPort": 22}]}, "same containerPort"),
    ({"mounts": [{"mountPath": "/x"}]}, "exactly one of volume and hostPath"),
    ({"mounts": [{"mountPath": "/x", "hostPath": "relative/dir"}]}, "clean absolute path"),
    ({"mounts": [{"mountPath": "/x", "hostPath": "/a/../etc"}]}, "clean absolute path"),
    ({"rollbackTo": {"revision": 0}}, "revision must be >= 1"),
    ({"init": "yes"}, "init must be true or false"),
])
def test_bad_specs_are_refused_with_a_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        GpuReplicaSetSpec.parse({**FULL, **change})
    assert caught.value.reason == "InvalidSpec"


def test_missing_image_is_refused() -> None:
    raw = {k: v for k, v in FULL.items() if k != "image"}
    with pytest.raises(SpecError, match="image"):
        GpuReplicaSetSpec.parse(raw)


def test_sized_volume_spec() -> None:
    assert SizedVolumeSpec.parse({"nodeName": "n1", "size": "20GB"}).size_bytes == 20 * 1024**3
    with pytest.raises(SpecError, match="12XB"):
        SizedVolumeSpec.parse({"nodeName": "n1", "size": "12XB"})
    with pytest.raises(SpecError, match="minimum"):
        SizedVolumeSpec.parse({"nodeName": "n1", "size": "1Ki"})


@pytest.mark.parametrize(("path", "clean"), [
    ("/a", True), ("/a/b/", True), ("/.hidden/x", True), ("/a/..b", True),
    ("/", False), ("a/b", False), ("/a/../b", False), ("/a/./b", False), ("/a//b", False),
    ("", False), ("/..", False),
])
def test_clean_absolute_paths(path: str, clean: bool) -> None:
    assert is_clean_absolute_path(path) is clean


def test_is_under() -> None:
    assert is_under("/srv/data/x", "/srv/data")
    assert is_under("/srv/data", "/srv/data/")
    assert not is_under("/srv/database", "/srv/data")
