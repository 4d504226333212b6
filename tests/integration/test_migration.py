"""#23 migration on a real fleet: two nodes, each an agent with its own dockerd; an
instance moved with every byte of its writable layer, its image (only on the source)
and its history, over the agents' authenticated transfer endpoint
(docs/migration.md)."""

from __future__ import annotations

import datetime
import functools
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.models.containers
import pytest

from gpudock.cli import kubectl_plugin
from tests.integration.fleet import Fleet, running_fleet
from tests.integration.revisions import sh
from tests.stack.localstack import LocalStack, wait_for

IMAGE = "gpudock-test/only-on-a:1"  # made on the source's dockerd only
XATTR = ("user.gpudock-test", b"moved")
# What the user's files look like from inside: checksums, modes, owners, sizes, link
# counts, the hard-link pair, the deleted image file, the sparse file's size and tail.
FINGERPRINT = """
for f in /root/random /root/twin /root/sparse /root/gone-from-image /etc/baked \
         /root/dir /root/dir/owned /root/fifo; do
  if [ -e "$f" ] || [ -L "$f" ]; then stat -c '%n %F %a %u:%g %s %h' "$f"
  else echo "$f absent"; fi
done
sha256sum /root/random /etc/baked /root/dir/owned
[ /root/random -ef /root/twin ] && echo "random and twin are one file"
tail -c 5 /root/sparse
"""
USER_CHANGES = """
mkdir -p /root/dir
head -c 67108864 /dev/urandom > /root/random
ln /root/random /root/twin
dd if=/dev/zero of=/root/sparse bs=1 count=0 seek=1073741824 2>/dev/null
printf tail! >> /root/sparse
rm /root/gone-from-image
echo owned > /root/dir/owned && chown 1234:5678 /root/dir/owned && chmod 640 /root/dir/owned
mkfifo /root/fifo
"""


@pytest.fixture
def fleet(stack: LocalStack, namespace: str) -> Iterator[Fleet]:
    _image_only_on_a(stack)
    with running_fleet(stack, namespace) as running:
        yield running


def _image_only_on_a(stack: LocalStack) -> None:
    """An image the second node's dockerd does not have: the migration streams it."""
    client = stack.engines[0].client()
    try:
        base = client.containers.create("gpudock-test/busybox:1", [
            "sh", "-c", "mkdir -p /root && echo baked > /etc/baked && "
            "echo from-image > /root/gone-from-image"])
        base.start()
        base.wait()
        base.commit("gpudock-test/only-on-a", "1")
        base.remove()
    finally:
        client.close()
    other = stack.engines[1].client() if len(stack.engines) > 1 else None
    if other is not None:
        try:
            if any(IMAGE in i.tags for i in other.images.list()):
                other.images.remove(IMAGE, force=True)
        finally:
            other.close()


ROOM_WAIT = 8  # --migration-target-wait where a test waits it out (default 300 s)


def _apply(fleet: Fleet, body: dict[str, Any]) -> None:
    fleet.stack.kubectl("apply", "-n", fleet.namespace, "-f", "-", input=json.dumps(body))


def _instance(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuReplicaSet",
            "metadata": {"name": name},
            "spec": {"image": IMAGE, "gpuCount": 1, "command": ["sleep", "100000"], **spec}}


def _migration(fleet: Fleet, name: str, instance: str, target: str) -> None:
    _apply(fleet, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuMigration",
                   "metadata": {"name": name},
                   "spec": {"replicaSetName": instance, "targetNode": target}})


def _get(fleet: Fleet, kind: str, name: str) -> dict[str, Any]:
    return fleet.stack.kubectl_json("get", kind, name, "-n", fleet.namespace)


def _status(fleet: Fleet, kind: str, name: str) -> dict[str, Any]:
    status = _get(fleet, kind, name).get("status") or {}
    assert isinstance(status, dict)
    return status


