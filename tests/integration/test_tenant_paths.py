"""#28 items 6 and 15 against the real stack: hostPath roots per namespace, a grow
the node cannot hold, request names that are not names, and holder names kept from
other tenants. Test names carry the item of issue #28 they show."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import only_container, sh, wait_settled
from tests.stack.agent_process import AgentProcess
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.processes import free_port
from tests.stack.resources import apply, condition, containers, gpu_replica_set

MiB = 2**20


def _wait_refused(stack: LocalStack, namespace: str, name: str, reason: str) -> None:
    wait_for(lambda: condition(stack, namespace, name, "Degraded").get("reason") == reason,
             45, what=f"{name} refused with {reason} (now "
                      f"{condition(stack, namespace, name, 'Degraded')})")


# ---------------------------------------------------------------- 6: roots per namespace
def test_item6_a_namespace_root_is_that_namespaces_alone(
    stack: LocalStack, namespace: str, other_namespace: str, start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    nfs, datasets, shared = tmp_path / "mynfs", tmp_path / "datasets", tmp_path / "shared"
    for tenant in (namespace, other_namespace):
        (nfs / tenant / "home").mkdir(parents=True)
        (datasets / tenant / "set").mkdir(parents=True)
    shared.mkdir()
    start_agent(extra_args=[
        "--namespace", other_namespace, "--resync-seconds", "2",
        "--allowed-host-path", f"{nfs}/{{namespace}}",
        "--read-only-host-path", f"{datasets}/{{namespace}}",
        "--allowed-host-path", str(shared)])  # no placeholder: shared by all
    # Tenant B keeps a file in its own directory.
    apply(stack, other_namespace, gpu_replica_set("b", gpus=0, mounts=[
        {"hostPath": str(nfs / other_namespace / "home"), "mountPath": "/home"}]))
    wait_settled(stack, other_namespace, "b")
    sh(only_container(stack, other_namespace, "b"), "echo mine > /home/secret")
    # Tenant A mounts its own directory, its own data set read-only and the shared root.
    apply(stack, namespace, gpu_replica_set("a", gpus=0, mounts=[
        {"hostPath": str(nfs / namespace / "home"), "mountPath": "/home"},
        {"hostPath": str(datasets / namespace / "set"), "mountPath": "/set",
         "readOnly": True},
        {"hostPath": str(shared), "mountPath": "/shared"}]))
    wait_settled(stack, namespace, "a")
    # From inside, A plants a symlink to B's directory in its own.
    sh(only_container(stack, namespace, "a"),
       f"ln -s {nfs / other_namespace} /home/to-b && echo a > /shared/from-a")
    attacks: dict[str, tuple[dict[str, Any], str]] = {
        "parent": ({"hostPath": str(nfs)}, "HostPathNotAllowed"),
        "other": ({"hostPath": str(nfs / other_namespace / "home")}, "HostPathNotAllowed"),
        "link": ({"hostPath": str(nfs / namespace / "home" / "to-b")}, "HostPathNotAllowed"),
        "dataset": ({"hostPath": str(datasets / other_namespace / "set"), "readOnly": True},
                    "HostPathNotAllowed"),
        "writable": ({"hostPath": str(datasets / namespace / "set")}, "HostPathReadOnly"),
    }
    apply(stack, namespace, *(gpu_replica_set(f"attack-{k}", gpus=0, mounts=[
        {**mount, "mountPath": "/host"}]) for k, (mount, _) in attacks.items()))
    for key, (_, reason) in attacks.items():
        _wait_refused(stack, namespace, f"attack-{key}", reason)
    message = condition(stack, namespace, "attack-other", "Degraded")["message"]
    assert f"{nfs}/{namespace}" in message  # the roots this namespace has, expanded
    assert {c.labels["gpudock.dev/name"] for c in containers(stack, namespace)} == {"a"}
    assert (nfs / other_namespace / "home" / "secret").read_text() == "mine\n"
    assert (shared / "from-a").read_text() == "a\n"


# ---------------------------------------------------------- 15a: a grow the node cannot hold
def _volume(name: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
            "metadata": {"name": name}, "spec": {"nodeName": "gpu-node-1", "size": size}}


def _svol(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    found = stack.kubectl("get", "svol", name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(found.stdout).get("status") or {}) if found.returncode == 0 else {}


def _svol_reason(stack: LocalStack, namespace: str, name: str) -> str | None:
    return next((c.get("reason") for c in _svol(stack, namespace, name).get("conditions") or ()
                 if c.get("type") == "Degraded" and c.get("status") == "True"), None)


def test_item15a_a_100Ti_grow_is_refused_and_nothing_changes(  # noqa: N802
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent(extra_args=["--resync-seconds", "2"])
    apply(stack, namespace, _volume("data", "64Mi"))
    wait_for(lambda: _svol(stack, namespace, "data").get("sizeBytes") == 64 * MiB, 45,
             what=f"data Ready at 64Mi (now {_svol(stack, namespace, 'data')})")
    images = list(agent.state_dir.glob("volumes/images/*.ext4"))
    assert len(images) == 1
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"size": "100Ti"}}))
    wait_for(lambda: _svol_reason(stack, namespace, "data") == "InsufficientSpace", 30,
             what=f"the grow refused (now {_svol(stack, namespace, 'data')}; agent log: "
                  f"{agent.log()[-3000:]})")
    refused = _svol(stack, namespace, "data")
    assert refused["phase"] == "Ready"  # it still serves, at its old size
    assert refused["sizeBytes"] == 64 * MiB
    assert refused["volumeName"]
    assert "100Ti" in next(c["message"] for c in refused["conditions"]
                           if c["type"] == "Degraded")
    assert images[0].stat().st_size == 64 * MiB  # not a byte added
    time.sleep(5)  # two resyncs: refused again, quietly, and the daemon still runs
    assert _svol_reason(stack, namespace, "data") == "InsufficientSpace"
    assert "Traceback" not in agent.log()
    # A size the node has room for is grown as usual.
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"size": "96Mi"}}))
    wait_for(lambda: _svol(stack, namespace, "data").get("sizeBytes") == 96 * MiB
             and _svol_reason(stack, namespace, "data") is None, 45,
             what=f"data grown to 96Mi (now {_svol(stack, namespace, 'data')})")


# ------------------------------------------------------- 15b: a replicaSetName that is no name
def _request(kind: str, name: str, target: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicaSetName": target}
    spec.update({"command": ["true"]} if kind == "ExecRequest" else
                {"image": "gpudock-test/saved:1"})
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": kind, "metadata": {"name": name},
            "spec": spec}


def _phase_reason(stack: LocalStack, namespace: str, plural: str, name: str) -> tuple[Any, Any]:
    found = stack.kubectl("get", plural, name, "-n", namespace, "-o", "json", check=False)
    body = json.loads(found.stdout) if found.returncode == 0 else {}
    status = body.get("status") or {}
    return status.get("phase"), status.get("reason")


def test_item15b_a_replica_set_name_with_a_slash_is_refused_with_a_reason(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent()
    for kind, plural in (("ExecRequest", "execrequests"), ("ImageCommit", "imagecommits")):
        for target in ("box/x", "../box", "Box"):
            body = _request(kind, "bad", target)
            made = stack.kubectl("create", "-n", namespace, "-f", "-",
                                 input=yaml.safe_dump(body), check=False)
            if made.returncode == 0:  # admitted: what does the agent make of it?
                time.sleep(10)
                seen = _phase_reason(stack, namespace, plural, "bad")
                pytest.fail(f"{kind} with replicaSetName {target!r} was admitted; 10 s "
                            f"later its (phase, reason) is {seen}; agent log: "
                            f"{agent.log()[-2000:]}")
            assert "spec.replicaSetName" in made.stderr, made.stderr
    ran = stack.kubectl("gpudock", "-n", namespace, "exec", "box/x", "--", "true",
                        check=False)
    assert (ran.returncode, ran.stderr) == (2, "error: 'box/x' is not a GpuReplicaSet name\n")
    # A well-formed name that names nothing still fails with its reason.
    apply(stack, namespace, _request("ExecRequest", "nobody", "nobody"))
    wait_for(lambda: _phase_reason(stack, namespace, "execrequests", "nobody")
             == ("Failed", "ReplicaSetNotFound"), 30, what="ReplicaSetNotFound")


# ------------------------------------------------------ 15c: holder names kept from tenants
def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _gpu_node(stack: LocalStack) -> dict[str, Any]:
    found = stack.kubectl("get", "gpunode", "gpu-node-1", "-o", "json", check=False)
    return dict(json.loads(found.stdout).get("status") or {}) if found.returncode == 0 else {}


def test_item15c_hide_holder_names_keeps_instance_names_off_the_node_and_metrics(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    port = free_port()
    agent: AgentProcess = start_agent(gpus=4, extra_args=[
        "--hide-holder-names", "--metrics-port", str(port)])
    apply(stack, namespace, gpu_replica_set("secret-project", gpus=2,
                                            ports=[{"containerPort": 22}]))
    wait_settled(stack, namespace, "secret-project")
    wait_for(lambda: _gpu_node(stack).get("gpusAllocated") == 2, 30,
             what=f"GpuNode with 2 GPUs held (now {_gpu_node(stack)})")
    node = _gpu_node(stack)
    held = [g["holder"] for g in node["gpus"] if g.get("holder")]
    assert held == [{"held": True}, {"held": True}]
    assert [b["holder"] for b in node["ports"]["bindings"]] == [{"held": True}]
    assert node["gpusFree"] == 2
    for text in (json.dumps(node), _scrape(port),
                 stack.kubectl("gpudock", "nodes").stdout,
                 stack.kubectl("gpudock", "ports", "gpu-node-1").stdout):
        assert "secret-project" not in text
        assert namespace not in text
    assert stack.kubectl("gpudock", "nodes").stdout.count("<held>") == 2
    assert agent.healthy()
