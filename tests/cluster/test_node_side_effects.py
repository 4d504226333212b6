"""The real node changes the machine only while it runs, and only its own things: its
pods' packets to anything but the stack's bridge are dropped, and the sysctls, iptables
rules, cgroups and host directories it made are gone after teardown, also when the
test inside fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.stack.localstack import LocalStack, wait_for
from tests.stack.node import KUBELET_HOST_DIRS, KUBELET_SYSCTLS

pytestmark = [pytest.mark.stack, pytest.mark.node]


def sysctls() -> dict[str, str]:
    return {key: subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                                check=True).stdout.strip() for key in KUBELET_SYSCTLS}


def our_rules(stack: LocalStack) -> list[str]:
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [rule for rule in rules if stack.base_dir.name in rule]


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
