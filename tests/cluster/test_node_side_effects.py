"""The real node changes the machine only while it runs, and only its own things: its
pods' packets to anything but the stack's bridge are dropped, and the sysctls, iptables
rules, cgroups and host directories it made are gone after teardown, also when the
test inside fails, and also when the process running the stack is killed outright (the
next stack's start takes them back)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.localstack import REPO_ROOT, LocalStack, wait_for
from tests.stack.node import KUBELET_HOST_DIRS, KUBELET_SYSCTLS
from tests.stack.processes import proc_stat
from tests.stack.reclaim import processes_of, reclaim_dead_stacks

pytestmark = [pytest.mark.stack, pytest.mark.node]


def sysctls() -> dict[str, str]:
    return {key: subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                                check=True).stdout.strip() for key in KUBELET_SYSCTLS}


def rules_of(base_dir: Path) -> list[str]:
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [rule for rule in rules if base_dir.name in rule]


def running(pid: int) -> bool:
    """The process exists and is not a zombie (one killed but not reaped yet)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def our_rules(stack: LocalStack) -> list[str]:
    return rules_of(stack.base_dir)


def drop_counter(stack: LocalStack) -> int:
    listing = subprocess.run(["iptables", "-L", "FORWARD", "-v", "-x", "-n"],
                             capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in listing.splitlines()
               if stack.base_dir.name in line)


class FailedInsideError(Exception):
    pass


def probe_then_fail(stack: LocalStack) -> None:
    """Inside the running stack: a pod tries the service IP and an outside address
    (TEST-NET-1); then the test fails, as a broken test would."""
    with stack:
        assert len(our_rules(stack)) == 2
        assert sysctls()["vm.overcommit_memory"] == "1"  # the kubelet's change
        dropped = drop_counter(stack)
        stack.kubectl("run", "prober", "--image=gpudock-test/busybox:1",
                      "--image-pull-policy=Never", "--restart=Never", "--",
                      "sh", "-c", "nc -w 2 10.96.0.1 443; nc -w 2 192.0.2.1 80; true")
        wait_for(lambda: "Succeeded" in stack.kubectl(
            "get", "pod", "prober", "-o", "jsonpath={.status.phase}").stdout,
                 60, 1, "the probe pod done")
        assert drop_counter(stack) > dropped  # its SYNs were dropped, not forwarded
        raise FailedInsideError("a test failing inside the stack")


def test_pods_cannot_reach_out_and_teardown_undoes_everything_after_a_failure() -> None:
    before = sysctls()
    host_dirs = {d: d.exists() for d in KUBELET_HOST_DIRS}
    stack = LocalStack(node=True)
    with pytest.raises(FailedInsideError):
        probe_then_fail(stack)
    assert our_rules(stack) == []
    assert sysctls() == before
    assert {d: d.exists() for d in KUBELET_HOST_DIRS} == host_dirs
    assert not list(Path("/sys/fs/cgroup").glob(f"*/gpudock-{stack.bridge}"))
    assert f"{stack.base_dir}/" not in Path("/proc/mounts").read_text()
    assert not stack.base_dir.exists()


# Run in a child process that the test kills with SIGKILL: a stack with a node, a
# container whose PID 1 ignores SIGTERM and a pod, as a test run killed by a timeout
# leaves them.
KILLED_STACK = """
import json, time
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack, wait_for
stack = LocalStack(node=True).start()
client = stack.docker_client()
box = client.containers.run(BUSYBOX_IMAGE, ["sleep", "infinity"], detach=True)
stack.kubectl("run", "sleeper", "--image=" + BUSYBOX_IMAGE, "--image-pull-policy=Never",
              "--restart=Never", "--", "sleep", "infinity")
wait_for(lambda: "Running" in stack.kubectl(
    "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}").stdout, 90, 1, "the pod")
box.reload()
print(json.dumps({"base_dir": str(stack.base_dir), "bridge": stack.bridge,
                  "container": box.id, "container_pid": box.attrs["State"]["Pid"]}),
      flush=True)
time.sleep(3600)
"""


def test_a_stack_whose_process_was_killed_is_taken_back_by_the_next_start() -> None:
    before = sysctls()
    host_dirs = {d: d.exists() for d in KUBELET_HOST_DIRS}
    child = subprocess.Popen([sys.executable, "-c", KILLED_STACK], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, "the stack in the child process did not come up"
        up = json.loads(line)
        base_dir, bridge = Path(up["base_dir"]), up["bridge"]
        assert base_dir not in reclaim_dead_stacks()  # its owner lives: left alone
        assert running(up["container_pid"])
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # no teardown runs
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    # What the kill left: the stack's servers and containers, its changes.
    assert processes_of(base_dir)
    assert running(up["container_pid"])
    assert sysctls()["vm.overcommit_memory"] == "1"  # the kubelet's change
    assert len(rules_of(base_dir)) == 2

    assert base_dir in reclaim_dead_stacks()  # as the next LocalStack.start() does

    assert processes_of(base_dir) == []
    assert not running(up["container_pid"])
    assert f"{base_dir}/" not in Path("/proc/mounts").read_text()
    assert str(base_dir) not in subprocess.run(["losetup", "-l"], capture_output=True,
                                               text=True, check=True).stdout
    assert not Path("/sys/class/net", bridge).exists()
    assert rules_of(base_dir) == []
    assert sysctls() == before
    assert {d: d.exists() for d in KUBELET_HOST_DIRS} == host_dirs
    assert not list(Path("/sys/fs/cgroup").glob(f"*/gpudock-{bridge}"))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/docker/{up['container']}"))
    assert not base_dir.exists()
