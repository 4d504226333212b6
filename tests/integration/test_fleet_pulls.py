"""#22 items 9 and 10 against the real stack and a real registry (Debian's
docker-registry with htpasswd auth on 127.0.0.1, tests/stack/registry.py): a private
image pulled with its Secret (status.imagePull seen, then Ready), a wrong password
answered with ErrImagePull then ImagePullBackOff with a growing wait, Never without the
image, and an image pulled with one namespace's Secret refused to another namespace
until its own credentials can pull it. The passwords appear nowhere: not in the
agent's log, a status or an event."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import wait_settled
from tests.integration.test_security import _wait_reason
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack, wait_for
from tests.stack.registry import Registry
from tests.stack.resources import apply, containers, gpu_replica_set, grs

pytestmark = pytest.mark.timeout(300)

ALICE = f"alice-pw-{secrets.token_hex(6)}"  # distinctive: grepped for everywhere
BOB = f"bob-pw-{secrets.token_hex(6)}"
WRONG = f"wrong-pw-{secrets.token_hex(6)}"
PASSWORDS = (ALICE, BOB, WRONG)


@pytest.fixture(scope="module")
def registry(stack: LocalStack) -> Iterator[Registry]:
    with Registry(stack.base_dir / f"registry-{secrets.token_hex(3)}",
                  {"alice": ALICE, "bob": BOB}) as running:
        yield running


def _push(stack: LocalStack, registry: Registry, repository: str) -> str:
    """An image of busybox and a layer of its own, in the registry and not on the node."""
    client = stack.docker_client()
    try:
        return registry.push_new(client, BUSYBOX_IMAGE, repository, "1", "alice")
    finally:
        client.close()


def _secret(stack: LocalStack, registry: Registry, namespace: str, name: str, user: str,
            password: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "data": registry.dockerconfigjson(user, password)}
    apply(stack, namespace, body)


def _events(stack: LocalStack, namespace: str, name: str) -> list[dict[str, Any]]:
    items = stack.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                               f"involvedObject.name={name}")["items"]
    assert isinstance(items, list)
    return sorted(items, key=lambda e: (e.get("firstTimestamp") or "",
                                        e["metadata"]["creationTimestamp"]))


class StatusWatch:
    """Every status a GpuReplicaSet is written with, from `kubectl get -w`."""

    def __init__(self, stack: LocalStack, namespace: str, name: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self.errors = ""
        self._process = subprocess.Popen(
            [str(stack.kubectl_path), "get", "gpureplicasets.gpudock.dev", "-n", namespace,
             "--watch", "--output-watch-events", "-o", "json",
             f"--field-selector=metadata.name={name}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                self.seen.append((event.get("object") or {}).get("status") or {})

    def stop(self) -> None:
        self._process.terminate()
        _, self.errors = self._process.communicate(timeout=10)
        self._reader.join(10)


def _assert_no_password(stack: LocalStack, agent_log: str, *namespaces: str) -> None:
    found = [agent_log]
    for namespace in namespaces:
        found.append(stack.kubectl("get", "grs", "-n", namespace, "-o", "json").stdout)
        found.append(stack.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    text = "\n".join(found)
    for password in PASSWORDS:
        assert password not in text


# ------------------------------------------------------------------------- item 9
def test_22_9_a_private_image_is_pulled_with_its_secret_and_its_progress_shown(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, registry: Registry,
) -> None:
    image = _push(stack, registry, f"private/{namespace}-box")
    agent = start_agent()
    _secret(stack, registry, namespace, "pull", "alice", ALICE)
    watch = StatusWatch(stack, namespace, "box")
    try:
        apply(stack, namespace, gpu_replica_set("box", gpus=0, image=image,
                                                imagePullSecrets=[{"name": "pull"}]))
        status = wait_settled(stack, namespace, "box", revision=1)
    finally:
        watch.stop()
    pulls = [s["imagePull"] for s in watch.seen if s.get("imagePull")]
    assert pulls, ([(s.get("phase"), s.get("reason"), s.get("imagePull"))
                    for s in watch.seen], watch.errors)
    assert pulls[0]["image"] == image
    assert pulls[0]["layersTotal"] >= 1
    assert pulls[0]["bytesTotal"] > 0
    assert all(p["bytesDone"] <= p["bytesTotal"] and p["layersDone"] <= p["layersTotal"]
               for p in pulls)
    assert status.get("imagePull") is None  # cleared once done
    assert "Pulled" in [e["reason"] for e in _events(stack, namespace, "box")]
    (container,) = containers(stack, namespace)
    client = stack.docker_client()
    try:
        pulled = client.images.get(image).id
    finally:
        client.close()
    assert container.attrs["Image"] == pulled
    record = json.loads(stack.kubectl("get", "grs", "box", "-n", namespace, "-o",
                                      "json").stdout)["status"]
    assert record["history"][0]["image"] == image
    _assert_no_password(stack, agent.log(), namespace)


def test_22_9_a_wrong_password_gives_err_image_pull_then_a_growing_back_off(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, registry: Registry,
) -> None:
    image = _push(stack, registry, f"private/{namespace}-denied")
    agent = start_agent()
    _secret(stack, registry, namespace, "pull", "alice", WRONG)
    apply(stack, namespace, gpu_replica_set("denied", gpus=0, image=image,
                                            imagePullSecrets=[{"name": "pull"}]))
    message = _wait_reason(stack, namespace, "denied", "ErrImagePull")
    assert "unauthorized" in message.lower() or "authentication" in message.lower(), message

    def back_offs() -> list[int]:
        return [int(m.group(1)) for e in _events(stack, namespace, "denied")
                if e["reason"] == "ImagePullBackOff"
                and (m := re.search(r"Back-off (\d+)s", e.get("message") or ""))]

    wait_for(lambda: len(set(back_offs())) >= 2, 120, interval=1,
             what=f"two back-offs (events: {back_offs()})")
    waits = back_offs()
    assert waits[:2] == [10, 20], waits  # the kubelet's: 10 s, doubling
    reasons = [e["reason"] for e in _events(stack, namespace, "denied")]
    first_backoff = reasons.index("ImagePullBackOff")
    assert "ErrImagePull" in reasons[:first_backoff]  # ErrImagePull first, then back-off
    assert reasons.count("ErrImagePull") >= 2  # retried after the back-off
    assert containers(stack, namespace) == []
    assert grs(stack, namespace, "denied")["status"]["phase"] != "Running"
    _assert_no_password(stack, agent.log(), namespace)
    _secret(stack, registry, namespace, "pull", "alice", ALICE)  # fixed: pulled next try
    wait_settled(stack, namespace, "denied", revision=1, timeout=120)


def test_22_9_never_without_the_image_gives_image_not_present(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, registry: Registry,
) -> None:
    image = _push(stack, registry, f"private/{namespace}-never")
    start_agent()
    _secret(stack, registry, namespace, "pull", "alice", ALICE)
    apply(stack, namespace, gpu_replica_set("never", gpus=0, image=image,
                                            imagePullPolicy="Never",
                                            imagePullSecrets=[{"name": "pull"}]))
    message = _wait_reason(stack, namespace, "never", "ImageNotPresent")
    assert "Never" in message
    assert containers(stack, namespace) == []
    client = stack.docker_client()
    try:
        assert not client.images.list(name=image.rsplit(":", 1)[0])  # nothing pulled
    finally:
        client.close()


# ------------------------------------------------------------------------ item 10
def test_22_10_an_image_pulled_with_one_namespaces_secret_needs_the_others_own(
    stack: LocalStack, namespace: str, other_namespace: str, start_agent: AgentFactory,
    registry: Registry,
) -> None:
    image = _push(stack, registry, f"private/{namespace}-shared")
    agent = start_agent(extra_args=["--namespace", other_namespace])
    _secret(stack, registry, namespace, "pull", "alice", ALICE)
    apply(stack, namespace, gpu_replica_set("a", gpus=0, image=image,
                                            imagePullSecrets=[{"name": "pull"}]))
    wait_settled(stack, namespace, "a", revision=1)
    # The image is on the node now; IfNotPresent (a tag) would not pull it again.
    apply(stack, other_namespace, gpu_replica_set("none", gpus=0, image=image))
    message = _wait_reason(stack, other_namespace, "none", "ErrImagePull")
    assert "another namespace's credentials" in message, message
    _secret(stack, registry, other_namespace, "wrong", "bob", WRONG)
    apply(stack, other_namespace, gpu_replica_set("wrong", gpus=0, image=image,
                                                  imagePullSecrets=[{"name": "wrong"}]))
    message = _wait_reason(stack, other_namespace, "wrong", "ErrImagePull")
    assert "another namespace's credentials" in message, message
    assert containers(stack, other_namespace) == []
    _secret(stack, registry, other_namespace, "own", "bob", BOB)
    apply(stack, other_namespace, gpu_replica_set("own", gpus=0, image=image,
                                                  imagePullSecrets=[{"name": "own"}]))
    wait_settled(stack, other_namespace, "own", revision=1)
    (mine,) = containers(stack, namespace)
    (theirs,) = containers(stack, other_namespace)
    assert theirs.attrs["Image"] == mine.attrs["Image"]  # the same image, proved, not pulled
    _assert_no_password(stack, agent.log(), namespace, other_namespace)