def _ready_on(fleet: Fleet, name: str, node: str, phase: str = "Running",
              revision: int | None = None) -> bool:
    status = _status(fleet, "grs", name)
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in status.get("conditions") or ())
    return status.get("nodeName") == node and status.get("phase") == phase and \
        (ready or phase != "Running") and (revision is None or
                                           status.get("revision") == revision)


def _container(fleet: Fleet, node: str, name: str) -> docker.models.containers.Container:
    found = [c for c in fleet.containers(node) if c.labels["gpudock.dev/name"] == name]
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def _merged(container: docker.models.containers.Container, path: str) -> Path:
    container.reload()
    return Path(f"/proc/{container.attrs['State']['Pid']}/root{path}")


def _items(fleet: Fleet, kind: str) -> list[dict[str, Any]]:
    items = fleet.stack.kubectl_json("get", kind, "-n", fleet.namespace)["items"]
    assert isinstance(items, list)
    return items


def _finished(fleet: Fleet, name: str) -> str:
    return str(_status(fleet, "gmig", name).get("phase") or "")


def _wait_phase(fleet: Fleet, name: str, *phases: str, timeout: float = 180) -> None:
    try:
        wait_for(lambda: _finished(fleet, name) in phases, timeout,
                 what=f"GpuMigration {name} {phases}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {_status(fleet, 'gmig', name)}") from None


def _user_disk(fleet: Fleet, node: str, name: str) -> str:
    container = _container(fleet, node, name)
    sh(container, USER_CHANGES)
    os.setxattr(_merged(container, "/root/random"), *XATTR)
    return sh(container, FINGERPRINT)


def _event_at(fleet: Fleet, node: str, container_id: str, event: str,
              since: float) -> float:
    """When the node's dockerd gave the container's first ``event`` (start, destroy)
    after ``since``."""
    client = fleet.engines[node].client()
    try:
        for seen in client.events(since=int(since) - 1, until=int(time.time()) + 1,
                                  filters={"container": container_id, "event": event},
                                  decode=True):
            return int(seen["timeNano"]) / 1e9
    finally:
        client.close()
    raise AssertionError(f"no {event} of {container_id[:12]} on {node}")


def _gpus_allocated(fleet: Fleet, node: str) -> int:
    """What the node's GpuNode says its agent holds (written at each heartbeat)."""
    status = fleet.stack.kubectl_json("get", "gpunode", node).get("status") or {}
    assert isinstance(status, dict)
    return int(status.get("gpusAllocated") or 0)


def _assert_disk(fleet: Fleet, node: str, name: str, fingerprint: str) -> None:
    container = _container(fleet, node, name)
    assert sh(container, FINGERPRINT) == fingerprint
    assert "/root/gone-from-image absent" in fingerprint
    assert "random and twin are one file" in fingerprint
    assert os.getxattr(_merged(container, "/root/random"), XATTR[0]) == XATTR[1]
    assert int(sh(container, "stat -c %b /root/sparse")) * 512 < 1 << 20  # holes kept


