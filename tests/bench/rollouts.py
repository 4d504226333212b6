"""GpuReplicaSet benchmark: gpudock against plain Docker and the original service's
method, on one local stack (its own dockerd, overlay2 on a loop-mounted ext4).

    python -m tests.bench.rollouts [--quick]     (make bench, make bench-quick)

Prints one table per measure; asserts nothing about speed. Everything is a ratio to a
baseline run in the same process on the same dockerd. --quick is the reduced size the
test suite runs (tests/bench/test_rollouts_quick.py); docs/performance.md has a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import docker
import kubernetes
import kubernetes.watch
import urllib3
import yaml

from gpudock.cli.retained_commands import table
from tests.stack.agent_process import AgentProcess
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack
from tests.stack.processes import free_port, proc_stat

MB = 10**6
NS = "bench"
STOP_TIMEOUT = 30
SLEEP = ["sleep", "3600"]
IGNORES_SIGTERM = ["sh", "-c", "trap '' TERM; sleep 3600 & wait"]


@dataclass(frozen=True)
class Size:
    bases: tuple[int, ...]  # MB of data in the base image beyond busybox
    changes: tuple[int, ...]  # MB the user writes before an update
    cycle_change: int  # MB for rollback and Stopped -> Running
    many: int  # resources applied at once
    idle_window: float  # seconds the idle cost is measured over
    idle_settle: float  # then, after this long, once more (0: not), when every
    # settled resource looks at its container at the longest period
    save_during: int  # MB being saved while an unrelated create is timed
    history_updates: int
    history_change: int
    repeats: int


FULL = Size((100, 1000), (10, 200, 1000), 200, 300, 60.0, 240.0, 1000, 10, 100, 5)
QUICK = Size((100,), (10, 200), 200, 30, 30.0, 0.0, 200, 3, 20, 3)


def shows_settled(body: dict[str, Any], phase: str = "Running",
                  revision: int | None = None) -> bool:
    """The resource's status says ``phase`` with its spec handled and nothing more to
    do."""
    status = body.get("status") or {}
    progressing: dict[str, Any] = next((c for c in status.get("conditions") or ()
                                        if c["type"] == "Progressing"), {})
    return bool(status.get("observedGeneration") == body["metadata"]["generation"]
                and status.get("phase") == phase and progressing.get("status") == "False"
                and (revision is None or status.get("revision") == revision))


class Bench:
    def __init__(self, stack: LocalStack, agent: AgentProcess) -> None:
        self.stack, self.agent = stack, agent
        self.docker = docker.DockerClient(base_url=stack.docker_host, timeout=600)
        # The stack's API server has a self-signed certificate, on loopback.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        api = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            str(stack.kubeconfig))
        self.objects = kubernetes.client.CustomObjectsApi(api)
        self.serial = 0

    # ------------------------------------------------------------------- resources
    def name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def apply(self, *bodies: dict[str, Any]) -> None:
        self.stack.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(bodies),
                           timeout=300)

    def body(self, name: str, image: str = BUSYBOX_IMAGE, gpus: int = 0,
             command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "gpudock.dev/v1alpha1", "kind": "GpuReplicaSet",
                "metadata": {"name": name},
                "spec": {"nodeName": self.agent.node_name, "image": image, "gpuCount": gpus,
                         "command": command or SLEEP, **spec}}

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object("gpudock.dev", "v1alpha1", NS,
                                                    "gpureplicasets", name, {"spec": spec})

    def settled(self, name: str, phase: str = "Running", revision: int | None = None,
                ) -> bool:
        try:
            body = cast(dict[str, Any], self.objects.get_namespaced_custom_object(
                "gpudock.dev", "v1alpha1", NS, "gpureplicasets", name))
        except kubernetes.client.ApiException:
            return False
        return shows_settled(body, phase, revision)

    def wait(self, predicate: Callable[[], bool], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: timed out after {timeout}s")
            time.sleep(0.02)

    def gone(self, name: str) -> bool:
        try:
            self.objects.get_namespaced_custom_object("gpudock.dev", "v1alpha1", NS,
                                                      "gpureplicasets", name)
        except kubernetes.client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    def delete(self, name: str) -> None:
        self.objects.delete_namespaced_custom_object("gpudock.dev", "v1alpha1", NS,
                                                     "gpureplicasets", name)
        self.wait(lambda: self.gone(name))

    def container(self, name: str) -> Any:
        (found,) = self.docker.containers.list(all=True, filters={"label": [
            f"gpudock.dev/namespace={NS}", f"gpudock.dev/name={name}"]})
        return found

    def create_ready(self, name: str, **spec: Any) -> float:
        """Seconds from the create (through the API, as `docker run` goes through
        Docker's) until the status says Running with the spec handled, seen as
        `kubectl wait` sees it: on a watch, not by polling."""
        body = self.body(name, **spec)
        listed = cast(dict[str, Any], self.objects.list_namespaced_custom_object(
            "gpudock.dev", "v1alpha1", NS, "gpureplicasets"))
        began = time.perf_counter()
        self.objects.create_namespaced_custom_object("gpudock.dev", "v1alpha1", NS,
                                                     "gpureplicasets", body)
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        for event in watch.stream(  # type: ignore[no-untyped-call]  # from the list's version
                self.objects.list_namespaced_custom_object, "gpudock.dev", "v1alpha1", NS,
                "gpureplicasets", field_selector=f"metadata.name={name}",
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=600):
            if shows_settled(event["object"]):
                watch.stop()  # type: ignore[no-untyped-call]
                return time.perf_counter() - began
        raise TimeoutError(f"bench: {name} not Running after 600 s")

    # ---------------------------------------------------------------------- disks
    def base_image(self, mb: int) -> str:
        """busybox plus ``mb`` of files, as one more layer: a stand-in for CUDA."""
        tag = f"bench/base:{mb}mb"
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.docker.images.get(tag)
            return tag
        box = self.docker.containers.run(BUSYBOX_IMAGE, SLEEP, detach=True, init=True)
        write(box, "/opt/base", mb)
        box.stop(timeout=1)
        repository, version = tag.split(":")
        box.commit(repository=repository, tag=version)
        box.remove()
        return tag

    def layers_bytes(self) -> int:
        """What saved disks hold: image layers (commits) and saved writable layers
        (du counts a file hard-linked between two saved layers once)."""
        saved = self.stack.docker_root / "gpudock" / "layers"
        copies = int(subprocess.run(["du", "-s", "--block-size=1", str(saved)], check=True,
                                    capture_output=True, text=True).stdout.split()[0]
                     ) if saved.exists() else 0
        return int(self.docker.df()["LayersSize"]) + copies

    def close(self) -> None:
        self.docker.close()

    def disk_seconds(self) -> float:
        """The agent's disk work so far (saves, restores, commits), from its own
        metrics: gpudock_disk_save_duration_seconds."""
        return self.metric("gpudock_disk_save_duration_seconds_sum")

    def docker_requests(self) -> float:
        """The requests the agent made to Docker's API so far (its own metric)."""
        return self.metric("gpudock_docker_requests_total")

    def pass_counts(self) -> tuple[float, float]:
        """The agent's observation passes and status writes so far (its metrics)."""
        return (self.metric("gpudock_observations_total"),
                self.metric("gpudock_status_writes_total"))

    def metric(self, name: str) -> float:
        """The sum of a metric of the agent's over all its labels."""
        port = self.agent.argv[self.agent.argv.index("--metrics-port") + 1]
        text = urllib3.PoolManager().request(
            "GET", f"http://127.0.0.1:{port}/metrics").data.decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split("{", 1)[0].split(" ", 1)[0] == name)


