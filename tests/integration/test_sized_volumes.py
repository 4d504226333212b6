"""#10 against the real stack: SizedVolumes on the loopfile backend (real loop
devices, ext4, Docker volumes), mounted by GpuReplicaSets. Test names carry #10."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import only_container, sh, wait_settled
from tests.stack.agent_process import AgentProcess
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, gpu_replica_set, status

MiB = 2**20


def _volume(name: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
            "metadata": {"name": name}, "spec": {"nodeName": "gpu-node-1", "size": size}}


def _svol(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    found = stack.kubectl("get", "svol", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return {}
    import json
    return dict(json.loads(found.stdout).get("status") or {})


def _ready_with(stack: LocalStack, namespace: str, name: str, size_bytes: int) -> dict[str, Any]:
    wait_for(lambda: _svol(stack, namespace, name).get("phase") == "Ready"
             and _svol(stack, namespace, name).get("sizeBytes") == size_bytes, 60,
             what=f"{name} Ready at {size_bytes} bytes (now {_svol(stack, namespace, name)})")
    return _svol(stack, namespace, name)


def _in(stack: LocalStack, namespace: str, script: str) -> tuple[int, str]:
    code, output = only_container(stack, namespace, "user").exec_run(["sh", "-c", script])
    assert isinstance(output, bytes)
    return int(code if code is not None else -1), output.decode()


def _start(stack: LocalStack, namespace: str, start_agent: AgentFactory,
           size: str) -> tuple[str, AgentProcess]:
    agent = start_agent(extra_args=["--resync-seconds", "2"])
    apply(stack, namespace, _volume("data", size),
          gpu_replica_set("user", mounts=[{"volume": "data", "mountPath": "/data"}]))
    wait_settled(stack, namespace, "user")
    return str(status(stack, namespace, "user")["containerID"]), agent


def test_10_loopfile_has_a_hard_limit_and_grows_online(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    container_id, _ = _start(stack, namespace, start_agent, "64Mi")
    small = _ready_with(stack, namespace, "data", 64 * MiB)
    assert small["backend"] == "loopfile"
    assert 50 * MiB < small["capacityBytes"] <= 64 * MiB
    wait_for(lambda: _svol(stack, namespace, "data").get("consumers") == ["user"], 30,
             what="the volume listing its user (refreshed each resync)")
    code, out = _in(stack, namespace, "dd if=/dev/zero of=/data/big bs=1M count=80 2>&1")
    assert code != 0
    assert "No space left" in out
    code, out = _in(stack, namespace, "df -m /data | tail -1")
    assert 50 <= int(out.split()[1]) <= 64  # df inside shows the limit
    _in(stack, namespace, "rm -f /data/big; dd if=/dev/urandom of=/data/keep bs=1M "
        "count=20 2>/dev/null; sha256sum /data/keep > /data/keep.sum")

    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"size": "256Mi"}}')
    grown = _ready_with(stack, namespace, "data", 256 * MiB)
    assert grown["capacityBytes"] > 200 * MiB
    assert status(stack, namespace, "user")["containerID"] == container_id  # no restart
    assert _in(stack, namespace, "sha256sum -c /data/keep.sum")[0] == 0
    code, out = _in(stack, namespace, "dd if=/dev/zero of=/data/more bs=1M count=150 2>&1")
    assert code == 0, out


def test_10_loopfile_shrinks_with_the_data_kept_and_refuses_below_usage(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _start(stack, namespace, start_agent, "256Mi")
    _ready_with(stack, namespace, "data", 256 * MiB)
    _in(stack, namespace, "dd if=/dev/urandom of=/data/keep bs=1M count=100 2>/dev/null; "
        "sha256sum /data/keep > /data/keep.sum")
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"size": "32Mi"}}')
    wait_for(lambda: _svol(stack, namespace, "data").get("reason") == "ShrinkBelowUsage",
             60, what="ShrinkBelowUsage")
    refused = _svol(stack, namespace, "data")
    assert refused["sizeBytes"] == 256 * MiB  # nothing changed
    degraded = next(c for c in refused["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert _in(stack, namespace, "sha256sum -c /data/keep.sum")[0] == 0

    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"size": "192Mi"}}')
    shrunk = _ready_with(stack, namespace, "data", 192 * MiB)
    assert shrunk["capacityBytes"] <= 192 * MiB
    wait_settled(stack, namespace, "user")  # its consumer running again
    assert _in(stack, namespace, "sha256sum -c /data/keep.sum")[0] == 0


def _mounts_of(stack: LocalStack) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f"{stack.base_dir}/" in line and "/volumes/mounts/" in line]


def test_10_delete_waits_while_mounted_and_leaves_nothing(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _start(stack, namespace, start_agent, "32Mi")
    ident = _ready_with(stack, namespace, "data", 32 * MiB)["volumeName"]
    stack.kubectl("delete", "svol", "data", "-n", namespace, "--wait=false")
    wait_for(lambda: _svol(stack, namespace, "data").get("reason") == "VolumeInUse", 30,
             what="VolumeInUse")
    assert "user" in next(c["message"] for c in _svol(stack, namespace, "data")["conditions"]
                          if c["type"] == "Ready")
    stack.kubectl("delete", "grs", "user", "-n", namespace, "--timeout=30s")
    wait_for(lambda: not _svol(stack, namespace, "data"), 30, what="the volume deleted")
    assert not [m for m in _mounts_of(stack) if ident in m]
    client = stack.docker_client()
    try:
        assert ident not in {v.name for v in client.volumes.list()}
    finally:
        client.close()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert ident not in loops
    assert not list(stack.base_dir.glob(f"**/volumes/images/{ident}*"))


def test_10_volumes_are_attached_again_after_a_restart(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _, agent = _start(stack, namespace, start_agent, "32Mi")
    ident = _ready_with(stack, namespace, "data", 32 * MiB)["volumeName"]
    _in(stack, namespace, "echo kept > /data/file")
    # What a host reboot leaves: the agent gone, the container stopped, no mount.
    agent.stop()
    only_container(stack, namespace, "user").stop(timeout=1)
    for line in _mounts_of(stack):
        if ident in line:
            subprocess.run(["umount", line.split()[4]], check=True)
    start_agent(extra_args=["--resync-seconds", "2"])
    wait_for(lambda: only_container(stack, namespace, "user").status == "running", 60,
             what="the consumer running again")
    assert [m for m in _mounts_of(stack) if ident in m]  # on the volume, not the dir below
    assert _in(stack, namespace, "cat /data/file")[1].strip() == "kept"


def test_10_the_volume_example_is_mounted_by_the_instance_example(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    start_agent(extra_args=["--resync-seconds", "2"])
    examples = Path(__file__).resolve().parents[2] / "examples"
    for example in ("02-sized-volume.yaml", "06-volume-user.yaml"):
        stack.kubectl("apply", "-n", namespace, "-f", str(examples / example))
    _ready_with(stack, namespace, "data", 2**30)
    wait_settled(stack, namespace, "notebook")
    shown = sh(only_container(stack, namespace, "notebook"), "df -m /root/data | tail -1")
    assert 900 <= int(shown.split()[1]) <= 1024
    row = stack.kubectl("get", "svol", "data", "-n", namespace).stdout.splitlines()[1]
    assert "Ready" in row.split()
    # Its users are what Docker shows mounting it, refreshed at each resync.
    wait_for(lambda: _svol(stack, namespace, "data").get("consumers") == ["notebook"], 30,
             what="the volume listing its user")