def test_23_2_a_running_instance_moves_byte_identical_and_rolls_back(fleet: Fleet) -> None:
    a, b = fleet.nodes
    _apply(fleet, _instance("mover", env=[{"name": "REV", "value": "1"}]))
    wait_for(lambda: _ready_on(fleet, "mover", a, revision=1), 90, what="mover on a")
    sh(_container(fleet, a, "mover"), "mkdir -p /root && echo one > /root/rev1-only")
    # Revision 2 (the disk carried), with the user's files: revision 1's saved disk
    # is history to move too.
    _apply(fleet, _instance("mover", env=[{"name": "REV", "value": "2"}]))
    wait_for(lambda: _ready_on(fleet, "mover", a, revision=2), 90, what="revision 2")
    sh(_container(fleet, a, "mover"), "rm /root/rev1-only")
    fingerprint = _user_disk(fleet, a, "mover")
    source_id, asked = str(_container(fleet, a, "mover").id), time.time()

    _migration(fleet, "move-it", "mover", b)
    _wait_phase(fleet, "move-it", "Succeeded", "Failed", "Cancelled")
    status = _status(fleet, "gmig", "move-it")
    assert status["phase"] == "Succeeded", status
    assert (status["sourceNode"], status["targetNode"]) == (a, b)
    assert status["downtimeSeconds"] > 0
    assert status["bytesDone"] >= 64 << 20
    assert "transferTokenSha256" in status
    assert "token" not in status
    # The target starts it as a new revision, from the disk revision 2 ended with.
    wait_for(lambda: _ready_on(fleet, "mover", b, revision=3), 60, what="mover on b")
    assert fleet.containers(a) == []  # nothing of it is left on the source
    # ... but only once b had run it, Ready, for --migration-hold-seconds (10 s): b
    # was Ready no sooner than its container started there (Docker's time, to the
    # nanosecond) nor than its Ready condition says (whole seconds, so at most that).
    ready = next(c for c in _status(fleet, "grs", "mover")["conditions"]
                 if c["type"] == "Ready")
    ready_since = max(datetime.datetime.fromisoformat(
        ready["lastTransitionTime"].replace("Z", "+00:00")).timestamp(),
        _event_at(fleet, b, str(_container(fleet, b, "mover").id), "start", asked))
    removed = _event_at(fleet, a, source_id, "destroy", asked)
    assert removed >= ready_since + 10, (removed - ready_since, ready)
    # Each GpuNode is written at its agent's heartbeat: b's may not have run since the
    # container started there (CI saw 0 once, a moment after a wrote its 0).
    wait_for(lambda: _gpus_allocated(fleet, a) == 0, 30, what=f"no GPU held on {a}")
    wait_for(lambda: _gpus_allocated(fleet, b) == 1, 30, what=f"one GPU held on {b}")
    _assert_disk(fleet, b, "mover", fingerprint)
    body = _get(fleet, "grs", "mover")
    assert body["metadata"]["finalizers"] == [f"node.gpudock.dev/{b}"]
    assert body["status"]["migration"]["phase"] == "Succeeded"
    causes = {e["revision"]: e.get("changeCause") for e in body["status"]["history"]}
    assert causes[3] == f"migrated from {a} to {b}", causes
    assert sorted(causes) == [1, 2, 3]

    # Rollback to revision 1 on the target: its disk came along.
    fleet.stack.kubectl("patch", "grs", "mover", "-n", fleet.namespace, "--type=merge",
                        "-p", '{"spec": {"rollbackTo": {"revision": 1}}}')
    wait_for(lambda: _ready_on(fleet, "mover", b, revision=4), 90, what="rolled back")
    rolled = _container(fleet, b, "mover")
    assert sh(rolled, "cat /root/rev1-only").strip() == "one"
    assert sh(rolled, "test -e /root/random && echo yes || echo no").strip() == "no"
    # And to revision 2, the one that ran on node a until the move: its disk as it
    # ended there.
    fleet.stack.kubectl("patch", "grs", "mover", "-n", fleet.namespace, "--type=merge",
                        "-p", '{"spec": {"rollbackTo": {"revision": 2}}}')
    wait_for(lambda: _ready_on(fleet, "mover", b, revision=5), 90, what="rolled back to 2")
    _assert_disk(fleet, b, "mover", fingerprint)


def test_23_2_a_stopped_instance_moves_and_starts_on_the_target(fleet: Fleet) -> None:
    a, b = fleet.nodes
    _apply(fleet, _instance("sleeper"))
    wait_for(lambda: _ready_on(fleet, "sleeper", a), 90, what="sleeper on a")
    fingerprint = _user_disk(fleet, a, "sleeper")
    _apply(fleet, _instance("sleeper", state="Stopped"))
    wait_for(lambda: _ready_on(fleet, "sleeper", a, phase="Stopped"), 90, what="stopped")

    _migration(fleet, "move-stopped", "sleeper", b)
    _wait_phase(fleet, "move-stopped", "Succeeded", "Failed", "Cancelled")
    status = _status(fleet, "gmig", "move-stopped")
    assert status["phase"] == "Succeeded", status
    assert status["downtimeSeconds"] == 0  # it was not running
    assert _ready_on(fleet, "sleeper", b, phase="Stopped")
    _apply(fleet, _instance("sleeper", state="Running"))
    wait_for(lambda: _ready_on(fleet, "sleeper", b), 90, what="sleeper running on b")
    _assert_disk(fleet, b, "sleeper", fingerprint)
    assert fleet.containers(a) == []


