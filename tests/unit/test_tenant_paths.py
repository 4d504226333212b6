"""#28 items 6 and 15 without the stack: hostPath roots per namespace (api/paths.py,
adapters/host_paths.py, the reconciler through the fakes), a grow the node cannot
hold, request names that are not names, and holder names left out."""

from __future__ import annotations

import argparse
import asyncio
import errno
import io
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO, cast

import kopf
import pytest

from gpudock import metrics
from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.adapters.volumes import loopfile
from gpudock.agent import exec_runner
from gpudock.agent.handlers import requests
from gpudock.agent.request_slots import RequestSlots
from gpudock.agent.wiring import NodeAgent
from gpudock.api.container_fields import Protocol
from gpudock.api.exec_request import ExecRequestSpec
from gpudock.api.image_commit import ImageCommitSpec
from gpudock.api.parsing import DNS_SUBDOMAIN_PATTERN
from gpudock.api.paths import expand_roots, root_problem
from gpudock.api.reasons import Reason
from gpudock.cli import kubectl_plugin
from gpudock.core import volumes as core
from gpudock.core.gpu_node import gpu_node_status
from gpudock.core.gpus import GpuDevice
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.core.volume_revision import VolumeRevision
from gpudock.errors import SpecError, UserError
from gpudock.settings import SettingsError, settings_from
from gpudock.settings_flags import add_agent_arguments
from tests.unit.fakes.kube import InMemoryKube
from tests.unit.fakes.node import NAMESPACE, Node
from tests.unit.test_crd_schema import _schema

MiB, TiB = 2**20, 2**40


# ---------------------------------------------------------------- 6: roots per namespace
def test_item6_a_template_root_expands_to_the_namespace_and_a_plain_root_is_shared() -> None:
    roots = ("/mynfs/{namespace}", "/shared", "/data/t-{namespace}/home")
    assert expand_roots(roots, "team-a") == ("/mynfs/team-a", "/shared",
                                             "/data/t-team-a/home")
    # Not a namespace name (no such resource exists): no template root at all.
    for odd in ("", "..", "a/b", "A", "a.b"):
        assert expand_roots(roots, odd) == ("/shared",)


@pytest.mark.parametrize(("root", "problem"), [
    ("/mynfs/{namespace}", None),
    ("/mynfs/t-{namespace}/x", None),
    ("/mynfs", None),
    ("/{namespace}", "first directory"),
    ("/t-{namespace}/x", "first directory"),
    ("/mynfs/{ns}", "no placeholder other than {namespace}"),
    ("/mynfs/{namespace", "no placeholder other than {namespace}"),
    ("mynfs/{namespace}", "clean absolute path"),
    ("/mynfs/../{namespace}", "clean absolute path"),
])
def test_item6_which_roots_the_agent_takes(root: str, problem: str | None) -> None:
    found = root_problem(root)
    assert (found is None) if problem is None else (problem in str(found))


def _settings(*argv: str, env: dict[str, str] | None = None) -> tuple[tuple[str, ...], ...]:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    made = settings_from(parser.parse_args(["--node-name", "n", *argv]), env or {})
    return made.allowed_host_paths, made.read_only_host_paths


def test_item6_settings_take_templates_from_flags_and_variables() -> None:
    assert _settings("--allowed-host-path", "/mynfs/{namespace}",
                     "--read-only-host-path", "/sets/{namespace}") == (
        ("/mynfs/{namespace}",), ("/sets/{namespace}",))
    assert _settings(env={"GPUDOCK_ALLOWED_HOST_PATHS": "/mynfs/{namespace}:/shared"}) == (
        ("/mynfs/{namespace}", "/shared"), ())
    for flag in ("--allowed-host-path", "--read-only-host-path"):
        with pytest.raises(SettingsError, match="no placeholder other than"):
            _settings(flag, "/mynfs/{ns}")  # a typo would be a root shared by all
        with pytest.raises(SettingsError, match="first directory"):
            _settings(flag, "/{namespace}")


def _refused(policy: HostPathPolicy, path: Path, namespace: str,
             read_only: bool = False) -> str:
    with pytest.raises(UserError) as caught:
        policy.resolve(str(path), namespace=namespace, read_only=read_only)
    return caught.value.reason


