"""The local stack itself: a second stack runs beside the session's on other ports, and
stopping it leaves no process, mount, loop device, bridge or directory behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack

REPO = Path(__file__).resolve().parents[2]


def _loop_devices_under(prefix: str) -> list[str]:
    listing = subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True,
                             check=True).stdout
    devices = json.loads(listing or '{"loopdevices": []}')["loopdevices"]
    return [d["name"] for d in devices if str(d.get("back-file") or "").startswith(prefix)]


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def test_second_stack_runs_beside_and_tears_down_cleanly(stack: LocalStack) -> None:
    second = LocalStack().start()
    base = str(second.base_dir)
    try:
        assert {second.etcd_port, second.apiserver_port}.isdisjoint(
            {stack.etcd_port, stack.apiserver_port})
        assert second.bridge != stack.bridge
        client = second.docker_client()
        client.containers.run(BUSYBOX_IMAGE, ["sleep", "infinity"], detach=True, name="busy")
        client.close()
        # A loop-mounted filesystem, as the volume backend makes them.
        image = second.base_dir / "vol.img"
        subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
        mount_point = second.base_dir / "vol"
        mount_point.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
        assert _loop_devices_under(base)
        assert _mounts_under(base)
        pids = [p.pid for p in second.processes.values()]
    finally:
        second.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), pid
    leftovers = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    assert _mounts_under(base) == []
    assert _loop_devices_under(base) == []
    links = subprocess.run(["ip", "link"], capture_output=True, text=True, check=True).stdout
    assert second.bridge not in links
    assert not second.base_dir.exists()
    # The session's stack is untouched.
    assert stack.kubectl("get", "crd").returncode == 0


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_prerequisites_are_cached_on_a_second_run() -> None:
    started = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "tests/stack/install-prereqs.sh")],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "GPUDOCK_SKIP_PIP": "1"})
    elapsed = time.monotonic() - started
    assert "cached in" in result.stderr, result.stderr
    assert "building" not in result.stderr
    print(f"install-prereqs.sh with a warm cache: {elapsed:.1f}s")