def test_23_1_changing_spec_node_name_moves_a_pinned_instance_with_its_disk(
        fleet: Fleet) -> None:
    """With an exclusive SizedVolume (bound with it, unpinned), which moves too."""
    a, b = fleet.nodes
    _apply(fleet, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                   "metadata": {"name": "pinned-data"}, "spec": {"size": "64Mi"}})
    _apply(fleet, _instance("pinned", nodeName=a,
                            mounts=[{"volume": "pinned-data", "mountPath": "/data"}]))
    wait_for(lambda: _status(fleet, "grs", "pinned").get("phase") == "Running" and
             len(fleet.containers(a)) == 1, 90, what="pinned running on a")
    fingerprint = _user_disk(fleet, a, "pinned")
    sh(_container(fleet, a, "pinned"), "head -c 4194304 /dev/urandom > /data/kept && "
       "ln /data/kept /data/kept-too")
    os.setxattr(_merged(_container(fleet, a, "pinned"), "/data/kept"), *XATTR)
    volume_files = sh(_container(fleet, a, "pinned"), "sha256sum /data/kept; "
                      "stat -c '%n %h' /data/kept-too")
    fleet.stack.kubectl("patch", "grs", "pinned", "-n", fleet.namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"nodeName": b}}))
    generation = _get(fleet, "grs", "pinned")["metadata"]["generation"]
    move = f"pinned-to-{b}-g{generation}"  # made by node a's agent, once for the change
    wait_for(lambda: fleet.stack.kubectl("get", "gmig", move, "-n", fleet.namespace,
                                         check=False).returncode == 0, 60, what=move)
    _wait_phase(fleet, move, "Succeeded", "Failed", "Cancelled")
    status = _status(fleet, "gmig", move)
    assert status["phase"] == "Succeeded", status
    assert (status["sourceNode"], status["targetNode"]) == (a, b)
    wait_for(lambda: _ready_on(fleet, "pinned", b, revision=2), 60, what="pinned on b")
    assert fleet.containers(a) == []
    _assert_disk(fleet, b, "pinned", fingerprint)
    moved = _container(fleet, b, "pinned")
    assert sh(moved, "sha256sum /data/kept; stat -c '%n %h' /data/kept-too") == volume_files
    assert os.getxattr(_merged(moved, "/data/kept"), XATTR[0]) == XATTR[1]
    wait_for(lambda: _status(fleet, "svol", "pinned-data").get("nodeName") == b, 30,
             what="the volume bound to b")
    assert _get(fleet, "svol", "pinned-data")["metadata"]["finalizers"] == [
        f"node.gpudock.dev/{b}"]
    body = _get(fleet, "grs", "pinned")
    assert body["metadata"]["finalizers"] == [f"node.gpudock.dev/{b}"]
    reasons = {c["type"]: c.get("reason") for c in body["status"]["conditions"]}
    assert reasons.get("Degraded") != "NodeNameChanged", body["status"]
    assert len(_items(fleet, "gmig")) == 1  # one move for the one change


def test_23_4_a_target_that_dies_before_switching_leaves_the_source_running(
        fleet: Fleet) -> None:
    a, b = fleet.nodes
    fleet.agents[b].stop()
    fleet.start_agent(b, extra_args=["--crash-at", "Migrate.received"])
    _apply(fleet, _instance("stay"))
    wait_for(lambda: _ready_on(fleet, "stay", a), 90, what="stay on a")
    fingerprint = _user_disk(fleet, a, "stay")
    before = _container(fleet, a, "stay").id

    _migration(fleet, "doomed", "stay", b)
    _wait_phase(fleet, "doomed", "Succeeded", "Failed", "Cancelled")
    status = _status(fleet, "gmig", "doomed")
    assert (status["phase"], status["reason"]) == ("Failed", "TransferFailed"), status
    assert fleet.agents[b].wait_exit(30) is not None  # it died at the crash point
    wait_for(lambda: _ready_on(fleet, "stay", a), 60, what="stay running on a again")
    assert _container(fleet, a, "stay").id == before  # the same container, same disk
    _assert_disk(fleet, a, "stay", fingerprint)
    assert fleet.containers(b) == []
    assert _get(fleet, "grs", "stay")["metadata"]["finalizers"] == [f"node.gpudock.dev/{a}"]


