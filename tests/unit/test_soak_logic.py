"""The chaos soak's own judgements (tests/soak, docs/reliability.md#soak), without a
stack: whether an agent's RSS and threads level off, when a SizedVolume counts as
settled, which volume operation is done instead of one that cannot be."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any, cast

from tests.soak import volumes
from tests.soak.figures import AgentSample, Figures, levels_off
from tests.soak.operations import Instance, Operations
from tests.soak.world import converged, volume_settled


def _life(rss: list[float], threads: list[int] | None = None,
          every: float = 5.0) -> list[AgentSample]:
    counts = threads or [10] * len(rss)
    return [AgentSample(i * every, "a", 1, value, counts[i], float(i))
            for i, value in enumerate(rss)]


def test_an_agent_whose_peaks_stay_put_levels_off() -> None:
    # Start-up in the first third, then flat with noise.
    rss = [80, 95, 100, 104, 105, 106, 104, 106, 105, 107, 106, 105, 106, 107, 106,
           105, 106, 107, 106, 105, 107, 106, 105, 106, 107.0]
    text, leak = levels_off(_life(rss))
    assert text.endswith("levels off"), text
    assert not leak


def test_an_agent_that_keeps_growing_is_said_to_grow_and_only_a_big_growth_is_a_leak() -> None:
    growing = [100 + 2.0 * i for i in range(30)]        # +2 MiB per 5 s: +20 a third
    assert levels_off(_life(growing))[1:] == (False,)
    assert "still grows" in levels_off(_life(growing))[0]
    leaking = [100.0] * 20 + [180.0] * 10               # +80 MiB in the last third
    assert levels_off(_life(leaking)) == (
        "RSS 100 -> 180 MiB, threads 10 -> 10: grows (a leak)", True)
    threads = [10 + 3 * i for i in range(30)]           # 3 threads more every 5 s
    assert levels_off(_life([100.0] * 30, threads)) == (
        "RSS 100 -> 100 MiB, threads 67 -> 97: grows (a leak)", True)


def test_a_short_life_is_not_judged() -> None:
    assert levels_off(_life([100.0] * 8)) == ("too short to judge", False)
    assert levels_off(_life([100.0 + 50 * i for i in range(20)], every=5.0))[1] is False


def test_only_a_clear_leak_is_a_violation() -> None:
    figures = Figures(1, 2, 5)
    for i in range(30):
        figures.agents.append(AgentSample(i * 5.0, "a", 1, 100.0 if i < 20 else 180.0, 10,
                                          0.0))
        figures.agents.append(AgentSample(i * 5.0, "b", 2, 100.0, 10, 0.0))
    figures.levelling()
    assert len(figures.violations) == 1
    assert "agent a 1" in figures.violations[0]
    assert "levels off" in figures.report()


def _volume(generation: int, observed: int, ready: str, progressing: str = "False",
            degraded: str = "False", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "v", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "now"
    return {"metadata": meta, "status": {"observedGeneration": observed, "conditions": [
        {"type": "Ready", "status": ready}, {"type": "Progressing", "status": progressing},
        {"type": "Degraded", "status": degraded, "reason": "ShrinkBelowUsage"}]}}


def test_a_volume_is_settled_when_ready_for_its_latest_generation() -> None:
    assert volume_settled(_volume(2, 2, "True"))
    assert volume_settled(_volume(3, 3, "True", degraded="True"))  # a refused shrink
    assert not volume_settled(_volume(3, 2, "True"))                # not seen yet
    assert not volume_settled(_volume(3, 3, "False", progressing="True"))  # resizing
    assert not volume_settled(_volume(3, 3, "False"))               # Failed
    assert volume_settled(_volume(3, 3, "False", deleting=True))    # the deletes wait


def _ops(instances: int, volume_users: list[str | None]) -> Operations:
    found = {f"soakv-{i}": volumes.Volume(f"soakv-{i}", "a", 64, user)
             for i, user in enumerate(volume_users)}
    return cast(Operations, SimpleNamespace(
        instances={f"soak-{i}": object() for i in range(instances)}, max_instances=5,
        volumes=found, rng=random.Random(1)))


def test_a_volume_operation_that_cannot_be_done_gives_way() -> None:
    assert volumes.pick(_ops(1, []), "volume_resize") == "volume_create"
    assert volumes.pick(_ops(5, []), "volume_delete") == "exec_write"
    assert volumes.pick(_ops(5, []), "volume_create") == "delete"
    assert volumes.pick(_ops(5, ["soak-1"]), "volume_create") == "volume_resize"
    assert volumes.pick(_ops(3, ["soak-1", "soak-2"]), "volume_create") == "volume_resize"
    # Another user for a volume that lost its own is always welcome while there is room.
    assert volumes.pick(_ops(3, ["soak-1", None]), "volume_create") == "volume_create"
    assert volumes.pick(_ops(3, ["soak-1"]), "volume_delete") == "volume_delete"


class _World:
    """The API server and a container as the soak's operations see them: one
    GpuReplicaSet body, ExecRequests done at once, and ``sha256sum`` answered from
    the files the container holds."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.files: dict[str, str] = {}          # what the container holds
        self.requests: dict[str, str] = {}

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        if plural == "execrequests":
            return {"status": {"phase": "Completed", "exitCode": 0,
                               "stdout": f"{self.requests[name]}  /x"}}
        return self.body

    def apply(self, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        path = body["spec"]["command"][2].split("> ")[1].split(" ")[0]
        self.requests[name] = f"sha-{name}"
        self.files[path] = f"sha-{name}"
        return True

    def exec_in(self, node: str, name: str, argv: list[str]) -> tuple[int, str]:
        return 0, "".join(f"{self.files[p]}  {p}\n" for p in argv[1:] if p in self.files)


def _replica_set(revision: int, *, stalled: bool) -> dict[str, Any]:
    return {"metadata": {"name": "soak-9", "generation": 3}, "spec": {"image": "b"},
            "status": {"observedGeneration": 3, "revision": revision, "phase": "Running",
                       "nodeName": "soak-b", "conditions": [
                           {"type": "Ready", "status": "True"},
                           {"type": "Progressing", "status": "False"},
                           {"type": "Stalled", "status": "True" if stalled else "False",
                            "reason": "DiskFull" if stalled else "AsExpected"}]}}


def test_a_file_written_while_an_image_change_waits_for_room_is_not_expected_after_it() -> None:
    """Seed 2027 (5 minutes, 2 nodes) found "files of soak-9 at revision 3: f1
    missing": an image change refused for a while (DiskFull in a full state dir, the
    old revision Ready and serving) was taken as done; f1 was written into the old
    revision and then expected in the new image's revision, which the agent made once
    there was room. A change waiting for room is not settled: no write goes in, and a
    revision the soak has not seen settle is checked and recorded before the next."""
    world = _World(_replica_set(2, stalled=True))
    ops = Operations(cast(Any, world), Figures(1, 2, 5), random.Random(1),
                     cast(Any, None))
    instance = Instance("soak-9", None, 1, node="soak-b", revision=2)
    world.files = {"/root/soak/f0": "old"}
    instance.by_revision[2] = {"/root/soak/f0": "old"}
    instance.files = {}                        # the image patch: a new filesystem
    assert ops.settle_and_check(instance) == "stalled DiskFull"
    assert instance.by_revision[2] == {"/root/soak/f0": "old"}   # unchanged
    assert ops.write(instance, "/root/soak", 10) == ("skipped", None)
    # Room again: the agent makes revision 3 on the new image (no f0).
    world.body, world.files = _replica_set(3, stalled=False), {}
    outcome, sha = ops.write(instance, "/root/soak", 10)
    assert (outcome, instance.revision, instance.by_revision[3]) == ("ok", 3, {})
    assert sha == "sha-soak-9-w1"
    assert ops.figures.violations == []


def test_a_stall_the_soaks_own_fault_caused_is_not_convergence() -> None:
    # The 30-minute run (seed 4242, 20:15): the API server came back from its last
    # outage, node a's heartbeat was still the one from before, and the end counted
    # four instances Stalled NodeNotReady as converged "in 0.1 s".
    def stalled(reason: str) -> dict[str, Any]:
        body = _replica_set(3, stalled=True)
        body["status"]["conditions"] = [
            {"type": "Ready", "status": "Unknown", "reason": reason},
            {"type": "Stalled", "status": "True", "reason": reason, "message": "m"}]
        return body

    assert not converged(stalled("NodeNotReady"))
    assert not converged(stalled("DiskFull"))
    assert converged(stalled("ImageChanged"))           # needs the user: said why
    assert converged(_replica_set(3, stalled=False))    # Ready
