"""#22 items 9 and 10 in the pure core and on the fakes: pull policy defaulting,
credentials of a dockerconfigjson Secret, the record key, the kubelet's backoff, the
progress tally; pulls only when a container is made; a restore over a saved disk
never pulls (a moved tag cannot change what the disk sits on); an image pulled with
one namespace's Secret needs the other namespace's own credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gpudock.agent.replica_set_pulls import ImagePulls
from gpudock.api.gpu_replica_set import GpuReplicaSetSpec, PullPolicy, default_pull_policy
from gpudock.api.reasons import Reason
from gpudock.core import image_pulls
from gpudock.core.observed import ResourceKey
from gpudock.core.replica_set import actions as act
from gpudock.errors import ImagePullError, SpecError
from tests.unit.fakes.docker import InMemoryDocker
from tests.unit.fakes.kube import InMemoryKube
from tests.unit.fakes.node import Node

PRIVATE = "registry.example:5000/team/box:1"


def _config(host: str, user: str, password: str, *, auth_only: bool = False) -> dict[str, str]:
    entry = ({"auth": base64.b64encode(f"{user}:{password}".encode()).decode()} if auth_only
             else {"username": user, "password": password})
    raw = json.dumps({"auths": {host: entry}}).encode()
    return {".dockerconfigjson": base64.b64encode(raw).decode()}


@pytest.mark.parametrize(("image", "policy"), [
    ("busybox", PullPolicy.ALWAYS), ("busybox:latest", PullPolicy.ALWAYS),
    ("registry:5000/busybox", PullPolicy.ALWAYS), ("busybox:1", PullPolicy.IF_NOT_PRESENT),
    ("registry:5000/team/busybox:v2", PullPolicy.IF_NOT_PRESENT),
    ("busybox@sha256:" + "a" * 64, PullPolicy.IF_NOT_PRESENT),
])
def test_22_9_pull_policy_defaults_as_kubernetes(image: str, policy: PullPolicy) -> None:
    assert default_pull_policy(image) is policy
    assert GpuReplicaSetSpec.parse({"nodeName": "n", "image": image}).image_pull_policy \
        is policy


def test_22_9_pull_secrets_are_parsed_and_checked() -> None:
    spec = GpuReplicaSetSpec.parse({"nodeName": "n", "image": "x:1", "imagePullPolicy": "Never",
                                    "imagePullSecrets": [{"name": "a"}, {"name": "a"}]})
    assert (spec.image_pull_policy, spec.image_pull_secrets) == (PullPolicy.NEVER, ("a",))
    with pytest.raises(SpecError):
        GpuReplicaSetSpec.parse({"nodeName": "n", "image": "x", "imagePullPolicy": "Often"})
    with pytest.raises(SpecError):
        GpuReplicaSetSpec.parse({"nodeName": "n", "image": "x",
                                 "imagePullSecrets": [{"name": "Not/A/Name"}]})
    assert "imagePullPolicy" not in spec.shape()  # never a new revision


def test_22_9_registry_and_credentials_of_a_secret() -> None:
    assert image_pulls.registry_of("busybox") == "docker.io"
    assert image_pulls.registry_of("team/box:1") == "docker.io"
    assert image_pulls.registry_of("127.0.0.1:5000/box") == "127.0.0.1:5000"
    assert image_pulls.registry_of("localhost/box") == "localhost"
    data = _config("registry.example:5000", "u", "p")
    assert image_pulls.credentials_for(data, "registry.example:5000") == {
        "username": "u", "password": "p", "serveraddress": "registry.example:5000"}
    assert image_pulls.credentials_for(data, "docker.io") is None
    hub = _config("https://index.docker.io/v1/", "u", "p:q", auth_only=True)
    assert image_pulls.credentials_for(hub, "docker.io") == {
        "username": "u", "password": "p:q", "serveraddress": "https://index.docker.io/v1/"}
    assert image_pulls.credentials_for({".dockerconfigjson": "not base64!"}, "x") is None


def test_22_10_a_pull_is_recorded_by_the_secrets_identity_never_its_contents() -> None:
    key = image_pulls.credential_key("team-a", "pull", "uid-1")
    assert key.startswith("sha256:")
    assert key != image_pulls.credential_key("team-b", "pull", "uid-1")
    assert "team-a" not in key


def test_22_9_backoff_is_the_kubelets() -> None:
    assert [image_pulls.backoff_delay(n) for n in range(1, 8)] == [
        10, 20, 40, 80, 160, 300, 300]


def test_22_9_progress_counts_layers_and_bytes() -> None:
    tally = image_pulls.PullTally("x")
    for message in (
        {"status": "Pulling from team/x", "id": "1"},
        {"status": "Already exists", "id": "a"},
        {"status": "Pulling fs layer", "id": "b"},
        {"status": "Pulling fs layer", "id": "c"},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 5, "total": 10}},
        {"status": "Downloading", "id": "c", "progressDetail": {"current": 1, "total": 30}},
    ):
        tally.add(message)
    progress = tally.progress()
    assert (progress.layers_done, progress.layers_total) == (1, 3)
    assert (progress.bytes_done, progress.bytes_total) == (6, 40)
    tally.add({"status": "Pull complete", "id": "b"})
    tally.add({"status": "Download complete", "id": "c"})
    progress = tally.progress()
    assert (progress.layers_done, progress.bytes_done) == (2, 40)


# ------------------------------------------------------------------- on the fakes
def test_22_9_always_pulls_when_a_container_is_made_never_on_a_resync(node: Node) -> None:
    node.docker.registry["gpudock-test/busybox:latest"] = node.docker.registry[
        "gpudock-test/busybox:1"]
    node.apply("box", image="gpudock-test/busybox:latest")
    assert node.settle("box")["phase"] == "Running"
    assert node.docker.requests.count("pull_image") == 1
    assert "Pulled" in node.reasons("box")
    node.settle("box")  # a resync of a running instance
    assert node.docker.requests.count("pull_image") == 1
    node.docker.remove(node.only_container("box").id, "gone")  # made again: pulled again
    assert node.settle("box")["phase"] == "Running"
    assert node.docker.requests.count("pull_image") == 2


def test_22_9_if_not_present_pulls_only_an_absent_image(node: Node) -> None:
    node.docker.publish(PRIVATE)
    node.apply("box", image=PRIVATE)
    assert node.settle("box")["phase"] == "Running"
    assert node.status("box").get("imagePull") is None
    node.apply("other", image="gpudock-test/busybox:1")
    assert node.settle("other")["phase"] == "Running"
    assert node.docker.requests.count("pull_image") == 1


def test_22_9_a_restore_over_a_saved_disk_never_pulls_a_moved_tag(node: Node) -> None:
    image = "gpudock-test/busybox:latest"  # Always
    node.docker.registry[image] = node.docker.registry["gpudock-test/busybox:1"]
    node.apply("box", image=image)
    node.settle("box")
    node.docker.write_file(node.only_container("box").id, "/data.txt", b"mine")
    ran_on = node.docker.tags[image]
    node.apply("box", image=image, state="Stopped")
    assert node.settle("box")["phase"] == "Stopped"
    node.docker.publish(image, files={"/bin/sh": b"other"})  # the tag moves upstream
    pulls = node.docker.requests.count("pull_image")
    node.apply("box", image=image)
    assert node.settle("box")["phase"] == "Running"
    assert node.docker.requests.count("pull_image") == pulls  # not pulled over the disk
    assert node.docker.tags[image] == ran_on
    assert node.docker.container(node.only_container("box").id).files["/data.txt"] == b"mine"


def test_22_9_an_image_named_by_its_id_is_never_pulled(node: Node) -> None:
    """An ID has no tag, so Kubernetes' defaulting says Always; no registry serves an
    ID, so it is used as it is on the node (the CI failure of 2026-12-05: a saved
    disk named by its short ID was pulled instead of refused as ReservedImage)."""
    image_id = node.docker.tags["gpudock-test/busybox:1"]
    for name, reference in (("full", image_id), ("short", image_id[7:19])):
        node.apply(name, image=reference)
        assert node.settle(name)["phase"] == "Running"
    assert "pull_image" not in node.docker.requests


def test_22_9_never_without_the_image_is_image_not_present(node: Node) -> None:
    node.docker.publish(PRIVATE)
    node.apply("box", image=PRIVATE, imagePullPolicy="Never")
    assert node.settle("box")["reason"] == "ImageNotPresent"
    assert "pull_image" not in node.docker.requests


def test_22_10_another_namespace_proves_its_own_credentials(tmp_path: Path) -> None:
    docker = InMemoryDocker(tmp_path / "docker", lambda: "now")
    kube = InMemoryKube()
    docker.publish(PRIVATE)
    docker.registry_users["registry.example:5000"] = ("alice", "pw-a")
    for namespace, name, password in (("a", "pull", "pw-a"), ("b", "wrong", "nope"),
                                      ("b", "own", "pw-a")):
        kube.secrets[(namespace, name)] = {
            "type": image_pulls.SECRET_TYPE, "uid": f"uid-{namespace}-{name}",
            "data": _config("registry.example:5000", "alice", password)}
    pulls = ImagePulls(docker, kube, tmp_path / "state")
    pulls.ensure(ResourceKey("a", "x"), act.PullImage(PRIVATE, True, ("pull",)))
    image_id = docker.tags[PRIVATE]
    assert pulls.pulled_privately(image_id)
    for secrets in ((), ("wrong",), ("missing",)):
        with pytest.raises(ImagePullError) as refused:
            pulls.ensure(ResourceKey("b", f"y{len(secrets)}{secrets}"),
                         act.PullImage(PRIVATE, False, secrets))
        assert refused.value.reason == Reason.ERR_IMAGE_PULL
        assert "another namespace's credentials" in refused.value.message
    events = pulls.ensure(ResourceKey("b", "z"), act.PullImage(PRIVATE, False, ("own",)))
    assert [e.reason for e in events] == [Reason.PULLED]
    assert pulls.ensure(ResourceKey("b", "z2"), act.PullImage(PRIVATE, False, ("own",))) == []
    assert docker.requests.count("pull_image") == 1  # proved, never pulled again
    # A retry before the backoff has passed is ImagePullBackOff, with the wait.
    with pytest.raises(ImagePullError) as waiting:
        pulls.ensure(ResourceKey("b", "y0()"), act.PullImage(PRIVATE, False, ()))
    assert waiting.value.reason == Reason.IMAGE_PULL_BACK_OFF
    assert "Back-off 10s" in waiting.value.message
    records = (tmp_path / "state" / "image-pulls.json").read_text()
    assert "pw-a" not in records
    assert "alice" not in records