def test_23_1_deleting_a_migration_before_switching_cancels_it(
        stack: LocalStack, namespace: str) -> None:
    _image_only_on_a(stack)
    with running_fleet(stack, namespace) as fleet:
        a, b = fleet.nodes
        fleet.agents[a].stop()  # the source sends slowly: there is time to cancel
        fleet.start_agent(a, extra_args=["--migration-bandwidth", str(1 << 20)])
        _apply(fleet, _instance("kept"))
        wait_for(lambda: _ready_on(fleet, "kept", a), 90, what="kept on a")
        fingerprint = _user_disk(fleet, a, "kept")
        before = _container(fleet, a, "kept").id

        _migration(fleet, "changed-my-mind", "kept", b)
        _wait_phase(fleet, "changed-my-mind", "Transferring", "Failed", timeout=120)
        wait_for(lambda: (_status(fleet, "grs", "kept").get("migration") or {}).get(
            "phase") == "Transferring", 30, what="status.migration on the instance")
        # The pre-copy runs while it serves (1 MiB/s: the image and 8 MiB take long).
        assert _status(fleet, "grs", "kept")["phase"] == "Running"
        fleet.stack.kubectl("delete", "gmig", "changed-my-mind", "-n", namespace,
                            "--timeout=120s")
        wait_for(lambda: _ready_on(fleet, "kept", a), 90, what="kept running on a again")
        assert _container(fleet, a, "kept").id == before
        _assert_disk(fleet, a, "kept", fingerprint)
        assert fleet.containers(b) == []


@pytest.mark.parametrize(("point", "outcome"), [
    ("Migrate.stopped", "Failed"), ("Migrate.transferred", "Failed"),
    ("Migrate.switched", "Succeeded"), ("Migrate.handedOver", "Succeeded")])
def test_23_4_a_source_killed_at_a_crash_point_converges_to_one_instance(
        stack: LocalStack, namespace: str, point: str, outcome: str) -> None:
    """SIGKILL of the source agent at each of its Migrate.* points, then a restart:
    before the binding moved, the same source container runs again; after, the
    target runs it and the source keeps nothing. Never two, never none. Its
    SizedVolume ends on the same node as it, with its files, held there alone."""
    _image_only_on_a(stack)
    with running_fleet(stack, namespace) as fleet:
        a, b = fleet.nodes
        fleet.agents[a].stop()
        fleet.start_agent(a, extra_args=["--crash-at", point])
        _apply(fleet, {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                       "metadata": {"name": "crashy-data"}, "spec": {"size": "64Mi"}})
        _apply(fleet, _instance("crashy", mounts=[{"volume": "crashy-data",
                                                   "mountPath": "/data"}]))
        wait_for(lambda: _ready_on(fleet, "crashy", a), 90, what="crashy on a")
        fingerprint = _user_disk(fleet, a, "crashy")
        volume_files = sh(_container(fleet, a, "crashy"),
                          "head -c 2097152 /dev/urandom > /data/f && sha256sum /data/f")
        before = _container(fleet, a, "crashy").id
        _migration(fleet, "crash", "crashy", b)
        assert fleet.agents[a].wait_exit(120) is not None, f"no crash at {point}"
        fleet.agents[a].stop()  # (dead already: only its log is closed)
        fleet.start_agent(a)  # the same state dir: its records, its locks
        _wait_phase(fleet, "crash", "Succeeded", "Failed", "Cancelled")
        assert _finished(fleet, "crash") == outcome, _status(fleet, "gmig", "crash")
        home, away = (a, b) if outcome == "Failed" else (b, a)
        wait_for(lambda: _ready_on(fleet, "crashy", home), 90, what=f"crashy on {home}")
        _assert_disk(fleet, home, "crashy", fingerprint)
        assert fleet.containers(away) == []
        if outcome == "Failed":
            assert _container(fleet, a, "crashy").id == before
        finalizers = _get(fleet, "grs", "crashy")["metadata"]["finalizers"]
        assert finalizers == [f"node.gpudock.dev/{home}"]
        assert sh(_container(fleet, home, "crashy"), "sha256sum /data/f") == volume_files
        wait_for(lambda: _get(fleet, "svol", "crashy-data")["metadata"]["finalizers"] == [
            f"node.gpudock.dev/{home}"], 30, what=f"the volume held by {home} alone")
        assert _status(fleet, "svol", "crashy-data")["nodeName"] == home
        # What the target made for it goes (after a source restart, once the target
        # sees the migration ended: the source could not send the abort).
        wait_for(lambda: _volumes(fleet, away, "crashy-data") == [], 30,
                 what=f"no Docker volume of it left on {away}")


