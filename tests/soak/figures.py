"""What a soak counts, and the table it prints at the end (docs/reliability.md#soak).

Each agent process's RSS and threads are judged by :func:`levels_off`: the largest
value of the last third of its life against the largest of the middle third (the
first third is its start-up)."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AgentSample:
    at: float          # seconds since the soak began
    node: str
    pid: int
    rss_mib: float
    threads: int
    cpu_seconds: float  # user + system of that process so far


# An agent process is judged once it lived LEVEL_SECONDS (and was sampled 9 times):
# it levels off when the last third's peak RSS is within max(8 MiB, 10%) of the middle
# third's and its threads within 2; it is clearly a leak (a violation) only beyond
# max(64 MiB, 50%) or 20 threads more.
LEVEL_SECONDS = 120.0
LEVEL_MIB, LEVEL_SHARE, LEVEL_THREADS = 8.0, 0.10, 2
LEAK_MIB, LEAK_SHARE, LEAK_THREADS = 64.0, 0.50, 20


def levels_off(samples: list[AgentSample]) -> tuple[str, bool]:
    """One process's samples (in time order): what the last third's peaks say
    against the middle third's, and whether that is clearly a leak."""
    if len(samples) < 9 or samples[-1].at - samples[0].at < LEVEL_SECONDS:
        return "too short to judge", False
    first, lived = samples[0].at, samples[-1].at - samples[0].at
    middle = [s for s in samples if lived / 3 <= s.at - first < 2 * lived / 3]
    last = [s for s in samples if s.at - first >= 2 * lived / 3]
    if not middle or not last:
        return "too short to judge", False
    rss = (max(s.rss_mib for s in middle), max(s.rss_mib for s in last))
    threads = (max(s.threads for s in middle), max(s.threads for s in last))
    grew, more = rss[1] - rss[0], threads[1] - threads[0]
    text = f"RSS {rss[0]:.0f} -> {rss[1]:.0f} MiB, threads {threads[0]} -> {threads[1]}"
    if grew > max(LEAK_MIB, LEAK_SHARE * rss[0]) or more > LEAK_THREADS:
        return f"{text}: grows (a leak)", True
    if grew > max(LEVEL_MIB, LEVEL_SHARE * rss[0]) or more > LEVEL_THREADS:
        return f"{text}: still grows", False
    return f"{text}: levels off", False


@dataclass
class Figures:
    seed: int
    nodes: int
    minutes: float
    started: float = field(default_factory=time.monotonic)
    setup_started: float = field(default_factory=time.monotonic)
    ops: Counter[tuple[str, str]] = field(default_factory=Counter)   # (kind, outcome)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    convergence: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list))   # fault kind (or "end") -> seconds
    agents: list[AgentSample] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-minute load average samples
    notes: list[str] = field(default_factory=list)   # what the end found, not a violation
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def op(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.ops[(kind, outcome)] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(f"{self.now():7.1f}s {text}")
        print(f"[soak] VIOLATION {text}", flush=True)

    def converged(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.convergence[kind].append(seconds)

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)
        print(f"[soak] {text}", flush=True)

    def sample(self, sample: AgentSample) -> None:
        with self._lock:
            self.agents.append(sample)
            self.load.append(os.getloadavg()[0])

    # ------------------------------------------------------------------ the report
    def report(self) -> str:
        with self._lock:
            return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        wall = self.now()
        lines = [f"soak: seed {self.seed}, {self.nodes} nodes, {self.minutes:g} min asked, "
                 f"{wall / 60:.1f} min from the first operation to the last check "
                 f"({(time.monotonic() - self.setup_started) / 60:.1f} min with the "
                 f"stack's start and stop), {os.cpu_count()} CPUs, load average "
                 f"{_mean(self.load):.1f} (max {max(self.load, default=0):.1f})", "",
                 "| operation | ok | other outcomes |", "|---|---:|---|"]
        kinds = sorted({kind for kind, _ in self.ops})
        for kind in kinds:
            others = ", ".join(f"{outcome} {count}" for (k, outcome), count
                               in sorted(self.ops.items()) if k == kind and outcome != "ok")
            lines.append(f"| {kind} | {self.ops[(kind, 'ok')]} | {others or '-'} |")
        lines.append(f"| **all** | {sum(c for (_, o), c in self.ops.items() if o == 'ok')} | "
                     f"{sum(c for (_, o), c in self.ops.items() if o != 'ok')} |")
        lines += ["", "| fault | count | convergence p50 | p95 | max |",
                  "|---|---:|---:|---:|---:|"]
        for kind in sorted(set(self.faults) | set(self.convergence)):
            times = sorted(self.convergence.get(kind, []))
            lines.append(f"| {kind} | {self.faults.get(kind, '-')} | {_pct(times, 50)} | "
                         f"{_pct(times, 95)} | {_pct(times, 100)} |")
        lines += ["", f"invariant violations: {len(self.violations)}"]
        lines += [f"  {v}" for v in self.violations]
        lines += ["", *self._agent_lines()]
        if self.notes:
            lines += ["", "notes:", *(f"  {n}" for n in self.notes)]
        return lines

    def by_process(self) -> list[tuple[tuple[str, int], list[AgentSample]]]:
        """Each agent process's samples, the earliest process first."""
        found: defaultdict[tuple[str, int], list[AgentSample]] = defaultdict(list)
        for sample in self.agents:
            found[(sample.node, sample.pid)].append(sample)
        return sorted(found.items(), key=lambda i: i[1][0].at)

    def levelling(self) -> None:
        """A violation for each agent process whose RSS or threads clearly leak."""
        with self._lock:
            judged = [(key, levels_off(samples)) for key, samples in self.by_process()]
        for (node, pid), (text, leak) in judged:
            if leak:
                self.violation(f"agent {node} {pid}: {text}")

    def _agent_lines(self) -> list[str]:
        """RSS and threads per agent process at a few points of its life, its CPU,
        and whether they level off (:func:`levels_off`)."""
        lines = ["| agent (node, pid) | lived | RSS MiB at 1/4, 1/2, 3/4, end | threads at the "
                 "same | CPU % of a core | peaks, middle third -> last third |",
                 "|---|---:|---|---|---:|---|"]
        for (node, pid), samples in self.by_process():
            lived = samples[-1].at - samples[0].at
            points = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3)]
            points.append(samples[-1])
            cpu = (samples[-1].cpu_seconds - samples[0].cpu_seconds) / lived * 100 \
                if lived > 0 else 0.0
            lines.append(f"| {node} {pid} | {lived:.0f} s | "
                         f"{', '.join(f'{p.rss_mib:.0f}' for p in points)} | "
                         f"{', '.join(str(p.threads) for p in points)} | {cpu:.1f} | "
                         f"{levels_off(samples)[0]} |")
        return lines


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _pct(values: list[float], q: int) -> str:
    """The nearest-rank percentile, in seconds; "-" for none."""
    if not values:
        return "-"
    rank = max(1, math.ceil(q / 100 * len(values)))
    return f"{values[rank - 1]:.1f} s"
