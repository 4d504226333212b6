"""One soak: a fleet of K nodes on its own local stack, the users' operations, the
faults and the sampler running together for N minutes, then the end: faults stopped,
every resource's convergence measured, the files checked, the history limits and the
leaks looked at, the figures printed."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from tests.integration.fleet import Fleet
from tests.soak import leaks
from tests.soak.faults import Faults
from tests.soak.figures import Figures
from tests.soak.invariants import Sampler
from tests.soak.nodes import StoreEtcd, node_setups
from tests.soak.operations import HISTORY_LIMIT, Operations
from tests.soak.world import GROUP, Body, World, settled, volume_settled, why_not_ready
from tests.stack.localstack import LocalStack, wait_for

NAMESPACE = "soak"
END_BOUND = 600.0   # seconds for every resource to converge once the faults stopped


def soak(minutes: float, seed: int, nodes: int = 2, *,
         outage: tuple[float, float] = (30, 60), gap: tuple[float, float] = (20, 60),
         down: tuple[float, float] = (20, 40)) -> Figures:
    """Run a soak; the figures say whether it held (``figures.violations``)."""
    print(f"[soak] seed {seed} (replay: python -m tests.soak --seed {seed} "
          f"--minutes {minutes:g} --nodes {nodes} --outage {outage[0]:g}-{outage[1]:g} "
          f"--gap {gap[0]:g}-{gap[1]:g} --down {down[0]:g}-{down[1]:g})", flush=True)
    figures = Figures(seed, nodes, minutes)
    figures.setup_started = time.monotonic()
    with LocalStack() as stack:
        for index in range(1, nodes):
            stack.add_engine(f"node-{index}")  # with the first's test images
        fleet = Fleet(stack, NAMESPACE, {f"soak-{chr(ord('a') + i)}": engine
                                         for i, engine in enumerate(stack.engines)})
        stack.kubectl("create", "namespace", NAMESPACE)
        store_etcd = StoreEtcd(stack).start()
        print(f"[soak] stack {stack.base_dir}", flush=True)
        with node_setups(stack, fleet.nodes, store_etcd) as setups:
            world = World(stack, fleet, setups, store_etcd)
            for setup in setups.values():
                print(f"[soak] {setup.node}: store {setup.store}, {setup.backend} volumes "
                      f"under {setup.volume_root}", flush=True)
            try:
                for node in fleet.nodes:
                    world.start_agent(node)
                wait_for(lambda: len((world.api_get(f"{GROUP}/gpunodes") or {}).get("items")
                                     or ()) == nodes, 60, what="every GpuNode")
                _run(world, figures, minutes, seed, outage, gap, down)
            finally:
                for agent in fleet.agents.values():
                    agent.stop()
    print(figures.report(), flush=True)
    return figures


def _run(world: World, figures: Figures, minutes: float, seed: int,
         outage: tuple[float, float], gap: tuple[float, float],
         down: tuple[float, float]) -> None:
    before = leaks.snapshot(world)
    figures.started = time.monotonic()  # the soak's clock starts with its first op
    hold, stop_users, stop_sampler = threading.Event(), threading.Event(), threading.Event()
    operations = Operations(world, figures, random.Random(seed), hold)
    faults = Faults(world, figures, random.Random(f"faults-{seed}"), hold, gap=gap,
                    outage=outage, down=down)
    sampler = Sampler(world, figures)
    threads = [_thread("sampler", sampler.run, stop_sampler, figures),
               _thread("operations", operations.run, stop_users, figures),
               _thread("faults", faults.run, stop_users, figures)]
    try:
        stop_users.wait(minutes * 60)
    finally:
        stop_users.set()
        for thread in threads[1:]:
            thread.join()
    print(f"[soak] {figures.now():7.1f}s faults stopped; the end begins", flush=True)
    world.wait_api(300)
    _converge(world, figures)
    for instance in operations.instances.values():
        operations.check_files(instance)
    _history_limits(world, figures)
    _delete_all(world, figures)
    stop_sampler.set()
    threads[0].join()
    figures.note(f"the sampler looked {sampler.samples} times")
    for thing in leaks.leaked(before, leaks.snapshot(world)):
        figures.violation(f"leaked: {thing}")
    for left in leaks.records_left(world, operations.names):
        figures.violation(f"leaked: {left}")
    figures.levelling()


def _thread(name: str, target: Callable[[threading.Event], None], stop: threading.Event,
            figures: Figures) -> threading.Thread:
    def guarded() -> None:
        try:
            target(stop)
        except Exception as error:
            figures.violation(f"the soak's {name} thread died: {error!r}")
    thread = threading.Thread(target=guarded, name=f"soak-{name}", daemon=True)
    thread.start()
    return thread


def _converge(world: World, figures: Figures) -> None:
    """Every resource Ready (or stopped as asked) with observedGeneration ==
    generation, or Stalled=True with a reason no agent clears by itself (world.converged),
    within END_BOUND."""
    started = time.monotonic()
    items: list[Body] = []
    while time.monotonic() - started < END_BOUND:
        items = world.items("gpureplicasets") or []
        if world.unsettled() == []:
            figures.converged("end", time.monotonic() - started)
            for body in items:
                if not settled(body):
                    figures.note(f"at the end {body['metadata']['name']}: "
                                 f"{why_not_ready(body)}")
            return
        time.sleep(1)
    for body in items:
        if body["metadata"]["name"] in (world.unsettled() or ()):
            figures.violation(f"not converged {END_BOUND:.0f} s after the faults stopped: "
                              f"{body['metadata']['name']} {body.get('status')}")
    for body in world.items("sizedvolumes") or []:
        if not volume_settled(body):
            figures.violation(f"not converged {END_BOUND:.0f} s after the faults stopped: "
                              f"svol/{body['metadata']['name']} {body.get('status')}")


def _history_limits(world: World, figures: Figures) -> None:
    for body in world.items("gpureplicasets") or []:
        node = str((body.get("status") or {}).get("nodeName") or "")
        if node not in world.nodes:
            continue
        name = body["metadata"]["name"]
        for problem in leaks.history_problems(world, node, name, body["metadata"]["uid"],
                                              HISTORY_LIMIT):
            figures.violation(f"{name} on {node}: {problem}")


def _delete_all(world: World, figures: Figures) -> None:
    for kind in ("grs", "svol", "execrequests", "gpumigrations"):
        world.kubectl("delete", kind, "--all", "--wait=false")
    try:
        wait_for(lambda: world.items("gpureplicasets") == [] and
                 world.items("sizedvolumes") == [], 300, 1,
                 what="every GpuReplicaSet and SizedVolume deleted")
    except TimeoutError as error:
        figures.violation(str(error))
