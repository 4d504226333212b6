"""#28 items 6 and 15 without the stack: hostPath roots per namespace (api/paths.py,
adapters/host_paths.py, the reconciler through the fakes), a grow the node cannot
hold, request names that are not names, and holder names left out."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from gpudock.adapters.host_paths import HostPathPolicy
from gpudock.api.paths import expand_roots, root_problem
from gpudock.errors import UserError
from gpudock.settings import SettingsError, add_agent_arguments, settings_from
from tests.unit.fakes.node import NAMESPACE, Node


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
