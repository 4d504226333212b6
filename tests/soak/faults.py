"""The faults of the soak, at seeded random moments while the users' operations go
on: an agent SIGKILLed (and started again), a dockerd restarted (stopped or killed),
the kube-apiserver stopped for a while. After each one's recovery the operations are
held and the time until every GpuReplicaSet settled again is measured."""

from __future__ import annotations

import random
import threading
import time

from tests.soak.figures import Figures
from tests.soak.world import World

KINDS = ("agent_kill", "dockerd_restart", "apiserver_stop")
CONVERGENCE_BOUND = 300.0   # seconds after a recovery; longer is a violation


class Faults:
    def __init__(self, world: World, figures: Figures, rng: random.Random,
                 hold: threading.Event, *, gap: tuple[float, float] = (20, 60),
                 outage: tuple[float, float] = (30, 60)) -> None:
        self.world = world
        self.figures = figures
        self.rng = rng
        self.hold = hold
        self.gap = gap          # seconds between a convergence and the next fault
        self.outage = outage    # seconds the API server stays away

    def run(self, stop: threading.Event) -> None:
        """Every kind in a seeded order, again and again, until ``stop``."""
        while True:
            kinds = list(KINDS)
            self.rng.shuffle(kinds)
            for kind in kinds:
                if stop.wait(self.rng.uniform(*self.gap)):
                    return
                self.inject(kind)

    def inject(self, kind: str) -> None:
        node = self.rng.choice(self.world.nodes)
        print(f"[soak] {self.figures.now():7.1f}s fault {kind} on {node}", flush=True)
        self.figures.fault(kind)
        if kind == "agent_kill":
            self.world.fleet.agents[node].kill()
            self.world.fleet.agents[node].stop()   # (dead already: closes its log)
            time.sleep(self.rng.uniform(0, 5))   # the moment a supervisor restarts it
            self.world.start_agent(node)
        elif kind == "dockerd_restart":
            kill = self.rng.random() < 0.5
            with self.world.components:
                self.world.fleet.engines[node].restart(kill=kill)
        elif kind == "apiserver_stop":
            seconds = self.rng.uniform(*self.outage)
            self.world.stack.stop_apiserver()
            time.sleep(seconds)
            self.world.stack.start_apiserver_again()
        else:
            raise ValueError(kind)
        self.measure(kind)

    def measure(self, kind: str, bound: float = CONVERGENCE_BOUND) -> float | None:
        """Hold the operations and time how long every GpuReplicaSet takes to settle."""
        self.hold.set()
        try:
            started = time.monotonic()
            while time.monotonic() - started < bound:
                if self.world.unsettled() == []:
                    seconds = time.monotonic() - started
                    self.figures.converged(kind, seconds)
                    print(f"[soak] {self.figures.now():7.1f}s converged after {kind} in "
                          f"{seconds:.1f} s", flush=True)
                    return seconds
                time.sleep(0.5)
            late = self.world.unsettled() or []
            self.figures.violation(f"not converged {bound:.0f} s after {kind}: " + ", ".join(
                f"{b['metadata']['name']} {(b.get('status') or {}).get('conditions')}"
                for b in self.world.items("gpureplicasets") or []
                if b["metadata"]["name"] in late))
            return None
        finally:
            self.hold.clear()
