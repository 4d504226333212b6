"""The users' side of the soak: a seeded random mix of what users do to GpuReplicaSets
and SizedVolumes (tests/soak/volumes.py), each change followed by a check that every
file the user wrote (through an ExecRequest, its checksum recorded) is in the
instance's current revision, and in its volume.

Files are tracked per revision: a change carries the current files into the new
revision, except a new image, which starts from its own filesystem; a rollback to
revision N brings back the files N had when it ended. A volume's files are the
volume's: no change, image or rollback of its user touches them."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tests.soak import requests, volumes
from tests.soak.figures import Figures
from tests.soak.world import GPUS_PER_NODE, Body, World, settled, why_not_ready
from tests.stack.localstack import BUSYBOX_IMAGE, CUDA_LIKE_IMAGE

HISTORY_LIMIT = 3    # spec.revisionHistoryLimit of every soak instance
SETTLE_SECONDS = 240.0
KINDS = ("create", "delete", "gpu_count", "env", "ports", "image", "stop_start", "rollback",
         "exec_write", "commit", "migrate", "volume_create", "volume_resize", "volume_delete")
WEIGHTS = (3, 1, 3, 2, 1, 1, 2, 2, 4, 1, 2, 1, 3, 1)
IMAGES = (BUSYBOX_IMAGE, CUDA_LIKE_IMAGE)   # both on every node's dockerd
T = TypeVar("T")


@dataclass
class Instance:
    name: str
    pinned: str | None          # its spec.nodeName; None: the scheduler places it
    gpus: int
    node: str = ""              # where it is (status.nodeName), once seen
    revision: int = 0
    files: dict[str, str] = field(default_factory=dict)   # path -> sha256 now
    by_revision: dict[int, dict[str, str]] = field(default_factory=dict)
    serial: int = 0             # names of its files, ExecRequests, migrations
    volume: str | None = None   # the SizedVolume it mounts (at volumes.MOUNT_PATH)


class Operations:
    def __init__(self, world: World, figures: Figures, rng: random.Random,
                 hold: threading.Event, max_instances: int = 5) -> None:
        self.world = world
        self.figures = figures
        self.rng = rng
        self.hold = hold          # set by the faults while they measure convergence
        self.max_instances = max_instances
        self.instances: dict[str, Instance] = {}
        self.volumes: dict[str, volumes.Volume] = {}
        self.created = 0
        self.names: set[str] = set()   # of every instance and volume made (leak checks)
        self.touched: list[str] = []   # what the operation under way acts on (its log line)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            while self.hold.is_set() and not stop.is_set():
                time.sleep(0.2)
            if stop.is_set():
                return
            kind = self._pick()
            self.touched = []
            try:
                outcome = ELSEWHERE[kind](self) if kind in ELSEWHERE else \
                    getattr(self, f"_{kind}")()
            except Exception as error:  # an op that broke: say so, go on
                outcome = f"error {type(error).__name__}"
                print(f"[soak] {kind} raised {error!r}", flush=True)
            self.figures.op(kind, outcome)
            print(f"[soak] {self.figures.now():7.1f}s op {kind} {','.join(self.touched)}: "
                  f"{outcome}", flush=True)
            if outcome == "refused":  # most likely the API server is away: wait for it
                self.world.wait_api(300)

    def _pick(self) -> str:
        if not self.instances:
            return "create"
        kind = self.rng.choices(KINDS, WEIGHTS)[0]
        if kind == "create" and len(self.instances) >= self.max_instances:
            return "delete"
        if kind == "migrate" and len(self.world.nodes) < 2:
            return "exec_write"
        if kind.startswith("volume_"):
            return volumes.pick(self, kind)
        return kind

    def instance(self) -> Instance:
        return self.touch(self.instances[self.rng.choice(sorted(self.instances))])

    def touch(self, thing: T) -> T:
        """Name ``thing`` (an Instance or a volume) in the operation's log line."""
        self.touched.append(str(getattr(thing, "name", thing)))
        return thing

    # ------------------------------------------------------------------ GPU room
    def free(self, node: str, without: str = "") -> int:
        used = sum(i.gpus for i in self.instances.values()
                   if (i.node or i.pinned) == node and i.name != without)
        return GPUS_PER_NODE - used

    def _unplaced(self) -> int:
        return sum(i.gpus for i in self.instances.values() if not (i.node or i.pinned))

    # ------------------------------------------------------------------ operations
    def _create(self) -> str:
        gpus = self.rng.randint(0, 4)
        pinned = self.rng.choice([None, None, *self.world.nodes])
        instance, outcome = self.create(pinned, gpus)
        return outcome if instance is None else self.settle_and_check(instance)

    def create(self, pinned: str | None, gpus: int, volume: str | None = None,
               ) -> tuple[Instance | None, str]:
        """A new instance (``gpus`` cut to the room there is), mounting ``volume`` at
        volumes.MOUNT_PATH if given; None and "refused" when the API refused it."""
        self.created += 1
        name = f"soak-{self.created}"
        if pinned is None:
            room = max(self.free(n) for n in self.world.nodes) - self._unplaced()
        else:
            room = self.free(pinned)
        gpus = min(gpus, max(0, room))
        spec: Body = {"image": BUSYBOX_IMAGE, "gpuCount": gpus, "historyPolicy": "Purge",
                      "revisionHistoryLimit": HISTORY_LIMIT, "env": [{"name": "SOAK",
                                                                       "value": "0"}]}
        if pinned:
            spec["nodeName"] = pinned
        if volume:
            spec["mounts"] = [{"volume": volume, "mountPath": volumes.MOUNT_PATH}]
        self.names.add(name)
        if not self.world.apply({"apiVersion": "gpudock.dev/v1alpha1",
                                 "kind": "GpuReplicaSet", "metadata": {"name": name},
                                 "spec": spec}):
            return None, "refused"
        self.instances[name] = self.touch(Instance(name, pinned, gpus, volume=volume))
        return self.instances[name], "ok"

    def _delete(self) -> str:
        instance = self.instance()
        return self.delete(instance)

    def delete(self, instance: Instance) -> str:
        if not self.world.kubectl("delete", "grs", instance.name, "--wait=false"):
            return "refused"
        del self.instances[instance.name]
        if instance.volume in self.volumes:
            self.volumes[instance.volume].user = None
        gone = self.poll(lambda: _listed_without(self.world.items("gpureplicasets"),
                                                  instance.name))
        return "ok" if gone else "unsettled"

    def _gpu_count(self) -> str:
        instance = self.instance()
        room = self.free(instance.node or instance.pinned or "", without=instance.name)
        choices = [n for n in range(0, 5) if n != instance.gpus and n <= room]
        if not choices or not (instance.node or instance.pinned):
            return "skipped"
        gpus = self.rng.choice(choices)
        if not self.world.patch("grs", instance.name, {"spec": {"gpuCount": gpus}}):
            return "refused"
        instance.gpus = gpus
        return self.settle_and_check(instance)

    def _env(self) -> str:
        instance = self.instance()
        value = str(self.rng.randrange(10**6))
        if not self.world.patch("grs", instance.name, {"spec": {"env": [
                {"name": "SOAK", "value": value}]}}):
            return "refused"
        return self.settle_and_check(instance)

    def _ports(self) -> str:
        instance = self.instance()
        ports = [] if self.rng.random() < 0.4 else [
            {"containerPort": 8000 + self.rng.randrange(100)}]
        if not self.world.patch("grs", instance.name, {"spec": {"ports": ports}}):
            return "refused"
        return self.settle_and_check(instance)

    def _image(self) -> str:
        instance = self.instance()
        body = self.world.get("gpureplicasets", instance.name)
        if body is None:
            return "refused"
        image = next(i for i in IMAGES if i != body["spec"].get("image"))
        if not self.world.patch("grs", instance.name, {"spec": {"image": image}}):
            return "refused"
        instance.files = {}   # a new image starts from its own filesystem (revisions.md)
        return self.settle_and_check(instance)

    def _stop_start(self) -> str:
        instance = self.instance()
        state = self.rng.choice(["Stopped", "Paused"])
        if not self.world.patch("grs", instance.name, {"spec": {"state": state}}):
            return "refused"
        outcome = self.settle_and_check(instance)
        if not self.world.patch("grs", instance.name, {"spec": {"state": "Running"}}):
            return "refused"
        after = self.settle_and_check(instance)
        return outcome if outcome != "ok" else after

    def _rollback(self) -> str:
        instance = self.instance()
        body = self.world.get("gpureplicasets", instance.name)
        if body is None:
            return "refused"
        room = self.free(instance.node or instance.pinned or "", without=instance.name)
        current = (body.get("status") or {}).get("revision")
        targets = [int(entry["revision"]) for entry in
                   (body.get("status") or {}).get("history") or ()
                   if entry.get("revision") != current and not entry.get("failed")
                   and int(entry.get("gpuCount") or 0) <= room
                   and int(entry["revision"]) in instance.by_revision]
        if not targets or not (instance.node or instance.pinned):
            return "skipped"
        target = self.rng.choice(sorted(targets))
        if not self.world.patch("grs", instance.name, {"spec": {"rollbackTo": {
                "revision": target}}}):
            return "refused"
        instance.files = dict(instance.by_revision[target])
        return self.settle_and_check(instance, read_gpus=True)

    def _exec_write(self) -> str:
        """A file of random bytes in the instance's root filesystem, or (half the time
        for one that mounts a volume) in its volume."""
        instance = self.instance()
        into_volume = instance.volume in self.volumes and self.rng.random() < 0.5
        size = self.rng.randrange(1, 2**20)
        if into_volume:
            return volumes.write(self, instance, size)
        outcome, sha = self.write(instance, "/root/soak", size)
        if sha is not None:
            instance.files[f"/root/soak/f{instance.serial}"] = sha
            instance.by_revision[instance.revision] = dict(instance.files)
        return outcome

    def write(self, instance: Instance, directory: str, size: int,
              ) -> tuple[str, str | None]:
        """Write ``size`` random bytes to ``directory``/f<serial> through an
        ExecRequest; the outcome and, when it was written, its sha256."""
        body = self.world.get("gpureplicasets", instance.name)
        if body is None or not settled(body) or \
                (body.get("status") or {}).get("phase") != "Running":
            return "skipped", None   # (a change waiting for room is not settled)
        if int(body["status"].get("revision") or 0) != instance.revision:
            # A revision the soak has not seen settle (a change refused for a while,
            # applied since): its files are checked, and recorded, before a write.
            checked = self.settle_and_check(instance)
            if checked != "ok":
                return checked, None
        instance.serial += 1
        path = f"{directory}/f{instance.serial}"
        request = f"{instance.name}-w{instance.serial}"
        if not self.world.apply({
                "apiVersion": "gpudock.dev/v1alpha1", "kind": "ExecRequest",
                "metadata": {"name": request}, "spec": {
                    "replicaSetName": instance.name, "ttlSecondsAfterFinished": 60,
                    "command": ["sh", "-c", f"mkdir -p {directory} && head -c {size} "
                                f"/dev/urandom > {path} && sha256sum {path}"]}}):
            return "refused", None
        done = self.poll(lambda: requests.finished(self.world.get("execrequests", request)),
                          timeout=120)
        if done is None:
            return "unsettled", None
        status = done.get("status") or {}
        if status.get("phase") != "Completed" or status.get("exitCode") != 0:
            return f"failed {status.get('reason') or status.get('exitCode')}", None
        return "ok", str(status.get("stdout") or "").split()[0]

    # ------------------------------------------------------------------ checks
    def settle_and_check(self, instance: Instance, read_gpus: bool = False) -> str:
        """Wait until the instance settled, then check its files are all there."""
        body = self.poll(lambda: _if_settled(
            self.world.get("gpureplicasets", instance.name)))
        if body is None:
            return "unsettled"
        if not settled(body):   # Stalled: it says why it cannot get there by itself
            return f"stalled {why_not_ready(body).split(':')[0]}"
        status = body.get("status") or {}
        instance.node = str(status.get("nodeName") or instance.node)
        instance.revision = int(status.get("revision") or 0)
        if read_gpus:  # a rollback wrote its revision's shape back into the spec
            instance.gpus = int(body["spec"].get("gpuCount") or 0)
        instance.by_revision[instance.revision] = dict(instance.files)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or ())
        if not ready:
            return "ok" if status.get("phase") in ("Stopped", "Paused") else \
                f"not ready {status.get('phase')}"
        return self.check_files(instance)

    def check_files(self, instance: Instance) -> str:
        """Every recorded file of the instance and of its volume, with its checksum,
        in its container."""
        volume = self.volumes.get(instance.volume or "")
        if volume is not None and volume.files:
            outcome = self._check(instance, volume.files, f"volume {volume.name} of ")
            if outcome != "ok":
                return outcome
        return self._check(instance, instance.files)

    def _check(self, instance: Instance, files: dict[str, str], what: str = "") -> str:
        if not files:
            return "ok"
        try:
            done = self.world.exec_in(instance.node, instance.name,
                                      ["sha256sum", *sorted(files)])
        except Exception as error:  # its dockerd restarting under a fault
            return f"unchecked {type(error).__name__}"
        if done is None:
            return "no container"
        code, output = done
        found = {path: sha for sha, path in (line.split() for line in output.splitlines()
                                            if len(line.split()) == 2)}
        wrong = {p: found.get(p, "missing") for p, sha in files.items()
                 if found.get(p) != sha}
        if wrong:
            self.figures.violation(
                f"files of {what}{instance.name} at revision {instance.revision} on "
                f"{instance.node}: {sorted(wrong.items())} (exit {code})")
            for path in wrong:   # reported once
                del files[path]
            return "files lost"
        return "ok"

    def poll(self, probe: Callable[[], Body | None],
              timeout: float = SETTLE_SECONDS) -> Body | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe()
            if found is not None:
                return found
            time.sleep(1)
        return None


def _if_settled(body: Body | None) -> Body | None:
    """The body once settled, or Stalled with a reason (which waiting cannot change)."""
    return body if body is not None and why_not_ready(body) != "?" else None


def _listed_without(items: list[Body] | None, name: str) -> Body | None:
    if items is None or any(i["metadata"]["name"] == name for i in items):
        return None
    return {"gone": name}


ELSEWHERE: dict[str, Callable[[Operations], str]] = {
    "commit": requests.commit, "migrate": requests.migrate,
    "volume_create": volumes.create, "volume_resize": volumes.resize,
    "volume_delete": volumes.delete}
