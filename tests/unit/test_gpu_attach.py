"""The GPU attachment seam (core/gpu_attach.py): each --gpu-attach way gives exactly the
container config it gave before the seam, and a new way plugs in by one table line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import pytest

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.core import labels
from gpudock.core.container_config import ContainerConfig, build_container_config
from gpudock.core.gpu_attach import (
    GPU_ATTACHMENTS,
    AttachedGpus,
    DeviceRequests,
    GpuAttachment,
    NvidiaRuntime,
)
from gpudock.core.observed import ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set import plan as core
from gpudock.core.replica_set.observation import Observation
from gpudock.settings import Settings, SettingsError, settings_from
from gpudock.settings_flags import add_agent_arguments

KEY = ResourceKey("team-a", "knock")
TWO = ("GPU-0", "GPU-1")
NVD = "NVIDIA_VISIBLE_DEVICES"
# The user's env names NVIDIA_VISIBLE_DEVICES between two others (its place in the
# env Docker is given is part of what must not change), or does not name it.
NAMED = [{"name": "A", "value": "1"}, {"name": NVD, "value": "all"}, {"name": "B", "value": "2"}]
UNNAMED = [{"name": "A", "value": "1"}]


def _spec(env: list[dict[str, str]], gpu_count: int = 0) -> GpuReplicaSetSpec:
    return GpuReplicaSetSpec.parse({"nodeName": "n1", "image": "img", "env": env,
                                    "gpuCount": gpu_count, "imagePullPolicy": "IfNotPresent"})


def _config(gpu_attach: GpuAttachment, gpus: tuple[str, ...],
            env: list[dict[str, str]]) -> ContainerConfig:
    return build_container_config(KEY, "uid-1", _spec(env, len(gpus)), revision=3, gpus=gpus,
                                  ports=(), volume_names={}, gpu_attach=gpu_attach,
                                  node_name="n1")


# (--gpu-attach, GPUs, spec env) -> (env items in order, runtime, gpu_device_ids): what
# container_config.py built before the seam (use_device_requests False / True).
TODAY: list[tuple[str, tuple[str, ...], list[dict[str, str]],
                  list[tuple[str, str]], str | None, tuple[str, ...]]] = [
    ("runtime", (), NAMED, [("A", "1"), (NVD, "void"), ("B", "2")], None, ()),
    ("runtime", TWO, NAMED, [("A", "1"), (NVD, "GPU-0,GPU-1"), ("B", "2")], "nvidia", ()),
    ("runtime", (), UNNAMED, [("A", "1"), (NVD, "void")], None, ()),
    ("runtime", TWO, UNNAMED, [("A", "1"), (NVD, "GPU-0,GPU-1")], "nvidia", ()),
    ("device-requests", (), NAMED, [("A", "1"), ("B", "2"), (NVD, "void")], None, ()),
    ("device-requests", TWO, NAMED, [("A", "1"), ("B", "2")], None, TWO),
    ("device-requests", (), UNNAMED, [("A", "1"), (NVD, "void")], None, ()),
    ("device-requests", TWO, UNNAMED, [("A", "1")], None, TWO),
]


@pytest.mark.parametrize(("way", "gpus", "env", "want_env", "runtime", "device_ids"), TODAY)
def test_each_way_builds_todays_config(way: str, gpus: tuple[str, ...],
                                       env: list[dict[str, str]],
                                       want_env: list[tuple[str, str]], runtime: str | None,
                                       device_ids: tuple[str, ...]) -> None:
    config = _config(GPU_ATTACHMENTS[way], gpus, env)
    # ... and CONTAINER_VERSION, the revision, last (#25 item 4).
    assert list(config.env.items()) == [*want_env, ("CONTAINER_VERSION", "3")]
    assert config.runtime == runtime
    assert config.gpu_device_ids == device_ids
    assert config.gpus == gpus
    assert config.labels[labels.GPUS] == ",".join(gpus)


@pytest.mark.parametrize("gpus", [(), TWO])
@pytest.mark.parametrize("env", [NAMED, UNNAMED])
def test_the_way_changes_nothing_but_env_runtime_and_device_ids(
        gpus: tuple[str, ...], env: list[dict[str, str]]) -> None:
    def rest(config: ContainerConfig) -> ContainerConfig:
        return replace(config, env={}, runtime=None, gpu_device_ids=())

    runtime, requests = (_config(w, gpus, env) for w in (NvidiaRuntime(), DeviceRequests()))
    assert rest(runtime) == rest(requests)


def test_the_table_is_the_flag_and_runtime_is_the_default() -> None:
    assert set(GPU_ATTACHMENTS) == {"runtime", "device-requests"}
    assert GPU_ATTACHMENTS["runtime"] == NvidiaRuntime()
    assert GPU_ATTACHMENTS["device-requests"] == DeviceRequests()
    assert Observation.__dataclass_fields__["gpu_attach"].default == NvidiaRuntime()
    assert _parse([]).gpu_attach == NvidiaRuntime()
    assert _parse(["--gpu-attach", "device-requests"]).gpu_attach == DeviceRequests()
    assert _parse([], {"GPUDOCK_GPU_ATTACH": "device-requests"}).gpu_attach == DeviceRequests()
    with pytest.raises(SettingsError, match="--gpu-attach must be one of runtime, device-"):
        _parse([], {"GPUDOCK_GPU_ATTACH": "cdi"})


@dataclass(frozen=True)
class CdiLike:
    """A way the code does not know: CDI device names through the nvidia runtime."""

    def attach(self, gpus: tuple[str, ...]) -> AttachedGpus:
        return AttachedGpus(runtime="nvidia" if gpus else None, unset_env=(NVD,),
                            env={NVD: ",".join(f"nvidia.com/gpu={g}" for g in gpus) or "void"})


def test_a_new_way_is_one_table_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GPU_ATTACHMENTS, "cdi", CdiLike())  # the one line

    settings = _parse(["--gpu-attach", "cdi"])
    obs = Observation(
        key=KEY, uid="uid-1", generation=1, spec=_spec(NAMED, 2), previous_status={},
        containers=(), inventory=("GPU-0", "GPU-1", "GPU-2"), port_range=(40000, 40010),
        allowed_host_paths=(), images_present=frozenset({"img"}),
        gpu_attach=settings.gpu_attach)
    (action,) = core.plan_replica_set(obs).actions
    assert isinstance(action, act.StartRevision)
    assert list(action.config.env.items()) == [
        ("A", "1"), ("B", "2"), (NVD, "nvidia.com/gpu=GPU-0,nvidia.com/gpu=GPU-1"),
        ("CONTAINER_VERSION", "1")]
    assert action.config.runtime == "nvidia"
    assert action.config.gpu_device_ids == ()
    assert action.config.gpus == TWO


def _parse(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return settings_from(parser.parse_args(["--node-name", "n1", *argv]), env or {})
