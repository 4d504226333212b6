"""The faults of the soak, at seeded random moments while the users' operations go
on: an agent SIGKILLed (and started again), a dockerd restarted (stopped or killed),
the kube-apiserver stopped for a while, the agents' etcd revision store stopped for a
while, a node's state directory filled to near full for a while. After each one's
recovery the operations are held and the time until every GpuReplicaSet and
SizedVolume settled again is measured."""

from __future__ import annotations

import random
import threading
import time

from tests.soak import nodes
from tests.soak.figures import Figures
from tests.soak.world import World, condition

KINDS = ("agent_kill", "dockerd_restart", "apiserver_stop", "etcd_stop", "state_dir_full")
CONVERGENCE_BOUND = 300.0   # seconds after a recovery; longer is a violation
STATE_DIR_KEEP = 256 * 1024  # bytes left free in a state directory "full"


class Faults:
    def __init__(self, world: World, figures: Figures, rng: random.Random,
                 hold: threading.Event, *, gap: tuple[float, float] = (20, 60),
                 outage: tuple[float, float] = (30, 60),
                 down: tuple[float, float] = (20, 40)) -> None:
        self.world = world
        self.figures = figures
        self.rng = rng
        self.hold = hold
        self.gap = gap          # seconds between a convergence and the next fault
        self.outage = outage    # seconds the API server stays away
        self.down = down        # seconds the store's etcd is away, a state dir full

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
        where = {"etcd_stop": "the revision store's etcd",
                 "state_dir_full": "every node's state directory"}.get(kind, node)
        print(f"[soak] {self.figures.now():7.1f}s fault {kind} on {where}", flush=True)
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
        elif kind == "etcd_stop":
            seconds = self.rng.uniform(*self.down)
            self.world.store_etcd.stop()
            try:
                self.meanwhile(kind, seconds)
            finally:
                self.world.store_etcd.start()
        elif kind == "state_dir_full":   # every node's: one disk under all of them
            seconds = self.rng.uniform(*self.down)
            states = [setup.state_dir for setup in self.world.setups.values()]
            try:
                taken = [nodes.fill(state, STATE_DIR_KEEP) >> 20 for state in states]
                print(f"[soak] {self.figures.now():7.1f}s state dirs filled ({taken} MiB "
                      f"taken) for {seconds:.0f} s", flush=True)
                self.meanwhile(kind, seconds)
            finally:
                for state in states:
                    nodes.unfill(state)
        else:
            raise ValueError(kind)
        self.measure(kind)

    def meanwhile(self, kind: str, seconds: float) -> None:
        """Wait ``seconds``, noting what the instances' and volumes' Ready and Degraded
        conditions say meanwhile (not judged: an outage may be shown)."""
        deadline = time.monotonic() + seconds
        seen: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            for plural, prefix in (("gpureplicasets", ""), ("sizedvolumes", "svol/")):
                for body in self.world.items(plural) or []:
                    ready, degraded = condition(body, "Ready"), condition(body, "Degraded")
                    for said, shown in ((f"Ready=False {ready.get('reason')}",
                                         ready.get("status") != "True"),
                                        (f"Degraded {degraded.get('reason')}",
                                         degraded.get("status") == "True")):
                        if shown:
                            seen.setdefault(said, set()).add(prefix + body["metadata"]["name"])
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        self.figures.note(f"during {kind} at {self.figures.now() - seconds:.0f} s: " + (
            "; ".join(f"{said} ({', '.join(sorted(names))})"
                      for said, names in sorted(seen.items())) or "every one Ready"))

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
            self.figures.violation(f"not converged {bound:.0f} s after {kind}: "
                                   + self.world.describe(late))
            return None
        finally:
            self.hold.clear()