def write(container: Any, path: str, mb: int) -> None:
    """``mb`` of incompressible data in files of at most 100 MB, as a user installs."""
    script = (f"mkdir -p {path} && i=0; left={mb}; while [ $left -gt 0 ]; do "
              "n=$(( left > 100 ? 100 : left )); "
              f"head -c $((n*1000000)) /dev/urandom > {path}/f$i; "
              "left=$((left-n)); i=$((i+1)); done; sync")
    code, output = container.exec_run(["sh", "-c", script])
    assert code == 0, output


def timed(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


# --------------------------------------------------------------------------- measures
def apply_to_ready(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    ours, plain = [], []
    for _ in range(max(size.repeats, 5)):  # interleaved, so drift hits both alike
        name = bench.name("ready")
        ours.append(bench.create_ready(name))
        bench.delete(name)
        began = time.perf_counter()
        box = bench.docker.containers.run(BUSYBOX_IMAGE, SLEEP, detach=True, init=True)
        plain.append(time.perf_counter() - began)
        box.remove(force=True)
    return [("apply -> Ready", "docker run -d", "ratio"),
            (fmt(med(ours)), fmt(med(plain)), ratio(med(ours), med(plain)))]


def update_cost(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    """What one plain update (gpuCount 1 -> 2, nothing written) and one create cost the
    agent: its observation passes and status writes, from its own metrics
    (gpudock_observations_total, gpudock_status_writes_total); medians of the runs."""
    created: dict[str, list[float]] = {"passes": [], "writes": []}
    updated: dict[str, list[float]] = {"passes": [], "writes": []}
    for _ in range(size.repeats):
        name = bench.name("cost")
        before = bench.pass_counts()
        bench.create_ready(name, gpus=1)
        after = bench.pass_counts()
        bench.patch(name, {"gpuCount": 2})
        bench.wait(lambda: bench.settled(name, revision=2))  # noqa: B023 - called at once
        done = bench.pass_counts()
        for into, (first, last) in ((created, (before, after)), (updated, (after, done))):
            into["passes"].append(last[0] - first[0])
            into["writes"].append(last[1] - first[1])
        bench.delete(name)
    purge_saved(bench)
    return [("change", "observation passes", "status writes"),
            ("create (0 -> Ready)", f"{med(created['passes']):.0f}",
             f"{med(created['writes']):.0f}"),
            ("update (gpuCount 1 -> 2)", f"{med(updated['passes']):.0f}",
             f"{med(updated['writes']):.0f}")]


def original_update(bench: Bench, base: str, change: int) -> tuple[float, float]:
    """gpu-docker-api's update: a new container from the base image, started, then
    `cp -rf -p <old merged>/* <new merged>/` (its code, run while the old one's
    overlay is still mounted, the only order in which its copy finds the files),
    then the old one stopped and removed. Returns (total, copy)."""
    old = bench.docker.containers.run(base, SLEEP, detach=True, init=True)
    write(old, "/root/work", change)
    began = time.perf_counter()
    new = bench.docker.containers.run(base, SLEEP, detach=True, init=True)
    old.reload()
    new.reload()
    source = old.attrs["GraphDriver"]["Data"]["MergedDir"]
    target = new.attrs["GraphDriver"]["Data"]["MergedDir"]
    copy = timed(lambda: subprocess.run(f"cp -rf -p {source}/* {target}/", shell=True,
                                        check=False, capture_output=True))
    old.stop(timeout=STOP_TIMEOUT)
    old.remove()
    total = time.perf_counter() - began
    new.remove(force=True)
    return total, copy


def commit_update(bench: Bench, base: str, change: int) -> tuple[float, float, float]:
    """stop + docker commit + create + start; returns (total, commit, floor) where the
    floor is `cp -a` of the writable layer alone on the same disk."""
    old = bench.docker.containers.run(base, SLEEP, detach=True, init=True)
    write(old, "/root/work", change)
    upper = old.attrs["GraphDriver"]["Data"]["UpperDir"]
    floor_dir = f"{bench.stack.docker_root}/bench-floor"
    floor = timed(lambda: subprocess.run(["cp", "-a", upper, floor_dir], check=True))
    subprocess.run(["rm", "-rf", floor_dir], check=True)
    began = time.perf_counter()
    old.stop(timeout=STOP_TIMEOUT)
    committed = timed(lambda: old.commit(repository="bench/committed", tag="1"))
    new = bench.docker.containers.run("bench/committed:1", SLEEP, detach=True, init=True)
    total = time.perf_counter() - began
    new.remove(force=True)
    old.remove(force=True)
    bench.docker.images.remove("bench/committed:1")
    return total, committed, floor


def gpudock_update(bench: Bench, base: str, change: int) -> tuple[float, float]:
    """Returns (total, disk work: the save and the restore, or the commit)."""
    name = bench.name("update")
    bench.create_ready(name, image=base, gpus=1)
    write(bench.container(name), "/root/work", change)
    disk = bench.disk_seconds()
    began = time.perf_counter()
    bench.patch(name, {"gpuCount": 2})
    bench.wait(lambda: bench.settled(name, revision=2))
    took = time.perf_counter() - began
    disk = bench.disk_seconds() - disk
    bench.delete(name)
    purge_saved(bench)
    return took, disk


def purge_saved(bench: Bench) -> None:
    """The saved disks of deleted resources (historyPolicy Retain keeps them): images
    and saved writable layers."""
    for image in bench.docker.images.list("gpudock-preserved/*"):
        with contextlib.suppress(docker.errors.APIError):
            bench.docker.images.remove(str(image.id), force=True)
    shutil.rmtree(bench.stack.docker_root / "gpudock" / "layers", ignore_errors=True)


def updates(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [(
        "base", "changes", "gpudock", "its disk work", "original", "its copy", "commit",
        "floor cp -a", "gpudock / original", "disk work / original's copy",
        "gpudock / commit")]
    for base_mb in size.bases:
        base = bench.base_image(base_mb)
        for change in size.changes:
            ours, disk = gpudock_update(bench, base, change)
            original, copy = original_update(bench, base, change)
            committed, _, floor = commit_update(bench, base, change)
            rows.append((f"{base_mb} MB", f"{change} MB", fmt(ours), fmt(disk),
                         fmt(original), fmt(copy), fmt(committed), fmt(floor),
                         ratio(ours, original), ratio(disk, copy),
                         ratio(ours, committed)))
    return rows


def cycles(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    name = bench.name("cycle")
    bench.create_ready(name, gpus=1)
    write(bench.container(name), "/root/work", size.cycle_change)
    bench.patch(name, {"gpuCount": 2})
    bench.wait(lambda: bench.settled(name, revision=2))
    def change(spec: dict[str, Any], phase: str = "Running",
               revision: int | None = None) -> float:
        began = time.perf_counter()
        bench.patch(name, spec)
        bench.wait(functools.partial(bench.settled, name, phase, revision))
        return time.perf_counter() - began

    rollback = change({"rollbackTo": {"revision": 1}}, revision=3)
    stop = change({"state": "Stopped"}, "Stopped")
    start = change({"state": "Running"})
    bench.delete(name)
    purge_saved(bench)
    return [("with changes", "rollback", "Running -> Stopped", "Stopped -> Running"),
            (f"{size.cycle_change} MB", fmt(rollback), fmt(stop), fmt(start))]


def unrelated(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    idle = [bench.name("idle") for _ in range(size.repeats)]
    idle_create = med([bench.create_ready(name) for name in idle])
    idle_delete = med([timed(functools.partial(bench.delete, name)) for name in idle])
    rows: list[tuple[str, ...]] = [
        ("while another resource", "create -> Ready", "delete", "create / idle",
         "delete / idle"),
        ("is idle", fmt(idle_create), fmt(idle_delete), "1.00x", "1.00x")]

    stubborn = bench.name("stubborn")
    bench.create_ready(stubborn, command=IGNORES_SIGTERM)
    victim = bench.name("victim")
    bench.create_ready(victim)
    bench.patch(stubborn, {"state": "Paused"})  # 30 s of SIGTERM ignored
    time.sleep(1)
    create = bench.create_ready(bench.name("during-stop"))
    delete = timed(lambda: bench.delete(victim))
    rows.append((f"stops for {STOP_TIMEOUT} s", fmt(create), fmt(delete),
                 ratio(create, idle_create), ratio(delete, idle_delete)))
    bench.wait(lambda: bench.settled(stubborn, phase="Paused"))

    saver = bench.name("saver")
    bench.create_ready(saver, gpus=1)
    write(bench.container(saver), "/root/work", size.save_during)
    victim = bench.name("victim")
    bench.create_ready(victim)
    bench.patch(saver, {"gpuCount": 2})
    time.sleep(1)
    create = bench.create_ready(bench.name("during-save"))
    delete = timed(lambda: bench.delete(victim))
    rows.append((f"saves {size.save_during} MB", fmt(create), fmt(delete),
                 ratio(create, idle_create), ratio(delete, idle_delete)))
    bench.wait(lambda: bench.settled(saver, revision=2))
    return rows


def history(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    name = bench.name("history")
    bench.create_ready(name, gpus=1, revisionHistoryLimit=size.history_updates + 1)
    before = bench.layers_bytes()
    for update in range(size.history_updates):
        write(bench.container(name), "/root/work", size.history_change)  # rewritten
        bench.patch(name, {"gpuCount": 1 + (update + 1) % 2})
        bench.wait(functools.partial(bench.settled, name, revision=update + 2))
    held = bench.layers_bytes() - before
    changed = size.history_updates * size.history_change * MB
    return [("updates", "changed data", "history holds", "ratio"),
            (f"{size.history_updates} x {size.history_change} MB", f"{changed // MB} MB",
             f"{held // MB} MB", ratio(held, changed))]


def many(bench: Bench, size: Size) -> list[tuple[str, ...]]:
    names = [f"many-{i}" for i in range(size.many)]
    requests_before = api_requests(bench.stack)
    cpu_before = cpu_seconds(bench.agent.process.pid)  # type: ignore[union-attr]
    docker_before = bench.docker_requests()
    began = time.perf_counter()
    bench.apply(*(bench.body(n) for n in names))
    polls = 0

    def all_ready() -> bool:
        nonlocal polls
        polls += 1
        found = cast(dict[str, Any], bench.objects.list_namespaced_custom_object(
            "gpudock.dev", "v1alpha1", NS, "gpureplicasets"))
        items = found["items"]
        return sum(1 for i in items if i["metadata"]["name"].startswith("many-")
                   and (i.get("status") or {}).get("phase") == "Running") == size.many

    def polled() -> bool:
        time.sleep(0.5)
        return all_ready()

    bench.wait(polled, timeout=1800)
    ours = time.perf_counter() - began
    cpu = cpu_seconds(bench.agent.process.pid) - cpu_before  # type: ignore[union-attr]
    requests = api_requests(bench.stack) - requests_before - polls - 1
    docker_requests = bench.docker_requests() - docker_before
    rss = peak_rss_mb(bench.agent.process.pid)  # type: ignore[union-attr]

    serial_began = time.perf_counter()
    boxes = []
    for i in range(size.many):
        box = bench.docker.api.create_container(BUSYBOX_IMAGE, SLEEP, name=f"serial-{i}",
                                                host_config=bench.docker.api.create_host_config(
                                                    init=True))
        bench.docker.api.start(box["Id"])
        boxes.append(box["Id"])
    serial = time.perf_counter() - serial_began
    for box in boxes:
        bench.docker.api.remove_container(box, force=True)

    time.sleep(10)  # the burst is over
    idle = idle_cost(bench, size.idle_window)
    later: IdleCost | None = None
    if size.idle_settle:
        time.sleep(size.idle_settle)
        later = idle_cost(bench, size.idle_window)
    return [("resources", "all Ready", "serial create+start", "ratio", "agent peak RSS",
             "agent CPU", "API requests / resource", "Docker requests / resource",
             f"idle agent CPU ({size.many})", f"the same {size.idle_settle:.0f} s later",
             "idle dockerd CPU", "idle Docker requests / min", "the same later",
             "idle agent API writes / min", "of which", "the stack's own writes / min"),
            (str(size.many), fmt(ours), fmt(serial), ratio(ours, serial), f"{rss:.0f} MB",
             f"{cpu:.1f} s", f"{requests / size.many:.1f}",
             f"{docker_requests / size.many:.1f}", f"{idle.agent_cpu:.1%}",
             f"{later.agent_cpu:.1%}" if later else "-", f"{idle.dockerd_cpu:.1%}",
             f"{idle.docker_requests:.1f}", f"{later.docker_requests:.1f}" if later else "-",
             f"{idle.writes:.1f}", idle.kinds, f"{idle.background:.1f}")]


@dataclass
class IdleCost:
    agent_cpu: float  # share of one core
    dockerd_cpu: float
    docker_requests: float  # the agent's requests to Docker per minute
    writes: float  # the agent's API writes per minute
    kinds: str  # what they were
    background: float  # the stack's own API writes per minute


def idle_cost(bench: Bench, window: float) -> IdleCost:
    """Share of one core the agent and dockerd use while nothing changes; the agent's
    requests to Docker per minute; its API writes per minute and what they were; the
    stack's own writes per minute (the API server's endpoint reconciler and the
    like), measured over a second window with the agent held by SIGSTOP and
    subtracted kind by kind."""
    agent = bench.agent.process.pid  # type: ignore[union-attr]
    dockerd = int((bench.stack.base_dir / "docker.pid").read_text())
    writes_before = api_writes(bench.stack)
    docker_before = bench.docker_requests()
    agent_before, dockerd_before = cpu_seconds(agent), cpu_seconds(dockerd)
    time.sleep(window)
    agent_cpu, dockerd_cpu = cpu_seconds(agent) - agent_before, cpu_seconds(dockerd) - \
        dockerd_before
    docker_requests = bench.docker_requests() - docker_before
    writes_after = api_writes(bench.stack)
    os.kill(agent, signal.SIGSTOP)
    try:
        time.sleep(window)
        background_after = api_writes(bench.stack)
    finally:
        os.kill(agent, signal.SIGCONT)
    total = _grown(writes_before, writes_after)
    background = _grown(writes_after, background_after)
    agents = {k: v - background.get(k, 0) for k, v in total.items()
              if v - background.get(k, 0) > 0}
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(agents.items())) or "none"
    per_minute = 60 / window
    return IdleCost(agent_cpu / window, dockerd_cpu / window, docker_requests * per_minute,
                    sum(agents.values()) * per_minute, kinds,
                    sum(background.values()) * per_minute)


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def cpu_seconds(pid: int) -> float:
    fields = proc_stat(pid)
    assert fields is not None, f"no process {pid}"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def api_requests(stack: LocalStack) -> float:
    """Requests the API server has served, watches aside (all clients: the agent is
    the only busy one during a measure; the bench's own calls are subtracted by the
    caller)."""
    return sum(v for (verb, _), v in _requests(stack).items() if verb != "WATCH")


def api_writes(stack: LocalStack) -> dict[str, float]:
    """Writes served so far, by verb and resource[/subresource]."""
    return {f"{verb} {kind}": v for (verb, kind), v in _requests(stack).items()
            if verb in ("POST", "PUT", "PATCH", "DELETE")}


def _requests(stack: LocalStack) -> dict[tuple[str, str], float]:
    text = stack.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_ = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        kind = labels_.get("resource", "") + (
            f"/{labels_['subresource']}" if labels_.get("subresource") else "")
        key = (labels_.get("verb", ""), kind)
        found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


# ------------------------------------------------------------------------------ main
@contextlib.contextmanager
def bench_stack() -> Iterator[Bench]:
    with LocalStack(bridge_prefix=22) as stack:
        stack.kubectl("create", "namespace", NS)
        agent = AgentProcess(stack, name="bench-agent", gpus=64, extra_args=[
            "--stop-timeout", str(STOP_TIMEOUT), "--namespace", NS,
            "--metrics-port", str(free_port())]).start()
        bench = Bench(stack, agent)
        try:
            yield bench
        finally:
            bench.close()
            agent.stop()


MEASURES: dict[str, Callable[[Bench, Size], list[tuple[str, ...]]]] = {
    "apply -> Ready against docker run -d": apply_to_ready,
    "observation passes and status writes per change": update_cost,
    "update (gpuCount 1 -> 2) after the user's changes": updates,
    "rollback and stop/start of a disk with changes": cycles,
    "an unrelated create and delete while another resource is slow": unrelated,
    "history after updates that each rewrite the same data": history,
    "many resources applied at once, then idle": many,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced size CI runs")
    parser.add_argument("--only", action="append", choices=[f.__name__ for f in
                                                            MEASURES.values()])
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    with bench_stack() as bench:
        print(f"gpudock rollout benchmark ({'quick' if args.quick else 'full'}); "
              f"Docker {bench.docker.version()['Version']}, storage driver "
              f"{bench.docker.info()['Driver']} on "
              f"{bench.stack.docker_root_fs}, {os.cpu_count()} CPUs",
              flush=True)
        for title, measure in MEASURES.items():
            if args.only and measure.__name__ not in args.only:
                continue
            print(f"\n## {title}\n", flush=True)
            table(measure(bench, size), sys.stdout)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
