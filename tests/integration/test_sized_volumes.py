"""#10 against the real stack: SizedVolumes on the loopfile backend (real loop
devices, ext4), on btrfs (a real loop-mounted btrfs with qgroups) and on the copy
backend (plain Docker volumes), mounted by GpuReplicaSets. Test names carry #10."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import only_container, sh, wait_settled
from tests.stack import filesystems
from tests.stack.agent_process import AgentProcess
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import apply, event_reasons, gpu_replica_set, status

MiB = 2**20


def _volume(name: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
            "metadata": {"name": name}, "spec": {"nodeName": "gpu-node-1", "size": size}}


def _svol(stack: LocalStack, namespace: str, name: str) -> dict[str, Any]:
    found = stack.kubectl("get", "svol", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return {}
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
           size: str, backend: list[str] | None = None) -> tuple[str, AgentProcess]:
    agent = start_agent(extra_args=["--resync-seconds", "2", *(backend or [])])
    apply(stack, namespace, _volume("data", size),
          gpu_replica_set("user", mounts=[{"volume": "data", "mountPath": "/data"}]))
    wait_settled(stack, namespace, "user")
    return str(status(stack, namespace, "user")["containerID"]), agent


def _resize(stack: LocalStack, namespace: str, size: str) -> None:
    stack.kubectl("patch", "svol", "data", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"size": size}}))


@pytest.fixture(params=["loopfile", "btrfs"])
def backend(request: pytest.FixtureRequest, stack: LocalStack) -> Iterator[list[str]]:
    """The agent's flags for a backend that resizes in place (btrfs: on a loop-mounted
    btrfs of its own, unmounted after the test's volumes are gone)."""
    if request.param == "loopfile":
        yield []
        return
    with filesystems.btrfs(stack.base_dir) as root:
        yield ["--volume-backend", "btrfs", "--volume-root", str(root)]


def test_10_a_hard_limit_and_an_online_grow(
    stack: LocalStack, backend: list[str], namespace: str, start_agent: AgentFactory,
) -> None:
    container_id, _ = _start(stack, namespace, start_agent, "64Mi", backend)
    small = _ready_with(stack, namespace, "data", 64 * MiB)
    btrfs = "btrfs" in backend
    assert small["backend"] == ("btrfs" if btrfs else "loopfile")
    assert 50 * MiB < small["capacityBytes"] <= 64 * MiB
    assert small["revision"] == 1
    wait_for(lambda: _svol(stack, namespace, "data").get("consumers") == ["user"], 30,
             what="the volume listing its user (refreshed each resync)")
    code, out = _in(stack, namespace, "dd if=/dev/zero of=/data/big bs=1M count=80 2>&1")
    assert code != 0
    assert ("Disk quota exceeded" if btrfs else "No space left") in out
    if not btrfs:  # a qgroup limit is not a filesystem size: df shows the whole btrfs
        code, out = _in(stack, namespace, "df -m /data | tail -1")
        assert 50 <= int(out.split()[1]) <= 64  # df inside shows the limit
    _in(stack, namespace, "rm -f /data/big; sync; dd if=/dev/urandom of=/data/keep bs=1M "
        "count=20 2>/dev/null; sha256sum /data/keep > /data/keep.sum")

    _resize(stack, namespace, "256Mi")
    grown = _ready_with(stack, namespace, "data", 256 * MiB)
    assert grown["capacityBytes"] > 200 * MiB
    assert status(stack, namespace, "user")["containerID"] == container_id  # no restart
    assert _in(stack, namespace, "sha256sum -c /data/keep.sum")[0] == 0
    code, out = _in(stack, namespace, "dd if=/dev/zero of=/data/more bs=1M count=150 2>&1")
    assert code == 0, out
    wait_for(lambda: _svol(stack, namespace, "data").get("revision") == 2, 30,
             what="the size change recorded as revision 2")
    history = subprocess.run(
        ["gpudock", "history", "svol/data", "-n", namespace,
         "--kubeconfig", str(stack.kubeconfig)],
        capture_output=True, text=True, env=stack.env(), check=True).stdout
    assert "resized to 256Mi" in history, history
    wait_for(lambda: {"VolumeCreated", "DockerVolumeCreated", "VolumeResized",
                      "RevisionRecorded"} <= set(event_reasons(stack, namespace, "data")),
             30, what=f"an Event per step (now {event_reasons(stack, namespace, 'data')})")


