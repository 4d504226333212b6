"""#26 item 1 (its first half) against the real stack: `kubectl gpudock logs` streams
a GpuReplicaSet's output from its node's agent over TLS, with the caller's token and
permission checked by the API server (TokenReview, SubjectAccessReview); a crash
loop's output is readable; a caller without the permission is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import wait_settled
from tests.stack.localstack import LocalStack, person_kubeconfig, wait_for
from tests.stack.processes import free_port
from tests.stack.resources import apply, gpu_replica_set, status

pytestmark = pytest.mark.timeout(300)


def _logs(stack: LocalStack, kubeconfig: Path, namespace: str, *args: str,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl-gpudock", "logs", *args, "-n", namespace,
                           "--kubeconfig", str(kubeconfig)], capture_output=True, text=True,
                          env=stack.env(), timeout=timeout, check=False)


def test_26_1_logs_of_a_crash_loop_with_the_callers_permission(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    start_agent(extra_args=["--stream-port", str(free_port()),
                            "--stream-idle-seconds", "3"])
    apply(stack, namespace,
          gpu_replica_set("crash", gpus=0, command=["sh", "-c", "echo run at $(date +%s%N)"
                                                    "; echo why >&2; exit 3"]),
          gpu_replica_set("talk", gpus=0, command=["sh", "-c", "i=0; while :; do "
                                                   "i=$((i+1)); echo line $i; sleep 0.2; "
                                                   "done"]))
    wait_for(lambda: (status(stack, namespace, "crash").get("restartCount") or 0) >= 2, 90,
             what="crash restarted twice")
    wait_settled(stack, namespace, "talk")
    alice = person_kubeconfig(stack, "alice", tmp_path / "alice")
    mallory = person_kubeconfig(stack, "mallory", tmp_path / "mallory")
    stack.kubectl("create", "rolebinding", "alice-view", "-n", namespace,
                  "--clusterrole=gpudock-view", "--user=alice")
    # mallory may read the instance and (as alice) the nodes, not the instance's logs.
    stack.kubectl("create", "role", "reader", "-n", namespace, "--verb=get",
                  "--resource=gpureplicasets.gpudock.dev")
    stack.kubectl("create", "rolebinding", "mallory-reads", "-n", namespace,
                  "--role=reader", "--user=mallory")
    stack.kubectl("create", "clusterrole", f"{namespace}-nodes", "--verb=get",
                  "--resource=gpunodes.gpudock.dev")
    stack.kubectl("create", "clusterrolebinding", f"{namespace}-nodes",
                  f"--clusterrole={namespace}-nodes", "--user=alice", "--user=mallory")

    # A caller whose role does not grant gpureplicasets/log is refused; so is a bad token.
    refused = _logs(stack, mallory, namespace, "crash")
    assert refused.returncode == 1
    assert "403" in refused.stderr
    assert "may not get gpureplicasets/log" in refused.stderr
    assert refused.stdout == ""
    (tmp_path / "forged").write_text((tmp_path / "alice").read_text().replace(
        "gpudock-alice-token", "forged"))
    assert "401" in _logs(stack, tmp_path / "forged", namespace, "crash").stderr

    # The crash loop says why: every run's output, stdout and stderr.
    seen = _logs(stack, alice, namespace, "crash")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.count("why") >= 2
    assert seen.stdout.count("run at") >= 2
    earlier = _logs(stack, alice, namespace, "crash", "--previous")
    assert earlier.returncode == 0, earlier.stderr
    assert earlier.stdout.count("run at") >= 1  # the runs before the last start
    last = _logs(stack, alice, namespace, "talk", "--tail", "2")
    assert [line.split()[0] for line in last.stdout.splitlines()] == ["line", "line"]

    # Followed: new lines arrive as they are written, until the stream idles out.
    follow = subprocess.Popen(["kubectl-gpudock", "logs", "-f", "--tail", "1", "talk", "-n",
                               namespace, "--kubeconfig", str(alice)],
                              stdout=subprocess.PIPE, text=True, env=stack.env())
    try:
        assert follow.stdout is not None
        numbers: list[int] = []
        while len(numbers) < 5:
            line = follow.stdout.readline()
            assert line, "the stream ended early"
            numbers.append(int(line.split()[1]))
        assert numbers == list(range(numbers[0], numbers[0] + 5))  # live and in order
    finally:
        follow.kill()
        follow.wait()
        if follow.stdout is not None:
            follow.stdout.close()


def test_26_1_a_stream_that_ended_gives_its_slot_back(
    stack: LocalStack, namespace: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:
    """Review of 2026-12-05: a followed stream of a container that went silent kept
    its reader thread blocked on Docker and its slot taken after it ended, so after
    MAX_STREAMS such streams every `logs` and `exec -it` of the node got 429."""
    from gpudock.agent.log_stream import MAX_STREAMS

    start_agent(extra_args=["--stream-port", str(free_port()),
                            "--stream-idle-seconds", "1"])
    apply(stack, namespace, gpu_replica_set("quiet", gpus=0, command=[
        "sh", "-c", "echo ready; exec sleep 100000"]))
    wait_settled(stack, namespace, "quiet")
    alice = person_kubeconfig(stack, "alice", tmp_path / "alice")
    stack.kubectl("create", "rolebinding", "alice-view", "-n", namespace,
                  "--clusterrole=gpudock-view", "--user=alice")
    stack.kubectl("create", "clusterrole", f"{namespace}-nodes", "--verb=get",
                  "--resource=gpunodes.gpudock.dev")
    stack.kubectl("create", "clusterrolebinding", f"{namespace}-nodes",
                  f"--clusterrole={namespace}-nodes", "--user=alice")
    for attempt in range(MAX_STREAMS + 2):
        # Each follows the silent container until the idle timeout ends it.
        ended = _logs(stack, alice, namespace, "quiet", "-f")
        assert ended.returncode == 0, f"stream {attempt + 1}: {ended.stderr}"
        assert "ready" in ended.stdout
        assert "stream ended: idle" in ended.stdout