def test_23_3_drain_cordons_a_node_and_moves_its_three_instances(fleet: Fleet) -> None:
    a, b = fleet.nodes
    for name in ("one", "two", "three"):
        _apply(fleet, _instance(name))
    for name in ("one", "two", "three"):
        wait_for(functools.partial(_ready_on, fleet, name, a), 90, what=f"{name} on a")
    prints = {name: _user_disk(fleet, a, name) for name in ("one", "two", "three")}
    _apply(fleet, _instance("three", state="Stopped"))  # a stopped one moves too
    wait_for(lambda: _ready_on(fleet, "three", a, phase="Stopped"), 90, what="stopped")

    out = io.StringIO()
    code = kubectl_plugin.main(["--kubeconfig", str(fleet.stack.kubeconfig), "drain", a],
                               out=out)
    assert code == 0, out.getvalue()
    node = fleet.stack.kubectl_json("get", "gpunode", a)
    assert node["spec"] == {"unschedulable": True}
    for name, phase in (("one", "Running"), ("two", "Running"), ("three", "Stopped")):
        wait_for(functools.partial(_ready_on, fleet, name, b, phase), 300,
                 what=f"{name} {phase} on b")

    def phases() -> list[str]:
        listing = fleet.stack.kubectl_json("get", "gmig", "-n", fleet.namespace)["items"]
        assert isinstance(listing, list)
        return sorted(str((m.get("status") or {}).get("phase")) for m in listing)

    wait_for(lambda: phases() == ["Succeeded"] * 3, 120, what="three migrations done")
    assert fleet.containers(a) == []
    _apply(fleet, _instance("three", state="Running"))
    for name in ("one", "two", "three"):
        wait_for(functools.partial(_ready_on, fleet, name, b), 90, what=f"{name} on b")
        _assert_disk(fleet, b, name, prints[name])


VOLUME_IMAGE = "gpudock-test/with-volume:1"  # declares VOLUME /data; only on node a
VOLUME_FILES = "sha256sum /data/random /data/seeded /data/sub/f; stat -c '%a %u:%g' /data"


def _volume_image_on_a(stack: LocalStack) -> None:
    client = stack.engines[0].client()
    try:
        base = client.containers.create("gpudock-test/busybox:1", [
            "sh", "-c", "mkdir -p /data /root && echo from-image > /data/seeded"])
        base.start()
        base.wait()
        base.commit("gpudock-test/with-volume", "1", changes=["VOLUME /data"])
        base.remove()
    finally:
        client.close()


def _volumes(fleet: Fleet, node: str, name: str) -> list[str]:
    client = fleet.engines[node].client()
    try:
        return [v.name for v in client.volumes.list(filters={"label": [
            f"gpudock.dev/namespace={fleet.namespace}", f"gpudock.dev/name={name}"]})]
    finally:
        client.close()


