"""The fuzz against a running stack: each kind's cases sent in batches through the
real API server, each accepted object followed until it runs or shows a reason, then
the batch deleted and the node checked (no container left, the agent alive, no
traceback in its log)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.fuzz import judge
from tests.fuzz.cluster import FUZZ_LABEL, GROUP_VERSION, Answer, Cluster
from tests.fuzz.specs import MISSING, Case, Kind
from tests.stack.agent_process import NODE_NAME, AgentProcess
from tests.stack.localstack import BUSYBOX_IMAGE, IDLE_COMMAND, LocalStack
from tests.stack.processes import wait_for
from tests.stack.resources import containers

OWN_NODE = "GpuNode specs on the agent's own node"
TARGET = "fuzz-target"  # a running GpuReplicaSet the request kinds may name
LOCAL_IMAGES = {BUSYBOX_IMAGE, "gpudock-test/busybox", "busybox"}
# No registry may be reached: an image the node lacks is pulled from a closed port of
# loopback (a refused connection: ErrImagePull at once), unless the policy is Never.
CLOSED_REGISTRY = "127.0.0.1:9/"
# Reasons that refuse a GpuReplicaSet as written: it must have no container.
REFUSALS = {"InvalidSpec", "ImageNotPresent", "ErrImagePull", "ImagePullBackOff",
            "ReservedImage", "ExceedsNodeCapacity", "LimitBelowRequest",
            "BelowDockerMinimum", "HostPathNotAllowed", "HostPathMissing",
            "HostPathCrossesMount", "HostPathReadOnly", "HostPortNotAllowed",
            "HostPortInUse", "NoFreeHostPort", "RevisionNotFound", "ContainerCreateFailed",
            "ContainerStartFailed", "CommandNotFound", "DockerRequestFailed"}


@dataclass
class Report:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # outcomes seen only at the deadline

    def violation(self, kind: str, what: str) -> None:
        self.violations.append(f"{kind}: {what}")

    def table(self) -> str:
        lines = []
        for kind in sorted({k for k, _ in self.counts}):
            total = sum(n for (k, _), n in self.counts.items() if k == kind)
            lines.append(f"{kind}: {total}")
            for (k, label), n in sorted(self.counts.items(), key=lambda i: (-i[1], i[0])):
                if k == kind:
                    lines.append(f"  {n:6d}  {label}")
        return "\n".join(lines)


@dataclass
class Fuzz:
    stack: LocalStack
    agent: AgentProcess
    cluster: Cluster
    seed: int
    report: Report = field(default_factory=Report)
    settle_seconds: float = 120.0
    _log_seen: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ one kind
    def run_kind(self, kind: Kind, cases: list[Case], batch: int) -> None:
        for start in range(0, len(cases), batch):
            self._batch(kind, cases[start:start + batch])

    def _batch(self, kind: Kind, cases: list[Case]) -> None:
        bodies = [self._body(kind, case) for case in cases]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: self.cluster.create(
                kind.plural, kind.namespaced, b), bodies))
        accepted: dict[str, Case] = {}
        for case, body, answer in zip(cases, bodies, answers, strict=True):
            if answer.status == 201:
                accepted[body["metadata"]["name"]] = case
            else:
                self._refused(kind, case, answer)
        outcomes = self._settle(kind, accepted)
        if kind.name == "GpuReplicaSet":
            self._no_container_for_refusals(outcomes)
        if kind.name == "GpuNode":
            self._on_own_node([accepted[n] for n in sorted(accepted)])
        self._delete_all(kind)
        self._node_checks(kind.name)

    def _body(self, kind: Kind, case: Case) -> dict[str, Any]:
        short = "".join(c for c in kind.name if c.isupper()).lower()
        body: dict[str, Any] = {
            "apiVersion": GROUP_VERSION, "kind": kind.name,
            "metadata": {"name": f"fz-{short}-{case.index:05d}",
                         "labels": {FUZZ_LABEL: str(self.seed)}}}
        if case.spec is not MISSING:
            body["spec"] = adapt(kind.name, case, random.Random(f"{self.seed}:{case.index}"),
                                 self.cluster.namespace)
        return body

    def _refused(self, kind: Kind, case: Case, answer: Answer) -> None:
        if answer.status >= 500 and answer.status != 504:
            self.report.violation(kind.name, f"case {case.index} ({case.how}): the API "
                                  f"server answered {answer.status}: {answer.message[:300]}")
        if not answer.message.strip():
            self.report.violation(kind.name, f"case {case.index} ({case.how}): refused "
                                  f"({answer.status}) without a message")
        self.report.counts[(kind.name, f"refused by the API server ({answer.status})")] += 1

    def _settle(self, kind: Kind, accepted: dict[str, Case]) -> dict[str, dict[str, Any]]:
        """Poll until every accepted object has its outcome or the deadline passes."""
        if kind.name == "GpuNode":  # no agent of their own: the spec is all there is
            for _ in accepted:
                self.report.counts[(kind.name, "accepted (spec only, no agent)")] += 1
            return {}
        pending, done = set(accepted), {}
        deadline = time.monotonic() + self.settle_seconds
        objects: dict[str, dict[str, Any]] = {}
        while pending and time.monotonic() < deadline:
            objects = {o["metadata"]["name"]: o
                       for o in self.cluster.listed(kind.plural, kind.namespaced)}
            for name in list(pending):
                if name not in objects and _expires(kind.name, accepted[name]):
                    label: str | None = "finished, then deleted by its ttlSecondsAfterFinished"
                else:
                    label = judge.outcome(kind.name, objects.get(name) or {})
                    if label is not None:
                        done[name] = objects[name]
                if label is not None:
                    self.report.counts[(kind.name, label)] += 1
                    pending.discard(name)
            if pending:
                time.sleep(1.0)
        for name in sorted(pending):  # the deadline: what reason it shows, if any
            obj = objects.get(name) or {}
            label = judge.final(kind.name, obj)
            if label is None:
                case = accepted[name]
                self.report.violation(kind.name, f"{name} ({case.how}): accepted, no "
                                      f"condition with a reason after {self.settle_seconds:.0f}"
                                      f" s; status {obj.get('status')!r:.300}")
                label = "accepted, no condition (VIOLATION)"
            elif name in objects:
                label += " at the deadline"
                done[name] = obj
                conds = [(c.get("type"), c.get("reason"), str(c.get("message"))[:200])
                         for c in judge.conditions(obj).values()]
                self.report.notes.append(f"{kind.name} {name} ({accepted[name].how}): {conds}")
            self.report.counts[(kind.name, label)] += 1
        return done

    def _no_container_for_refusals(self, outcomes: dict[str, dict[str, Any]]) -> None:
        refused = {name for name, obj in outcomes.items()
                   if judge.reason_of(obj) in REFUSALS
                   and (judge.conditions(obj).get("Ready") or {}).get("status") != "True"}

        def left() -> set[str]:
            names = {c.labels.get("gpudock.dev/name", "")
                     for c in containers(self.stack, self.cluster.namespace)}
            return names & refused

        try:
            wait_for(lambda: not left(), 20, what="no container for a refused spec")
        except TimeoutError:
            for name in sorted(left()):
                self.report.violation("GpuReplicaSet", f"{name}: refused "
                                      f"({judge.reason_of(outcomes[name])}) but its "
                                      "container is on the node")

    def _on_own_node(self, specs: list[Case]) -> None:
        """Each accepted GpuNode spec put on the agent's own GpuNode in turn: its
        heartbeat goes on, its status stays Ready."""
        path = self.cluster.path("gpunodes", False, NODE_NAME)
        for case in specs:
            spec = case.spec if isinstance(case.spec, dict) else {}
            answer = self.cluster.request("PATCH", path, [{"op": "add", "path": "/spec",
                                                           "value": spec}],
                                          content_type="application/json-patch+json")
            if answer.status != 200:
                self.report.counts[(OWN_NODE, f"refused ({answer.status})")] += 1
            else:
                self.report.counts[(OWN_NODE, "put on it")] += 1
        before = self._heartbeat()
        try:
            wait_for(lambda: self._heartbeat() not in (None, before), 30,
                     what="a new heartbeat of the agent's GpuNode")
        except TimeoutError:
            self.report.violation(OWN_NODE, f"no heartbeat after fuzzed specs (last {before})")
        else:
            self.report.counts[(OWN_NODE, "heartbeat kept after the batch")] += 1
        self.cluster.request("PATCH", path, [{"op": "add", "path": "/spec", "value": {}}],
                             content_type="application/json-patch+json")

    def _heartbeat(self) -> str | None:
        answer = self.cluster.request("GET", self.cluster.path("gpunodes", False, NODE_NAME))
        status = answer.body.get("status") or {} if isinstance(answer.body, dict) else {}
        ready = judge.conditions({"status": status}).get("Ready") or {}
        return str(status.get("heartbeatTime")) if ready.get("status") == "True" else None

    def _delete_all(self, kind: Kind) -> None:
        self.cluster.delete_labelled(kind.plural, kind.namespaced)
        try:
            wait_for(lambda: not self.cluster.listed(kind.plural, kind.namespaced), 180,
                     interval=1.0, what=f"every fuzzed {kind.name} gone")
        except TimeoutError:
            left = [o["metadata"]["name"]
                    for o in self.cluster.listed(kind.plural, kind.namespaced)]
            self.report.violation(kind.name, f"not deleted after 180 s: {left[:10]}")

    # ------------------------------------------------------------------ the node
    def _node_checks(self, kind: str) -> None:
        def fuzzed() -> list[str]:
            return [str(c.name) for c in containers(self.stack, self.cluster.namespace)
                    if c.labels.get("gpudock.dev/name", "").startswith("fz-")]

        try:
            wait_for(lambda: not fuzzed(), 60, what="no container of a deleted spec")
        except TimeoutError:
            self.report.violation(kind, f"containers left after delete: {fuzzed()}")
        self.check_log(kind, self.agent.log, "agent")
        if not (self.agent.process and self.agent.process.alive()):
            self.report.violation(kind, "the agent exited")

    def check_log(self, kind: str, read: Callable[[], str], who: str) -> None:
        text = read()
        new = text[self._log_seen.get(who, 0):]
        self._log_seen[who] = len(text)
        at = new.find("Traceback")
        if at >= 0:
            self.report.violation(kind, f"traceback in the {who}'s log:\n"
                                  + new[max(0, at - 400):at + 3000])


def _expires(kind: str, case: Case) -> bool:
    """An ExecRequest deleted by its agent right after it finished (as a Job is): a
    short ttlSecondsAfterFinished, which the fuzz may not see the status of."""
    ttl = case.spec.get("ttlSecondsAfterFinished") if isinstance(case.spec, dict) else None
    return kind == "ExecRequest" and isinstance(ttl, int) and ttl < 120


def adapt(kind: str, case: Case, rng: random.Random, namespace: str) -> Any:
    """What the fuzz changes in a case before it is sent (never the field its mutation
    is about): GpuReplicaSets mostly pinned to the agent's node, a few of them made
    runnable (the node's busybox, an idle command, at most one GPU), and no pull that
    leaves loopback; some SizedVolumes pinned to the agent's node; a few requests aimed
    at the running target (half of those ImageCommits under the namespace's
    repository, so they commit)."""
    spec = case.spec
    if not isinstance(spec, dict):
        return spec
    about = case.how
    if kind == "GpuReplicaSet":
        if "nodeName" not in about:
            roll = rng.random()
            if roll < 0.8:
                spec["nodeName"] = NODE_NAME
            elif roll < 0.9:
                spec.pop("nodeName", None)
        if rng.random() < 0.08 and not any(f in about for f in ("image", "command")):
            spec.update(image=BUSYBOX_IMAGE, command=IDLE_COMMAND,
                        imagePullPolicy="IfNotPresent")
            if isinstance(spec.get("gpuCount"), int) and "gpuCount" not in about:
                spec["gpuCount"] = min(spec["gpuCount"], 1)
        image = spec.get("image")
        if isinstance(image, str) and image not in LOCAL_IMAGES \
                and spec.get("imagePullPolicy") != "Never":
            spec["image"] = CLOSED_REGISTRY + image
    elif kind == "SizedVolume" and "nodeName" not in about and rng.random() < 0.15:
        spec["nodeName"] = NODE_NAME  # a real volume (loop file), or a reason
    elif kind in judge.REQUEST_KINDS and "replicaSetName" not in about \
            and rng.random() < 0.1:
        spec["replicaSetName"] = TARGET
        image = spec.get("image")
        if kind == "ImageCommit" and isinstance(image, str) and "image" not in about \
                and rng.random() < 0.5:  # under the namespace's repository: a commit
            spec["image"] = f"gpudock.invalid/{namespace}/{image}"
    return spec


def start_target(stack: LocalStack, cluster: Cluster) -> None:
    """The running GpuReplicaSet that requests may name (kept through every batch)."""
    body = {"apiVersion": GROUP_VERSION, "kind": "GpuReplicaSet",
            "metadata": {"name": TARGET},
            "spec": {"nodeName": NODE_NAME, "image": BUSYBOX_IMAGE,
                     "command": IDLE_COMMAND, "gpuCount": 1}}
    answer = cluster.create("gpureplicasets", True, body)
    if answer.status != 201:
        raise RuntimeError(f"{TARGET} not created: {answer.status} {answer.message}")

    def running() -> bool:
        got = cluster.request("GET", cluster.path("gpureplicasets", True, TARGET))
        return judge.outcome("GpuReplicaSet", got.body if isinstance(got.body, dict)
                             else {}) == "running"

    wait_for(running, 120, what=f"{TARGET} running")
