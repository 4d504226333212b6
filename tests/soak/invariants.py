"""The invariants, sampled every second while the soak runs (and through its end):

- no GPU held by two running containers of one node (from the gpudock labels and
  NVIDIA_VISIBLE_DEVICES of every dockerd's containers);
- no host port held by two running containers (all nodes of the stack share one host);
- no GpuReplicaSet shown Ready=True while no container of it runs on its node, for
  longer than READY_GRACE seconds (a status is written after Docker changed: a
  container that just stopped is seen before the agent wrote Ready=False; a node
  whose dockerd does not answer, or an API server that does not, is not judged, nor
  a resource being deleted: its container is removed before its finalizer).

Also every AGENT_EVERY seconds: each agent's RSS, thread count and CPU time, and the
image ID each test image's tag names on each node: a tag that moves is noted with the
moment (not judged; an instance whose saved disk is over the old ID stops with
ImageChanged, a reason its status gives)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

from tests.soak.figures import AgentSample, Figures
from tests.soak.world import RESYNC_SECONDS, Running, World, condition
from tests.stack.localstack import BUSYBOX_IMAGE, CUDA_LIKE_IMAGE

READY_GRACE = RESYNC_SECONDS + 5.0
AGENT_EVERY = 5.0
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux


class Sampler:
    def __init__(self, world: World, figures: Figures) -> None:
        self.world = world
        self.figures = figures
        self.samples = 0
        self._ready_without: dict[str, float] = {}   # "name/uid" -> first seen
        self._reported: set[str] = set()             # one violation per episode
        self._last_agents = 0.0
        self._tags: dict[tuple[str, str], str] = {}   # (node, test image) -> image ID

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            try:
                self.sample_once()
            except Exception as error:  # a sampler that dies checks nothing: report it
                print(f"[soak] sampler: {error!r}", flush=True)

    def sample_once(self) -> None:
        self.samples += 1
        running: dict[str, list[Running]] = {}
        for node in self.world.nodes:
            try:
                running[node] = self.world.running(node)
            except Exception:  # its dockerd is restarting: not judged this second
                continue
        self._check_holders(running)
        self._check_ready(running)
        if time.monotonic() - self._last_agents >= AGENT_EVERY:
            self._last_agents = time.monotonic()
            self._sample_agents()
            self._watch_tags()

    def _check_holders(self, running: dict[str, list[Running]]) -> None:
        gpus: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        ports: defaultdict[str, list[str]] = defaultdict(list)
        for node, containers in running.items():
            for container in containers:
                for gpu in container.gpus:
                    gpus[(node, gpu)].append(container.container)
                for port in container.host_ports:
                    ports[port].append(f"{node}/{container.container}")
        for (node, gpu), holders in gpus.items():
            self._once(len(holders) > 1, f"gpu {node}/{gpu}",
                       f"GPU {gpu} of {node} held by {holders}")
        for port, holders in ports.items():
            self._once(len(holders) > 1, f"port {port}",
                       f"host port {port} held by {holders}")

    def _check_ready(self, running: dict[str, list[Running]]) -> None:
        items = self.world.items("gpureplicasets")
        if items is None:       # the API server is away: nothing to judge
            self._ready_without.clear()
            return
        now = time.monotonic()
        seen = set()
        for body in items:
            if body["metadata"].get("deletionTimestamp"):
                continue   # being deleted: its container goes before its finalizer
            node = str((body.get("status") or {}).get("nodeName") or "")
            if condition(body, "Ready").get("status") != "True" or node not in running:
                continue
            name = body["metadata"]["name"]
            if any(c.name == name for c in running[node]):
                continue
            key = f"{name}/{body['metadata']['uid']}"
            seen.add(key)
            first = self._ready_without.setdefault(key, now)
            if now - first > READY_GRACE and key not in self._reported:
                self._reported.add(key)
                self.figures.violation(
                    f"{name} Ready=True with no running container on {node} for "
                    f"{now - first:.0f} s (status {body.get('status')})")
        for key in set(self._ready_without) - seen:
            del self._ready_without[key]
            self._reported.discard(key)

    def _once(self, bad: bool, key: str, text: str) -> None:
        if bad and key not in self._reported:
            self._reported.add(key)
            self.figures.violation(text)
        elif not bad:
            self._reported.discard(key)

    def _watch_tags(self) -> None:
        for node in self.world.nodes:
            for image in (BUSYBOX_IMAGE, CUDA_LIKE_IMAGE):
                try:
                    with self.world.client(node) as client:
                        now = str(client.images.get(image).id)
                except Exception:  # its dockerd is restarting, or the tag is gone
                    now = "none"
                before = self._tags.setdefault((node, image), now)
                if now != before and "none" not in (now, before):
                    self.figures.note(f"at {self.figures.now():.0f} s the tag {image} on "
                                      f"{node} moved from {before[7:19]} to {now[7:19]}")
                if now != "none":
                    self._tags[(node, image)] = now

    def _sample_agents(self) -> None:
        for node, agent in list(self.world.fleet.agents.items()):
            process = agent.process
            if process is None or not process.alive():
                continue
            sample = agent_sample(self.figures.now(), node, process.pid)
            if sample is not None:
                self.figures.sample(sample)


def agent_sample(at: float, node: str, pid: int) -> AgentSample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0]) if "VmRSS" in fields else 0
    cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS   # utime, stime (fields 14, 15)
    return AgentSample(at, node, pid, rss_kib / 1024, int(fields["Threads"]), cpu)