def test_10_shrinks_with_the_data_kept_and_refuses_below_usage(
    stack: LocalStack, backend: list[str], namespace: str, start_agent: AgentFactory,
) -> None:
    container_id, _ = _start(stack, namespace, start_agent, "256Mi", backend)
    _ready_with(stack, namespace, "data", 256 * MiB)
    _in(stack, namespace, "dd if=/dev/urandom of=/data/keep bs=1M count=100 2>/dev/null; "
        "sha256sum /data/keep > /data/keep.sum")
    _resize(stack, namespace, "32Mi")
    wait_for(lambda: _svol(stack, namespace, "data").get("reason") == "ShrinkBelowUsage",
             60, what="ShrinkBelowUsage")
    refused = _svol(stack, namespace, "data")
    assert refused["sizeBytes"] == 256 * MiB  # nothing changed
    assert refused["revision"] == 1
    degraded = next(c for c in refused["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert _in(stack, namespace, "sha256sum -c /data/keep.sum")[0] == 0
    wait_for(lambda: event_reasons(stack, namespace, "data").count("ShrinkBelowUsage") == 1,
             30, what="a Warning for the refusal")
    time.sleep(5)  # two more resyncs: still one (not one per resync)
    assert event_reasons(stack, namespace, "data").count("ShrinkBelowUsage") == 1

    _resize(stack, namespace, "192Mi")
    shrunk = _ready_with(stack, namespace, "data", 192 * MiB)
    assert shrunk["capacityBytes"] <= 192 * MiB
    wait_settled(stack, namespace, "user")  # its consumer running again
    assert status(stack, namespace, "user")["containerID"] == container_id
    assert _in(stack, namespace, "sha256sum -c /data/keep.sum")[0] == 0
    if "btrfs" in backend:  # a limit change: room for exactly what the limit allows
        code, out = _in(stack, namespace, "dd if=/dev/zero of=/data/more bs=1M count=120 "
                        "2>&1")
        assert code != 0
        assert "Disk quota exceeded" in out


# What the copy test writes into the volume, and how it reads back every property a
# copy must keep (owners, modes, times, sizes, link counts, symlink targets, sums).
FILL = (
    "mkdir -p /data/dir && echo hello > /data/dir/file && chown 1234:5678 /data/dir/file"
    " && chmod 0640 /data/dir/file && chmod 0751 /data/dir && ln -s dir/file /data/link"
    " && ln /data/dir/file /data/hard && truncate -s 200M /data/sparse"
    " && echo tail >> /data/sparse && dd if=/dev/urandom of=/data/blob bs=1M count=20"
    " 2>/dev/null && touch -d '2001-02-03 04:05:06' /data/blob && echo on-root > /root/mark")
READ = ("cd /data && for f in dir dir/file link hard sparse blob; do stat -c "
        "'%n %u %g %a %s %h %Y %F %N' $f; done && sha256sum dir/file hard sparse blob && "
        "[ $(stat -c %i dir/file) = $(stat -c %i hard) ] && echo hardlinked && "
        "[ $(( $(stat -c %b sparse) * 512 )) -lt $(( 10 * 1024 * 1024 )) ] && echo sparse")


def test_10_the_copy_backend_moves_the_data_to_a_new_volume(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    _start(stack, namespace, start_agent, "64Mi", ["--volume-backend", "copy"])
    first = _ready_with(stack, namespace, "data", 64 * MiB)
    assert first["volumeName"] == f"{namespace}_data-1"
    code, out = _in(stack, namespace, FILL)
    assert code == 0, out
    before = _in(stack, namespace, READ)[1]
    assert "hardlinked" in before
    assert "sparse" in before
    grs_revision = status(stack, namespace, "user")["revision"]

    _resize(stack, namespace, "40Mi")  # the data (~21Mi on disk) fits
    moved = _ready_with(stack, namespace, "data", 40 * MiB)
    assert moved["volumeName"] == f"{namespace}_data-2"
    wait_settled(stack, namespace, "user", revision=grs_revision + 1)
    assert _in(stack, namespace, READ)[1] == before  # every property kept
    assert _in(stack, namespace, "cat /root/mark")[1].strip() == "on-root"  # its own disk
    client = stack.docker_client()
    try:
        wait_for(lambda: f"{namespace}_data-1" not in {v.name for v in client.volumes.list()},
                 30, what="the old volume removed once nothing mounts it")
    finally:
        client.close()
    _resize(stack, namespace, "8Mi")  # below what it holds
    wait_for(lambda: _svol(stack, namespace, "data").get("reason") == "ShrinkBelowUsage",
             60, what="ShrinkBelowUsage")
    assert _svol(stack, namespace, "data")["volumeName"] == f"{namespace}_data-2"


def test_10_a_backend_the_root_cannot_serve_is_refused_at_start(
    stack: LocalStack, namespace: str,
) -> None:
    agent = AgentProcess(stack, name=f"refused-{namespace}", extra_args=[
        "--namespace", namespace, "--volume-backend", "btrfs", "--volume-root",
        str(stack.base_dir)])
    done = subprocess.run(agent.argv, capture_output=True, text=True, timeout=60,
                          env=agent.env)
    assert done.returncode == 2
    assert f"--volume-root {stack.base_dir} is on" in done.stdout  # the agent logs there
    assert "not btrfs" in done.stdout


def _mounts_of(stack: LocalStack) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f"{stack.base_dir}/" in line and "/volumes/mounts/" in line]


def test_10_delete_waits_while_mounted_and_leaves_nothing(
    stack: LocalStack, backend: list[str], namespace: str, start_agent: AgentFactory,
) -> None:
    _start(stack, namespace, start_agent, "32Mi", backend)
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
    if "btrfs" in backend:
        root = backend[backend.index("--volume-root") + 1]
        assert not (Path(root) / ident).exists()
        qgroups = subprocess.run(["btrfs", "qgroup", "show", "--raw", root],
                                 capture_output=True, text=True, check=True).stdout
        assert [line.split()[0] for line in qgroups.splitlines()[2:]] == ["0/5"], qgroups


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


def test_10_a_volume_whose_root_is_gone_says_so_and_recovers(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    with filesystems.btrfs(stack.base_dir) as root:
        flags = ["--resync-seconds", "2", "--volume-backend", "btrfs", "--volume-root",
                 str(root)]
        agent = start_agent(extra_args=flags)
        apply(stack, namespace, _volume("data", "32Mi"))
        _ready_with(stack, namespace, "data", 32 * MiB)
        agent.stop()
        subprocess.run(["umount", str(root)], check=True)  # what a failed disk leaves
        # The node's default backend is fine: the agent starts, and the volume's own
        # (recorded) backend is the one that cannot serve it.
        start_agent(extra_args=["--resync-seconds", "2"])
        wait_for(lambda: _svol(stack, namespace, "data").get("reason")
                 == "VolumeRootUnusable", 30, what="VolumeRootUnusable")
        broken = _svol(stack, namespace, "data")
        assert broken["phase"] == "Failed"
        ready = next(c for c in broken["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert "not btrfs" in ready["message"]
        subprocess.run(["mount", "-o", "loop", str(root.with_suffix(".img")), str(root)],
                       check=True)
        _ready_with(stack, namespace, "data", 32 * MiB)
        stack.kubectl("delete", "svol", "data", "-n", namespace, "--timeout=60s")
