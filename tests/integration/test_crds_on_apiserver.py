"""crds/ on a real kube-apiserver: the examples are accepted, bad objects refused with
the server's own validation message, defaults applied, printer columns served."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.stack.localstack import LocalStack

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _grs(**spec: object) -> str:
    base: dict[str, object] = {"nodeName": "gpu-node-1", "image": "busybox", "gpuCount": 1}
    base.update(spec)
    body = {"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuReplicaSet",
            "metadata": {"name": "bad"}, "spec": {k: v for k, v in base.items() if v is not None}}
    return yaml.safe_dump(body)


def _svol(size: str) -> str:
    return yaml.safe_dump({"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                           "metadata": {"name": "bad"},
                           "spec": {"nodeName": "gpu-node-1", "size": size}})


def test_crds_are_established_with_short_names(stack: LocalStack) -> None:
    names = stack.kubectl("api-resources", "--api-group=gpudock.dev").stdout
    assert "gpureplicasets" in names
    assert "grs" in names
    assert "sizedvolumes" in names
    assert "svol" in names


def test_examples_are_accepted_and_defaulted(stack: LocalStack, namespace: str) -> None:
    for example in sorted(EXAMPLES.glob("*.yaml")):
        stack.kubectl("apply", "-n", namespace, "-f", str(example))
    grs = stack.kubectl_json("get", "grs", "knock", "-n", namespace)
    spec = grs["spec"]
    assert isinstance(spec, dict)
    assert spec["gpuCount"] == 2
    assert spec["state"] == "Running"  # schema defaults
    assert spec["revisionHistoryLimit"] == 10
    assert spec["historyPolicy"] == "Retain"
    assert spec["ports"][0]["protocol"] == "TCP"
    svol = stack.kubectl_json("get", "svol", "data", "-n", namespace)
    assert svol["spec"] == {"nodeName": "gpu-node-1", "size": "1Gi"}
    table = stack.kubectl("get", "grs", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "NODE", "GPUS", "STATE", "PHASE", "REASON", "RESTARTS",
                                "REVISION", "AGE"]
    svol_table = stack.kubectl("get", "svol", "-n", namespace).stdout.splitlines()
    assert svol_table[0].split() == ["NAME", "NODE", "SIZE", "USED", "PHASE", "REASON", "AGE"]


@pytest.mark.parametrize(("manifest", "message"), [
    (_grs(gpuCount=-1), "spec.gpuCount: Invalid value: -1: spec.gpuCount in body should be "
                        "greater than or equal to 0"),
    (_grs(image=None), "spec.image: Required value"),
    (_grs(state="Sleeping"), 'spec.state: Unsupported value: "Sleeping"'),
    (_grs(mounts=[{"hostPath": "relative/dir", "mountPath": "/data"}]),
     "spec.mounts.hostPath: Invalid value: \"relative/dir\""),
    (_grs(mounts=[{"hostPath": "/srv/../etc", "mountPath": "/data"}]),
     "spec.mounts.hostPath: Invalid value: \"/srv/../etc\""),
    (_grs(mounts=[{"mountPath": "/data"}]), "spec.mounts"),
    (_grs(ports=[{"containerPort": 70000}]), "spec.ports.containerPort: Invalid value: 70000"),
    (_svol("12XB"), 'spec.size: Invalid value: "12XB"'),
])
def test_invalid_objects_are_refused_by_the_api_server(
    stack: LocalStack, namespace: str, manifest: str, message: str,
) -> None:
    # --validate=false: kubectl's own check is skipped, so the API server is what refuses.
    result = stack.kubectl("apply", "--validate=false", "-n", namespace, "-f", "-",
                           input=manifest, check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr
    assert message in result.stderr, result.stderr
    kind = "svol" if "SizedVolume" in manifest else "grs"
    listed = stack.kubectl("get", kind, "-n", namespace, "-o", "name").stdout
    assert listed.strip() == ""


def test_agent_manifests_are_accepted(stack: LocalStack) -> None:
    manifests = Path(__file__).resolve().parents[2] / "manifests" / "agent.yaml"
    stack.kubectl("apply", "-f", str(manifests))  # no kubelet here: the pods never run
    daemonset = stack.kubectl_json("get", "daemonset", "gpudock-agent", "-n", "gpudock-system")
    assert daemonset["metadata"]["name"] == "gpudock-agent"  # type: ignore[index]
    stack.kubectl("delete", "-f", str(manifests), "--wait=false")
