"""#25 item 4: the annotation gpudock.dev/redeploy makes a new revision of the same spec,
set with `kubectl annotate` and with `kubectl gpudock restart`: the disk kept, GPUs and
ports kept, CONTAINER_VERSION of the new revision, the change cause a redeploy; the
same value seen again after an agent restart, or the annotation removed, makes none.
Real agent, dockerd and kube-apiserver."""

from __future__ import annotations

import io
import json

from gpudock.cli import kubectl_plugin
from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import LocalStack
from tests.stack.resources import env_of, grs

PORTS = [{"containerPort": 22}]
ANNOTATION = "gpudock.dev/redeploy"


def _restart(stack: LocalStack, namespace: str, name: str) -> str:
    """What `kubectl gpudock restart NAME --wait 90` prints."""
    out, err = io.StringIO(), io.StringIO()
    code = kubectl_plugin.main(["--kubeconfig", str(stack.kubeconfig), "-n", namespace,
                                "restart", name, "--wait", "90"], out=out, err=err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def _touch_spec(stack: LocalStack, namespace: str, limit: int) -> None:
    """A change that shapes nothing: once its generation is observed, the agent has
    reconciled with the annotations as they are now."""
    stack.kubectl("patch", "grs", "box", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"revisionHistoryLimit": limit}}))


def test_25_4_redeploy_makes_a_new_revision_of_the_same_spec_once(
        stack: LocalStack, namespace: str, start_agent: AgentFactory) -> None:
    # No resync within the test: only the annotation's change can wake the reconcile.
    agent = start_agent(gpus=2, extra_args=["--resync-seconds", "600"])
    apply_spec(stack, namespace, "box", "first", gpus=1, ports=PORTS)
    first = wait_settled(stack, namespace, "box", revision=1)
    touch_the_disk(stack, namespace)
    before = only_container(stack, namespace)
    generation = grs(stack, namespace, "box")["metadata"]["generation"]

    stack.kubectl("annotate", "grs", "box", "-n", namespace, f"{ANNOTATION}=one")
    second = wait_settled(stack, namespace, "box", revision=2)
    container = only_container(stack, namespace)
    assert container.id != before.id
    assert container.name == f"{namespace}_box-2"
    assert_disk_kept(stack, namespace)
    assert env_of(container)["CONTAINER_VERSION"] == "2"
    assert (second["gpus"], second["ports"]) == (first["gpus"], first["ports"])
    assert second["history"][-1]["changeCause"] == f"redeploy ({ANNOTATION}=one)"
    body = grs(stack, namespace, "box")
    assert body["metadata"]["generation"] == generation  # the spec is the same
    assert "redeploy" not in body["spec"]

    printed = _restart(stack, namespace, "box")
    assert printed.startswith(f"gpureplicaset {namespace}/box: restart requested ({ANNOTATION}=")
    assert printed.endswith("restarted: now revision 3 (phase Running)\n")
    third = wait_settled(stack, namespace, "box", revision=3)
    container = only_container(stack, namespace)
    assert env_of(container)["CONTAINER_VERSION"] == "3"
    assert_disk_kept(stack, namespace)
    assert third["gpus"] == first["gpus"]
    token = grs(stack, namespace, "box")["metadata"]["annotations"][ANNOTATION]
    assert third["history"][-1]["changeCause"] == f"redeploy ({ANNOTATION}={token})"

    agent.stop()  # the same value seen by a new agent: decided from the records
    start_agent(gpus=2, extra_args=["--resync-seconds", "600"])
    _touch_spec(stack, namespace, 5)
    wait_settled(stack, namespace, "box", revision=3)
    assert only_container(stack, namespace).id == container.id

    stack.kubectl("annotate", "grs", "box", "-n", namespace, f"{ANNOTATION}-")
    _touch_spec(stack, namespace, 6)  # removed: no redeploy either
    status = wait_settled(stack, namespace, "box", revision=3)
    assert only_container(stack, namespace).id == container.id
    assert [h["revision"] for h in status["history"]] == [1, 2, 3]