def test_item6_a_namespace_reaches_its_own_directory_and_no_neighbours(tmp_path: Path) -> None:
    nfs, sets, shared = tmp_path / "mynfs", tmp_path / "sets", tmp_path / "shared"
    for tenant in ("a", "b"):
        (nfs / tenant / "home").mkdir(parents=True)
        (sets / tenant).mkdir(parents=True)
    shared.mkdir()
    os.symlink(nfs / "b", nfs / "a" / "home" / "to-b")  # planted by tenant a
    os.symlink("../../b/home", nfs / "a" / "home" / "up")
    policy = HostPathPolicy((f"{nfs}/{{namespace}}", str(shared)), (f"{sets}/{{namespace}}",))
    assert policy.roots("a") == (str(nfs / "a"), str(shared), str(sets / "a"))
    assert policy.resolve(str(nfs / "a" / "home"), namespace="a", read_only=False) == \
        str(nfs / "a" / "home")
    assert policy.resolve(str(nfs / "b" / "home"), namespace="b", read_only=False) == \
        str(nfs / "b" / "home")
    assert policy.resolve(str(shared), namespace="a", read_only=False) == str(shared)
    assert policy.resolve(str(shared), namespace="b", read_only=False) == str(shared)
    assert policy.resolve(str(sets / "a"), namespace="a", read_only=True) == str(sets / "a")
    for path in (nfs, nfs / "b", nfs / "b" / "home", nfs / "a" / "home" / "to-b",
                 nfs / "a" / "home" / "up", sets / "b"):
        assert _refused(policy, path, "a", read_only=True) == "HostPathNotAllowed", path
    assert _refused(policy, sets / "a", "a") == "HostPathReadOnly"
    assert _refused(policy, nfs / "a" / "missing", "a") == "HostPathMissing"
    assert _refused(policy, nfs / "b" / "missing", "a") == "HostPathNotAllowed"  # no probing


def test_item6_the_reconciler_mounts_only_under_the_roots_of_the_resources_namespace(
    node: Node,
) -> None:
    nfs = node.tmp / "mynfs"
    for tenant in (NAMESPACE, "team-b"):
        (nfs / tenant / "data").mkdir(parents=True)
    node.start_agent("--allowed-host-path", f"{nfs}/{{namespace}}")
    node.apply("mine", mounts=[{"hostPath": str(nfs / NAMESPACE / "data"),
                                "mountPath": "/data"}])
    node.apply("theirs", mounts=[{"hostPath": str(nfs / "team-b" / "data"),
                                  "mountPath": "/data"}])
    node.apply("parent", mounts=[{"hostPath": str(nfs), "mountPath": "/data"}])
    assert node.settle("mine")["phase"] == "Running"  # checked again before create, too
    node.docker.write_file(node.only_container("mine").id, "/data/out.txt", b"hi")
    assert (nfs / NAMESPACE / "data" / "out.txt").read_bytes() == b"hi"
    for name in ("theirs", "parent"):
        refused = node.settle(name)
        assert (refused["phase"], refused["reason"]) == ("Failed", "HostPathNotAllowed")
        assert f"allowed: {nfs}/{NAMESPACE})" in node.condition(name, "Degraded")["message"]
        assert node.containers(name) == []