def test_23_2_an_image_volume_moves_with_its_files(fleet: Fleet) -> None:
    """The image's VOLUME (a Docker volume of the instance) is copied like the
    writable layer (pre-copy while it runs, then what changed), made on the target
    under the same name, and removed from the source."""
    a, b = fleet.nodes
    _volume_image_on_a(fleet.stack)
    _apply(fleet, _instance("vol", image=VOLUME_IMAGE))
    wait_for(lambda: _ready_on(fleet, "vol", a), 90, what="vol on a")
    sh(_container(fleet, a, "vol"), "head -c 4194304 /dev/urandom > /data/random && "
       "mkdir /data/sub && echo x > /data/sub/f && chown 1234:5678 /data")
    files = sh(_container(fleet, a, "vol"), VOLUME_FILES)
    assert "1234:5678" in files
    (volume,) = _volumes(fleet, a, "vol")

    _migration(fleet, "move-vol", "vol", b)
    _wait_phase(fleet, "move-vol", "Succeeded", "Failed", "Cancelled")
    assert _finished(fleet, "move-vol") == "Succeeded", _status(fleet, "gmig", "move-vol")
    wait_for(lambda: _ready_on(fleet, "vol", b), 60, what="vol on b")
    assert sh(_container(fleet, b, "vol"), VOLUME_FILES) == files
    assert _volumes(fleet, b, "vol") == [volume]  # the same name: every revision uses it
    assert _volumes(fleet, a, "vol") == []  # nothing of it left on the source


def test_23_1_setting_spec_node_name_back_during_a_move_keeps_the_instance_home(
        stack: LocalStack, namespace: str) -> None:
    """The binding moves only while the instance still wants the target: spec.nodeName
    set back during the transfer fails the move at the switch and the same source
    container runs on, with its disk (review finding: it used to switch anyway and
    leave the instance down on both nodes)."""
    _image_only_on_a(stack)
    with running_fleet(stack, namespace) as fleet:
        a, b = fleet.nodes
        fleet.agents[a].stop()  # the source sends slowly: there is time to change it back
        fleet.start_agent(a, extra_args=["--migration-bandwidth", str(1 << 20)])
        _apply(fleet, _instance("fickle", nodeName=a))
        wait_for(lambda: _status(fleet, "grs", "fickle").get("phase") == "Running" and
                 len(fleet.containers(a)) == 1, 90, what="fickle running on a")
        fingerprint = _user_disk(fleet, a, "fickle")
        before = _container(fleet, a, "fickle").id
        fleet.stack.kubectl("patch", "grs", "fickle", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"nodeName": b}}))
        move = f"fickle-to-{b}-g{_get(fleet, 'grs', 'fickle')['metadata']['generation']}"
        wait_for(lambda: fleet.stack.kubectl("get", "gmig", move, "-n", namespace,
                                             check=False).returncode == 0, 60, what=move)
        _wait_phase(fleet, move, "Transferring", "Failed", timeout=120)
        fleet.stack.kubectl("patch", "grs", "fickle", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"nodeName": a}}))
        _wait_phase(fleet, move, "Succeeded", "Failed", "Cancelled")
        status = _status(fleet, "gmig", move)
        assert (status["phase"], status["reason"]) == ("Failed", "MigrationFailed"), status
        assert f"spec.nodeName was changed to {a}" in status["message"]

        def home() -> bool:
            found = fleet.containers(a)
            body = _status(fleet, "grs", "fickle")
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in body.get("conditions") or ())
            return len(found) == 1 and found[0].status == "running" and ready
        wait_for(home, 90, what="fickle running on a again")
        assert _container(fleet, a, "fickle").id == before
        _assert_disk(fleet, a, "fickle", fingerprint)
        assert fleet.containers(b) == []
        body = _get(fleet, "grs", "fickle")
        assert body["metadata"]["finalizers"] == [f"node.gpudock.dev/{a}"]
        assert (body.get("status") or {}).get("nodeName") in (None, a)
