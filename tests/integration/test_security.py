"""#14 against the real stack: tenants cannot reach the host or each other's disks, and
what a user keeps in their container survives every revision. Test names carry the
item of issue #14 they show."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    saved_layers,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.stack.localstack import BUSYBOX_IMAGE, IDLE_COMMAND, LocalStack, wait_for
from tests.stack.resources import (
    apply,
    condition,
    containers,
    gpu_replica_set,
    gpus_in_use,
    grs,
    status,
)


def _reason_is(stack: LocalStack, namespace: str, name: str, reason: str) -> bool:
    return condition(stack, namespace, name, "Degraded").get("reason") == reason


def _wait_reason(stack: LocalStack, namespace: str, name: str, reason: str,
                 timeout: float = 60) -> str:
    wait_for(lambda: _reason_is(stack, namespace, name, reason), timeout,
             what=f"{name}: Degraded reason {reason} "
                  f"(now {condition(stack, namespace, name, 'Degraded')})")
    return str(condition(stack, namespace, name, "Degraded")["message"])


def _names(stack: LocalStack, namespace: str) -> set[str]:
    return {c.labels["gpudock.dev/name"] for c in containers(stack, namespace)}


# ------------------------------------------------------------------------ 1: hostPath
def test_14_1_symlinks_out_of_an_allowed_root_are_refused(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    allowed, read_only = tmp_path / "allowed", tmp_path / "datasets"
    (allowed / "ok" / "real").mkdir(parents=True)
    (read_only / "imagenet").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    start_agent(extra_args=["--allowed-host-path", str(allowed), "--read-only-host-path",
                            str(read_only), "--resync-seconds", "2"])
    ok = allowed / "ok"
    apply(stack, namespace, gpu_replica_set("tenant", gpus=0, mounts=[
        {"hostPath": str(ok), "mountPath": "/data"}]))
    wait_settled(stack, namespace, "tenant")
    # The tenant plants symlinks from inside its own container: to /, several levels
    # deep, relative with ".." that leave the root, and one inside the root (harmless).
    sh(only_container(stack, namespace, "tenant"),
       "ln -s / /data/hostroot && mkdir -p /data/a/b && ln -s /etc /data/a/b/etc && "
       f"ln -s ../../../outside /data/a/up && ln -s {ok}/real /data/inside")
    attacks = {"root": ok / "hostroot", "deep": ok / "a" / "b" / "etc",
               "dotdot": ok / "a" / "up", "through": ok / "hostroot" / "etc"}
    apply(stack, namespace,
          *(gpu_replica_set(f"attack-{k}", gpus=0, mounts=[{"hostPath": str(p),
                                                            "mountPath": "/host"}])
            for k, p in attacks.items()),
          gpu_replica_set("late", gpus=0, mounts=[{"hostPath": str(ok / "later"),
                                                   "mountPath": "/host"}]),
          gpu_replica_set("inside", gpus=0, mounts=[{"hostPath": str(ok / "inside"),
                                                     "mountPath": "/host"}]),
          gpu_replica_set("ro-refused", gpus=0, mounts=[
              {"hostPath": str(read_only / "imagenet"), "mountPath": "/ds"}]),
          gpu_replica_set("ro-fine", gpus=0, mounts=[
              {"hostPath": str(read_only / "imagenet"), "mountPath": "/ds",
               "readOnly": True}]))
    for kind in attacks:
        message = _wait_reason(stack, namespace, f"attack-{kind}", "HostPathNotAllowed")
        assert "leads outside every allowed root" in message
    assert "does not exist" in _wait_reason(stack, namespace, "late", "HostPathMissing")
    _wait_reason(stack, namespace, "ro-refused", "HostPathReadOnly")
    # A symlink made after the resource was applied is refused as well.
    sh(only_container(stack, namespace, "tenant"), "ln -s / /data/later")
    _wait_reason(stack, namespace, "late", "HostPathNotAllowed")
    wait_settled(stack, namespace, "inside")
    wait_settled(stack, namespace, "ro-fine")
    # Docker got the resolved path, never the symlink.
    (mount,) = only_container(stack, namespace, "inside").attrs["Mounts"]
    assert mount["Source"] == str(ok / "real")
    assert _names(stack, namespace) == {"tenant", "inside", "ro-fine"}
    assert "Traceback" not in "".join(p.read_text() for p in
                                      (stack.base_dir / "logs").glob(f"agent-{namespace}*"))


# --------------------------------------------------------------- 2: saved disks' images
@contextlib.contextmanager
def _second_namespace(stack: LocalStack, namespace: str) -> Iterator[str]:
    other = f"{namespace}-b"
    stack.kubectl("create", "namespace", other)
    try:
        yield other
    finally:
        stack.kubectl("delete", "grs", "--all", "-n", other, "--timeout=60s", check=False)
        stack.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_14_2_another_tenants_saved_disk_is_never_an_image(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    with _second_namespace(stack, namespace) as thieves:
        # A saved disk is an image only where it is committed (a saved writable layer
        # is a directory that no image reference reaches): that is the case tried here.
        start_agent(extra_args=["--namespace", thieves, "--disk-saves", "commit"])
        apply_spec(stack, namespace, "victim", "v1", gpus=1)
        wait_settled(stack, namespace, "victim", revision=1)
        touch_the_disk(stack, namespace, "secret")
        apply_spec(stack, namespace, "victim", "v2", gpus=2)
        wait_settled(stack, namespace, "victim", revision=2)
        saved = f"gpudock-preserved/{namespace}_victim:rev-1"
        client = stack.docker_client()
        image = client.images.get(saved)
        image.tag("innocent-looking", "1")
        assert image.id is not None
        references = {"tag": saved, "id": image.id, "short-id": image.short_id.split(":")[1],
                      "retag": "innocent-looking:1",
                      "digest": f"gpudock-preserved/{namespace}_victim@{image.id}",
                      "registry": f"docker.io/{saved}"}
        apply(stack, thieves, *(gpu_replica_set(f"thief-{k}", gpus=0, image=ref)
                                for k, ref in references.items()))
        for kind in references:
            message = _wait_reason(stack, thieves, f"thief-{kind}", "ReservedImage")
            assert "saved by gpudock for another resource" in message
        assert containers(stack, thieves) == []
        # The owner itself still rolls back to that disk.
        apply_spec(stack, namespace, "victim", "back", gpus=2, rollbackTo={"revision": 1})
        wait_settled(stack, namespace, "victim", revision=3)
        assert_disk_kept(stack, namespace, "secret", "victim")
        client.images.remove("innocent-looking:1")
        client.close()


# ------------------------------------------------------------------ 3: host port policy
def test_14_3_explicit_host_ports_must_lie_in_the_allowed_range(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    from tests.stack.processes import free_port_range

    first = free_port_range(12)
    start_agent(extra_args=["--port-range", f"{first}-{first + 10}"])
    apply(stack, namespace,
          gpu_replica_set("privileged", gpus=0, ports=[{"containerPort": 80, "hostPort": 80}]),
          gpu_replica_set("outside", gpus=0, ports=[{"containerPort": 22,
                                                     "hostPort": first + 11}]),
          gpu_replica_set("inside", gpus=0, ports=[{"containerPort": 22,
                                                    "hostPort": first + 3}]))
    assert f"({first}-{first + 10})" in _wait_reason(stack, namespace, "privileged",
                                                     "HostPortNotAllowed")
    _wait_reason(stack, namespace, "outside", "HostPortNotAllowed")
    wait_settled(stack, namespace, "inside")
    assert _names(stack, namespace) == {"inside"}


def test_14_3_a_flag_widens_the_explicit_host_ports(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    from tests.stack.processes import free_port_range

    first = free_port_range(2)
    wanted = first + 1
    start_agent(extra_args=["--port-range", f"{first}-{first}",
                            "--allowed-host-ports", "1024-65535"])
    apply(stack, namespace, gpu_replica_set("wide", gpus=0, ports=[
        {"containerPort": 22, "hostPort": wanted}]))
    wait_settled(stack, namespace, "wide")
    assert status(stack, namespace, "wide")["ports"][0]["hostPort"] == wanted


# ---------------------------------------------------------------- 4: nodeName changes
def test_14_4_changing_node_name_to_a_node_that_cannot_take_it_keeps_the_instance(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    # A changed spec.nodeName moves the instance with its disk (#23: a GpuMigration,
    # tests/integration/test_migration.py); here the node it names has no agent, so the
    # move fails and nothing changes: the instance serves where it is.
    start_agent(gpus=8, extra_args=["--migration-target-wait", "0"])
    apply_spec(stack, namespace, "mover", "v1", gpus=2)
    wait_settled(stack, namespace, "mover", revision=1)
    before = only_container(stack, namespace, "mover").id
    finalizers = grs(stack, namespace, "mover")["metadata"]["finalizers"]
    assert finalizers == ["node.gpudock.dev/gpu-node-1"]
    generation = apply_spec(stack, namespace, "mover", "move", gpus=2, node="gpu-node-2")
    message = _wait_reason(stack, namespace, "mover", "NodeNameChanged")
    assert "Set spec.nodeName back to gpu-node-1" in message
    move = f"mover-to-gpu-node-2-g{generation}"
    def move_status() -> dict[str, Any]:
        found = stack.kubectl_json("get", "gmig", move, "-n", namespace).get("status")
        return found if isinstance(found, dict) else {}

    wait_for(lambda: move_status().get("phase") == "Failed", 60, what=f"{move} Failed")
    failed = move_status()
    assert failed["reason"] == "TargetUnschedulable", failed
    assert "gpu-node-2" in failed["message"]
    (container,) = containers(stack, namespace)
    assert container.id == before
    assert container.status == "running"
    assert status(stack, namespace, "mover")["phase"] == "Running"
    # One try per change: the failed move is not made again.
    made = stack.kubectl("get", "gmig", "-n", namespace, "-o", "name").stdout.split()
    assert made == [f"gpumigration.gpudock.dev/{move}"]
    uid = grs(stack, namespace, "mover")["metadata"]["uid"]
    started = time.monotonic()
    stack.kubectl("delete", "grs", "mover", "-n", namespace, "--timeout=60s")
    assert time.monotonic() - started < 30
    assert containers(stack, namespace) == []
    assert gpus_in_use(stack, namespace) == []
    assert saved_layers(stack, uid)  # Retain: the disk saved (a writable layer)


def test_14_4_a_container_whose_resource_is_gone_is_saved_and_removed(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent(extra_args=["--resync-seconds", "2"])
    apply_spec(stack, namespace, "lost", "v1", gpus=3)
    wait_settled(stack, namespace, "lost", revision=1)
    touch_the_disk(stack, namespace, "keep-me")
    uid = grs(stack, namespace, "lost")["metadata"]["uid"]
    agent.stop()
    # Someone removes the finalizer by hand and deletes the resource: no agent saw it.
    stack.kubectl("patch", "grs", "lost", "-n", namespace, "--type=merge", "-p",
                  '{"metadata":{"finalizers":null}}')
    stack.kubectl("delete", "grs", "lost", "-n", namespace, "--timeout=30s")
    assert len(gpus_in_use(stack, namespace)) == 3  # the container still holds them
    start_agent(extra_args=["--resync-seconds", "2"])
    wait_for(lambda: not containers(stack, namespace), 30, what="orphan removed")
    assert gpus_in_use(stack, namespace) == []
    (saved,) = saved_layers(stack, uid)  # saved as Retain does, as a writable layer
    assert (saved / "root" / "installed-by-user").read_text().strip() == "keep-me"



# -------------------------------------------------------------- 5: image VOLUME paths
def test_14_5_files_under_an_image_volume_survive_revisions_and_rollback(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    client = stack.docker_client()
    base = client.containers.create(BUSYBOX_IMAGE)
    assert base.id is not None
    client.api.commit(base.id, repository="gpudock-test/with-volume", tag="1", changes=[
        'VOLUME ["/workspace"]', f"CMD {json.dumps(IDLE_COMMAND)}"])
    base.remove()
    image = "gpudock-test/with-volume:1"
    start_agent()
    apply_spec(stack, namespace, "nb", "v1", gpus=1, image=image, historyPolicy="Purge")
    wait_settled(stack, namespace, "nb", revision=1)
    sh(only_container(stack, namespace, "nb"),
       "mkdir -p /workspace/a/b && echo nested > /workspace/a/b/c.txt && "
       "echo top > /workspace/top.txt")
    apply_spec(stack, namespace, "nb", "v2", gpus=2, image=image, historyPolicy="Purge")
    wait_settled(stack, namespace, "nb", revision=2)
    assert sh(only_container(stack, namespace, "nb"),
              "cat /workspace/a/b/c.txt /workspace/top.txt").split() == ["nested", "top"]
    apply_spec(stack, namespace, "nb", "back", gpus=2, image=image, historyPolicy="Purge",
               rollbackTo={"revision": 1})
    wait_settled(stack, namespace, "nb", revision=3)
    container = only_container(stack, namespace, "nb")
    assert sh(container, "cat /workspace/a/b/c.txt").strip() == "nested"
    (volume,) = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
    assert client.volumes.get(volume).attrs["Labels"]["gpudock.dev/name"] == "nb"
    assert len(client.volumes.list(filters={"label": f"gpudock.dev/namespace={namespace}"})) == 1
    stack.kubectl("delete", "grs", "nb", "-n", namespace, "--timeout=60s")
    assert client.volumes.list(filters={"label": f"gpudock.dev/namespace={namespace}"}) == []
    client.images.remove(image)
    client.close()


# ----------------------------------------------------------- 7: hostname, /etc/hosts
def test_14_7_hostname_and_host_entries_are_the_same_in_every_revision(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent()
    extra = {"hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db", "db.corp"]}],
             "dnsConfig": {"searches": ["corp.example"],
                           "options": [{"name": "ndots", "value": "2"}]}}
    apply_spec(stack, namespace, "web", "v1", gpus=1, **extra)
    wait_settled(stack, namespace, "web", revision=1)
    for revision, gpus in ((2, 2), (3, 0)):
        container = only_container(stack, namespace, "web")
        assert sh(container, "hostname").strip() == "web"
        assert "10.1.2.3\tdb" in sh(container, "cat /etc/hosts")
        resolv = sh(container, "cat /etc/resolv.conf")
        assert "corp.example" in resolv
        assert "ndots:2" in resolv
        apply_spec(stack, namespace, "web", f"v{revision}", gpus=gpus, **extra)
        wait_settled(stack, namespace, "web", revision=revision)


# ----------------------------------------------------------------- 8: longest names
def test_14_8_the_longest_namespace_and_name_work_end_to_end(
    stack: LocalStack, start_agent: AgentFactory, namespace: str,
) -> None:
    longest_ns = (namespace + "-" + "n" * 63)[:63]
    name = "g" * 253
    stack.kubectl("create", "namespace", longest_ns)
    try:
        start_agent(extra_args=["--namespace", longest_ns])
        apply_spec(stack, longest_ns, name, "create", gpus=1)
        wait_settled(stack, longest_ns, name, revision=1)
        touch_the_disk(stack, longest_ns, "long")
        apply_spec(stack, longest_ns, name, "update", gpus=2)
        wait_settled(stack, longest_ns, name, revision=2)
        assert_disk_kept(stack, longest_ns, "long")
        apply_spec(stack, longest_ns, name, "stop", gpus=2, state="Stopped")
        wait_settled(stack, longest_ns, name, phase="Stopped")
        assert containers(stack, longest_ns) == []
        apply_spec(stack, longest_ns, name, "start", gpus=2, state="Running")
        wait_settled(stack, longest_ns, name, revision=2)
        apply_spec(stack, longest_ns, name, "rollback", gpus=2, rollbackTo={"revision": 1})
        wait_settled(stack, longest_ns, name, revision=3)
        assert_disk_kept(stack, longest_ns, "long")
        container = only_container(stack, longest_ns)
        assert container.labels["gpudock.dev/name"] == name  # the human name is kept
        assert len(container.attrs["Config"]["Hostname"]) <= 63
        stack.kubectl("delete", "grs", name, "-n", longest_ns, "--timeout=60s")
        assert containers(stack, longest_ns) == []
    finally:
        stack.kubectl("delete", "grs", "--all", "-n", longest_ns, "--timeout=60s",
                      check=False)
        stack.kubectl("delete", "namespace", longest_ns, "--wait=false", check=False)


# ---------------------------------------------------------------- 9: oversized specs
def test_14_9_oversized_specs_are_refused_and_never_block_delete(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    agent = start_agent()
    huge = gpu_replica_set("huge", gpus=0, env=[{"name": "BLOB", "value": "x" * 200_000}])
    with pytest.raises(RuntimeError, match=r"spec.env.value in body should be at most "
                       r"32768 chars long"):
        apply(stack, namespace, huge)
    big = [{"name": f"V{i}", "value": "y" * 32_000} for i in range(6)]  # 192 KB in all
    fits = [{"name": f"V{i}", "value": "z" * 30_000} for i in range(4)]  # 120 KB
    apply(stack, namespace, gpu_replica_set("big", gpus=0, env=big),
          gpu_replica_set("fits", gpus=0, env=fits))
    assert "131072" in _wait_reason(stack, namespace, "big", "InvalidSpec")
    wait_settled(stack, namespace, "fits")
    value = sh(only_container(stack, namespace, "fits"), "echo $V3").strip()
    assert value == "z" * 30_000
    annotations = grs(stack, namespace, "big")["metadata"]["annotations"]
    assert len(annotations["gpudock.dev/last-handled-configuration"]) < 200
    started = time.monotonic()
    stack.kubectl("delete", "grs", "big", "fits", "-n", namespace, "--timeout=60s")
    assert time.monotonic() - started < 30
    assert " 422" not in agent.log()
    assert "Traceback" not in agent.log()


# ------------------------------------------------------------------- 10: a full disk
def test_14_10_a_full_disk_keeps_the_previous_revision_running(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    apply_spec(stack, namespace, "full", "v1", gpus=1)
    wait_settled(stack, namespace, "full", revision=1)
    touch_the_disk(stack, namespace, "before-full")
    sh(only_container(stack, namespace, "full"),
       "dd if=/dev/zero of=/root/big bs=1M count=300 2>/dev/null")
    before = only_container(stack, namespace, "full").id
    filler = stack.docker_root / "gpudock-test-filler"
    info = os.statvfs(stack.docker_root)
    with open(filler, "wb") as handle:  # leave about 150 MiB free: less than 300 MiB
        os.posix_fallocate(handle.fileno(), 0, info.f_bavail * info.f_frsize - 150 * 2**20)
    try:
        apply_spec(stack, namespace, "full", "v2", gpus=2)
        message = _wait_reason(stack, namespace, "full", "DiskFull")
        assert "the instance keeps running" in message
        time.sleep(5)  # a few resyncs: it stays so, no retry loop stops it
        (container,) = containers(stack, namespace)
        assert container.id == before
        assert container.status == "running"
        assert status(stack, namespace, "full")["phase"] == "Running"
        client = stack.docker_client()
        assert client.images.list(name=f"gpudock-preserved/{namespace}_full") == []
        assert client.images.list(filters={"dangling": True, "label":
                                           f"gpudock.dev/namespace={namespace}"}) == []
        client.close()
    finally:
        filler.unlink()
    wait_settled(stack, namespace, "full", revision=2)  # space again: the update goes on
    assert_disk_kept(stack, namespace, "before-full")
    size = sh(only_container(stack, namespace, "full"), "wc -c < /root/big").strip()
    assert size == str(300 * 2**20)