def test_item6_the_chart_passes_templates_and_mounts_the_directory_above_them() -> None:
    from tests.stack.helm_chart import lint, lint_failures, objects, render

    values = {"agent": {"allowedHostPaths": ["/mynfs/{namespace}", "/shared"],
                        "readOnlyHostPaths": ["/sets/t-{namespace}/ro", "/mynfs/{namespace}"]}}
    assert lint_failures(lint(values)) == []
    daemonset = next(o for o in objects(render(values)) if o["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GPUDOCK_ALLOWED_HOST_PATHS"] == "/mynfs/{namespace}:/shared"
    assert env["GPUDOCK_READ_ONLY_HOST_PATHS"] == "/sets/t-{namespace}/ro:/mynfs/{namespace}"
    mounts = [(m["mountPath"], m["readOnly"]) for m in pod["containers"][0]["volumeMounts"]
              if m["name"].startswith("host-path-")]
    assert mounts == [("/mynfs", True), ("/shared", True), ("/sets", True)]
    volumes = [v["hostPath"] for v in pod["volumes"] if v["name"].startswith("host-path-")]
    assert volumes == [{"path": p, "type": "Directory"} for p in ("/mynfs", "/shared", "/sets")]


# ---------------------------------------------------------- 15a: a grow the node cannot hold
def _grow_to(size: int, free: int | None) -> core.VolumePlan:
    record = VolumeRevision("ns", "data", 1, "u", "loopfile", "/v", "vol", 64 * MiB, "t0")
    return core.plan_volume(core.VolumeObservation(
        key=ResourceKey("ns", "data"), uid="u", generation=2, size_bytes=size,
        backend=core.Backend("loopfile", "/v"), records=(record,), volume_id="vol",
        state=core.BackendState(64 * MiB, True, 60 * MiB, MiB), docker_volume_exists=True,
        free_bytes=free, now="t1"))


def test_item15a_a_grow_past_the_free_room_is_refused_and_the_volume_serves_on() -> None:
    refused = _grow_to(100 * TiB, free=TiB)
    assert refused.actions == ()
    assert (refused.status["phase"], refused.status["reason"], refused.status["volumeName"],
            refused.status["sizeBytes"]) == ("Ready", "InsufficientSpace", "vol", 64 * MiB)
    degraded = refused.status["conditions"][2]
    assert (degraded.status, degraded.reason) == (True, "InsufficientSpace")
    assert degraded.message.startswith("100Ti asked: growing from 64Mi needs ")
    assert "nothing was changed" in degraded.message
    assert _grow_to(TiB + 64 * MiB, free=TiB).actions == (
        core.ResizeVolume("vol", TiB + 64 * MiB, True),)  # exactly what is free: fine
    assert _grow_to(100 * TiB, free=None).actions  # not observed: not refused here


def test_item15a_the_reconciler_refuses_a_100_ti_grow_and_changes_nothing(node: Node) -> None:
    backend = node.use_in_place_volumes()  # 1 TiB free
    node.apply_volume("data", "64Mi")
    volume = node.reconcile_volume("data")["volumeName"]
    node.apply_volume("data", "100Ti")
    for _ in range(2):  # refused again at each resync, and said once
        status = node.reconcile_volume("data")
        assert (status["phase"], status["reason"], status["volumeName"],
                status["sizeBytes"]) == ("Ready", "InsufficientSpace", volume, 64 * MiB)
    assert backend.resizes == []
    assert [str(e.reason) for n, e in node.events if n == "data"].count(
        "InsufficientSpace") == 1
    node.apply_volume("data", "128Mi")  # what fits is grown as ever
    assert node.reconcile_volume("data")["sizeBytes"] == 128 * MiB


class _RefusingFile(io.FileIO):
    """An image file whose filesystem refuses to make it longer."""

    code = 0

    def truncate(self, size: int | None = None) -> int:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize(("code", "reason"), [(errno.EFBIG, "VolumeTooLarge"),
                                              (errno.ENOSPC, "InsufficientSpace")])
def test_item15a_what_the_filesystem_refuses_is_a_refusal_not_an_escape(
    tmp_path: Path, code: int, reason: str,
) -> None:
    with _RefusingFile(tmp_path / "vol.ext4", "w") as image:
        image.code = code
        with pytest.raises(UserError) as caught:
            loopfile._lengthen(cast(BinaryIO, image), 100 * TiB, Path("/v"))
    assert caught.value.reason == reason
    assert "100Ti" in caught.value.message
    assert "nothing was changed" in caught.value.message
    assert (tmp_path / "vol.ext4").stat().st_size == 0


def test_item15a_loopfile_create_leaves_no_partial_image_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(handle: BinaryIO, size: int, root: Path) -> None:
        raise UserError(Reason.VOLUME_TOO_LARGE, "too large")

    monkeypatch.setattr(loopfile, "_lengthen", refuse)
    with pytest.raises(UserError):
        loopfile.LoopfileBackend(tmp_path).create("vol", 100 * TiB)
    assert list((tmp_path / "images").iterdir()) == []


# ------------------------------------------------------- 15b: a replicaSetName that is no name
NOT_NAMES = ("box/x", "../box", "Box", "box x", "-box", "b" * 254)


@pytest.mark.parametrize("target", NOT_NAMES)
def test_item15b_request_specs_refuse_what_is_no_object_name(target: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.replicaSetName .* is not a Kubernetes object"):
        ExecRequestSpec.parse({"replicaSetName": target, "command": ["true"]})
    with pytest.raises(SpecError, match=r"spec\.replicaSetName"):
        ImageCommitSpec.parse({"replicaSetName": target, "image": "team/x:1"})
    assert ExecRequestSpec.parse({"replicaSetName": "box.v2-a", "command": ["true"]})


def test_item15b_the_schema_refuses_it_first() -> None:
    for plural in ("execrequests", "imagecommits"):
        name = _schema(plural)["properties"]["replicaSetName"]
        assert (name["pattern"], name["maxLength"]) == (DNS_SUBDOMAIN_PATTERN, 253)


class _Kube(InMemoryKube):
    """Counts lookups: a name that is no name is never looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        self.lookups.append(f"{plural}/{name}")
        return super().get(plural, namespace, name)


def test_item15b_an_agent_whose_cluster_has_the_old_schema_fails_the_request_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CRD installed before the pattern (helm upgrade never upgrades CRDs) admits
    it: the agent fails it, InvalidSpec, instead of asking the API server for
    ``gpureplicasets/box/x`` (a 403 it took for a transient error: no status ever)."""
    kube = _Kube()
    kube.apply("execrequests", "ns", "bad", {"replicaSetName": "box/x", "command": ["true"]})
    body = kube.get("execrequests", "ns", "bad")
    with pytest.raises(SpecError):
        exec_runner.target_of(body, cast(Any, kube))
    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "event", lambda *_, **kw: posted.append(kw))
    agent = SimpleNamespace(settings=SimpleNamespace(node_name="n1"), now=lambda: "t1",
                            kube=kube, request_slots=RequestSlots(total=2, per_namespace=1))
    done = asyncio.run(requests._run(cast(NodeAgent, agent), requests.EXEC,
                                     cast(kopf.Body, body), logging.getLogger("test")))
    assert done
    status = kube.get("execrequests", "ns", "bad")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "'box/x' is not a Kubernetes object name" in status["conditions"][0]["message"]
    assert [p["reason"] for p in posted] == ["InvalidSpec"]
    assert not [name for name in kube.lookups if name.startswith("gpureplicasets")]


def test_item15b_the_plugin_says_so_before_it_asks_the_api_server() -> None:
    err = io.StringIO()
    assert kubectl_plugin.main(["--kubeconfig", "/nonexistent", "exec", "box/x", "--",
                                "true"], io.StringIO(), err) == 2
    assert "'box/x' is not a GpuReplicaSet name" in err.getvalue()


# ------------------------------------------------------ 15c: holder names kept from tenants
def _node_status(hide: bool) -> dict[str, Any]:
    devices = [GpuDevice(i, f"GPU-{i}", "A100", 80 * 2**30) for i in range(3)]
    held = ObservedContainer("c1", "team-a_secret-2", "running",
                             owner=ResourceKey("team-a", "secret"), revision=2,
                             gpus=("GPU-1",), port_bindings={(22, Protocol.TCP): 40001})
    return gpu_node_status(devices, [held], (40000, 40009), "0.1.0", "now",
                           hide_holders=hide)


def test_item15c_hidden_holders_say_held_and_nothing_else() -> None:
    shown, hidden = _node_status(False), _node_status(True)
    assert shown["gpus"][1]["holder"] == {"namespace": "team-a", "name": "secret",
                                          "revision": 2}
    assert [g["holder"] for g in hidden["gpus"]] == [None, {"held": True}, None]
    assert hidden["ports"]["bindings"] == [
        {"hostPort": 40001, "protocol": "TCP", "holder": {"held": True}}]
    for key in ("gpusTotal", "gpusAllocated", "gpusFree"):
        assert hidden[key] == shown[key]
    assert (hidden["ports"]["used"], hidden["ports"]["free"]) == (1, 9)
    assert "team-a" not in repr(hidden)
    assert "secret" not in repr(hidden)


def test_item15c_the_setting_comes_from_its_flag_or_variable() -> None:
    def hide(*argv: str, env: dict[str, str] | None = None) -> bool:
        parser = argparse.ArgumentParser()
        add_agent_arguments(parser)
        return settings_from(parser.parse_args(["--node-name", "n", *argv]),
                             env or {}).hide_holder_names

    assert not hide()
    assert hide("--hide-holder-names")
    assert hide(env={"GPUDOCK_HIDE_HOLDER_NAMES": "true"})
    assert not hide(env={"GPUDOCK_HIDE_HOLDER_NAMES": "false"})
    with pytest.raises(SettingsError, match="true or false"):
        hide(env={"GPUDOCK_HIDE_HOLDER_NAMES": "maybe"})


def test_item15c_no_metric_has_a_label_that_names_an_instance() -> None:
    """Metrics are read by whoever can scrape the node: they count, never name."""
    names = {"namespace", "name", "resource", "instance", "container", "holder"}
    for collector in list(metrics.REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        assert not labels & names, (collector, labels)


class _Nodes:
    def __init__(self, status: dict[str, Any]) -> None:
        self.body = {"metadata": {"name": "gpu-node-1"}, "status": status}

    def list_cluster(self, plural: str) -> list[dict[str, Any]]:
        return [self.body]

    def get_cluster(self, plural: str, name: str) -> dict[str, Any]:
        return self.body


def test_item15c_the_plugin_shows_a_hidden_holder_as_held() -> None:
    out = io.StringIO()
    kube = cast(Any, _Nodes(_node_status(True)))
    kubectl_plugin._nodes(kube, out)
    kubectl_plugin._ports(kube, "gpu-node-1", out)
    assert out.getvalue().count("<held>") == 2
    assert out.getvalue().count("<free>") == 2
    shown = io.StringIO()
    kubectl_plugin._nodes(cast(Any, _Nodes(_node_status(False))), shown)
    assert "team-a/secret (revision 2)" in shown.getvalue()


def test_item15c_the_chart_value_sets_the_variable() -> None:
    from tests.stack.helm_chart import objects, render

    def env(values: dict[str, Any]) -> dict[str, Any]:
        daemonset = next(o for o in objects(render(values)) if o["kind"] == "DaemonSet")
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert "GPUDOCK_HIDE_HOLDER_NAMES" not in env({})
    assert env({"agent": {"hideHolderNames": True}})["GPUDOCK_HIDE_HOLDER_NAMES"] == "true"
