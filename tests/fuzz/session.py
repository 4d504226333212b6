"""One fuzz session on a running stack: an agent (simulated GPUs) and the REST API,
every kind's cases, then the REST bodies; returns the report (counts and violations).
``python -m tests.fuzz`` and the suite's test both run this."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tests.fuzz import rest_bodies, specs
from tests.fuzz.cluster import Cluster
from tests.fuzz.runner import Fuzz, Report, start_target
from tests.stack.agent_process import AgentProcess
from tests.stack.api_process import ApiProcess
from tests.stack.localstack import BUSYBOX_IMAGE, IDLE_COMMAND, LocalStack, wait_for
from tests.stack.resources import containers

# The order: GpuNode last, as its specs (cordons, taints) go on the agent's own node.
KINDS = ("GpuReplicaSet", "SizedVolume", "ExecRequest", "ImageCommit", "GpuMigration",
         "GpuNode")


def fuzz(stack: LocalStack, namespace: str, *, per_kind: int, seed: int, rest: int,
         batch: int = 125, kinds: Sequence[str] = KINDS,
         say: Callable[[str], None] = print, report: Report | None = None) -> Report:
    """The counts and violations go into ``report`` (a new one when None) as they come,
    so a caller can show them when the session fails half way."""
    say(f"fuzz: seed {seed}, {per_kind} specs per kind, {rest} REST bodies "
        f"(replay: python -m tests.fuzz --per-kind {per_kind} --seed {seed} --rest {rest})")
    all_kinds = specs.load_kinds()
    agent = AgentProcess(stack, name=f"fuzz-agent-{namespace}", extra_args=[
        "--namespace", namespace, "--release-namespace", namespace,
        "--heartbeat-seconds", "2"]).start()
    cluster = Cluster(stack, namespace)
    run = Fuzz(stack, agent, cluster, seed, report or Report())
    try:
        start_target(stack, cluster)
        for name in kinds:
            began = time.monotonic()
            kind_cases = specs.cases(all_kinds[name], per_kind, seed)
            drawn = time.monotonic() - began
            run.run_kind(all_kinds[name], kind_cases, batch)
            say(f"  {name}: {len(kind_cases)} specs in {time.monotonic() - began:.0f} s "
                f"(drawn in {drawn:.0f} s)")
        if rest:
            began = time.monotonic()
            _rest(stack, namespace, run, rest, seed)
            say(f"  REST bodies: {rest} in {time.monotonic() - began:.0f} s")
        _delete_everything(stack, namespace, run)
    finally:
        agent.stop()
    run.check_log("the end", agent.log, "agent")
    return run.report


def _rest(stack: LocalStack, namespace: str, run: Fuzz, count: int, seed: int) -> None:
    api = ApiProcess(stack, namespace, name="fuzz-api",
                     extra_args=["--wait-seconds", "20"]).start()
    try:
        made = api.call("POST", "/replicaSet", {
            "imageName": BUSYBOX_IMAGE, "replicaSetName": rest_bodies.TARGET,
            "cmd": IDLE_COMMAND, "gpuCount": 1})
        volume = api.call("POST", "/volumes", {"name": rest_bodies.VOLUME, "size": "16MB"})
        if made.code != 200 or volume.code != 200:
            raise RuntimeError(f"REST targets not made: {made.raw!r} {volume.raw!r}")

        def tally(label: str) -> None:
            run.report.counts[("REST API", label)] += 1

        rest_bodies.run(api, rest_bodies.cases(count, seed), tally,
                        lambda what: run.report.violation("REST API", what))
    finally:
        api.stop()
        run.check_log("REST API", lambda: api.log_path.read_text(errors="replace"),
                      "REST API")


def _delete_everything(stack: LocalStack, namespace: str, run: Fuzz) -> None:
    """Every GpuReplicaSet and SizedVolume left (the targets, what the REST API made):
    deleted through the agent, no container left."""
    for plural in ("gpureplicasets", "sizedvolumes"):
        run.cluster.delete_labelled(plural, True, selector="")
        try:
            wait_for(lambda p=plural: not run.cluster.listed(p, True, selector=""), 120,  # type: ignore[misc]
                     interval=1.0, what=f"every {plural} gone")
        except TimeoutError:
            left = [o["metadata"]["name"] for o in run.cluster.listed(plural, True, "")]
            run.report.violation("the end", f"{plural} not deleted after 120 s: {left}")
    try:
        wait_for(lambda: not containers(stack, namespace), 60, what="no containers")
    except TimeoutError:
        run.report.violation("the end", f"containers left: "
                             f"{[c.name for c in containers(stack, namespace)]}")
