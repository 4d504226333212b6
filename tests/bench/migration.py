"""Migration benchmark (#23): a GpuMigration of an instance whose writable layer holds
``--gib`` GiB of random (incompressible) data and whose SizedVolume holds
``--volume-gib`` GiB more, against `tar -cf - | tar -xf -` of the same two
directories through a loopback TCP socket, in the same run on the same machine.

    python -m tests.bench.migration [--gib 1] [--volume-gib 1] [--rounds 3]
                                                               (make bench-migration)

The fleet of tests/integration/fleet.py: nodes ``bench-mig-a`` (the stack's dockerd)
and ``bench-mig-b`` (a second dockerd), each Docker root a loop-mounted ext4 image.
Each round:

- (b) the baseline: ``tar -cf - -C UPPER . -C VOLUME .`` writing into a connected
  loopback TCP socket whose other end is ``tar -xf - -C SCRATCH``'s stdin; UPPER is
  the instance's upper dir on node a (its GraphDriver UpperDir, read from the host),
  VOLUME the directory its SizedVolume (loopfile, on node a) binds, SCRATCH a new
  directory on node b's Docker root filesystem;
  then ``sync -f SCRATCH`` (what making that copy durable takes: the migration's
  target syncs what it receives before the source lets go; tar never syncs), timed
  apart and shown as (b');
- (a) a GpuMigration of that instance from a to b: the time from its creation to
  Ready on b (the ratios use it) and to phase Succeeded (after the source's hold,
  --migration-hold-seconds), its phases as a watch of the GpuMigration saw them, node b's time
  copying the received layer into the new container (its agent's metrics), and its
  ``status.downtimeSeconds`` beside the downtime measured here (Docker's kill event
  on node a -> Ready on b, as a watch of the GpuReplicaSet saw it);
- (c) another instance with the same data moved the same way, while 10 files of
  1 MiB (10 MiB) are written into it as soon as the migration shows Transferring
  (its first pass, while it runs): its downtimeSeconds.

Between rounds the instances and GpuMigrations are deleted and their containers and
disks and volumes leave both nodes. The defaults are the issue's "1 GiB layer +
1 GiB volume"; ``--volume-gib 0`` measures the layer alone. Prints tables; asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.models.containers

from tests.bench.migration_report import CHANGED_BYTES, CHANGED_FILES, FILES, report
from tests.bench.watches import GROUP, VERSION, Watch, ready
from tests.integration.fleet import Fleet, running_fleet
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack, wait_for
from tests.stack.processes import free_port

NAMESPACE = "bench-mig"
BLOCK = 4 << 20
END_PHASES = ("Succeeded", "Failed", "Cancelled")
METRICS_PORT = [0]  # node b's agent's metrics port, once it is started with one


def _ready_on(node: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("nodeName") == node and ready(status)


def _stop_events(fleet: Fleet, container_id: str, since: float) -> dict[str, float]:
    """When node a's dockerd killed and stopped the container (its first kill, die
    and stop events after ``since``), in wall-clock seconds."""
    client = fleet.engines[fleet.nodes[0]].client()
    try:
        seen: dict[str, float] = {}
        for event in client.events(since=int(since) - 1, until=int(time.time()) + 1,
                                   filters={"container": container_id}, decode=True):
            when = int(event.get("timeNano") or 0) / 1e9
            if when >= since:
                seen.setdefault(str(event.get("status") or event.get("Action")), when)
        return seen
    finally:
        client.close()


def _phase(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") == phase


# ------------------------------------------------------------------------ the instance
def _instance(fleet: Fleet, name: str, volume_bytes: int) -> docker.models.containers.Container:
    """On node a; with a SizedVolume at /vol that holds ``volume_bytes`` (room for
    them and the filesystem's own), when not 0."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "GpuReplicaSet",
        "metadata": {"name": name},
        "spec": {"image": BUSYBOX_IMAGE, "gpuCount": 1, "command": ["sleep", "100000"],
                 "historyPolicy": "Purge"}}  # its delete leaves nothing on the node
    if volume_bytes:
        volume = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SizedVolume",
                  "metadata": {"name": f"{name}-vol"},
                  "spec": {"size": f"{volume_bytes * 23 // 20 // 2**20 + 64}Mi"}}
        fleet.stack.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(volume))
        body["spec"]["mounts"] = [{"volume": f"{name}-vol", "mountPath": "/vol"}]
    node, other = fleet.nodes
    _cordon(fleet, other, True)  # the scheduler puts it on node a (pinned, it could not move)
    try:
        fleet.stack.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))
        wait_for(lambda: fleet.node_of(name), 120, what=f"{name} bound")
    finally:
        _cordon(fleet, other, False)

    def running() -> list[docker.models.containers.Container]:
        return [c for c in fleet.containers(node)
                if c.status == "running" and c.labels["gpudock.dev/name"] == name]

    wait_for(running, 120, what=f"{name} running on {node}")
    return running()[0]


def _cordon(fleet: Fleet, node: str, on: bool) -> None:
    fleet.stack.kubectl("patch", "gpunode", node, "--type=merge", "-p",
                        json.dumps({"spec": {"unschedulable": on}}))


def _inside(container: docker.models.containers.Container, path: str) -> Path:
    """A path in the container's merged view, from the host (writes land in its
    writable layer)."""
    container.reload()
    return Path(f"/proc/{container.attrs['State']['Pid']}/root{path}")


def _write_random(directory: Path, files: int, size: int, prefix: str) -> None:
    directory.mkdir(exist_ok=True)
    for i in range(files):
        with open(directory / f"{prefix}-{i}", "wb") as handle:
            left = size
            while left > 0:
                left -= handle.write(os.urandom(min(BLOCK, left)))


def _fill(container: docker.models.containers.Container, total: int, volume: int) -> None:
    _write_random(_inside(container, "/data"), FILES, total // FILES, "random")
    if volume:
        _write_random(_inside(container, "/vol"), FILES, volume // FILES, "random")
    os.sync()  # its writeback does not run into what is timed next


def _sources(fleet: Fleet, container: docker.models.containers.Container) -> list[Path]:
    """The instance's upper dir, and the directory its SizedVolume binds (from the
    Docker volume's options on node a), as the host sees them."""
    found = [Path(container.attrs["GraphDriver"]["Data"]["UpperDir"])]
    for mount in container.attrs.get("Mounts") or ():
        if mount.get("Destination") == "/vol":
            client = fleet.engines[fleet.nodes[0]].client()
            try:
                found.append(Path(client.volumes.get(mount["Name"]).attrs["Options"]["device"]))
            finally:
                client.close()
    return found


# ------------------------------------------------------------------------ the baseline
def tar_through_socket(sources: list[Path], target: Path) -> float:
    """`tar -cf - -C source . [-C source2 .] | <loopback TCP> | tar -xf - -C target`:
    seconds."""
    target.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        started = time.perf_counter()
        sending = socket.create_connection(listener.getsockname())
        receiving, _ = listener.accept()
        untar = subprocess.Popen(["tar", "-xf", "-", "-C", str(target)],
                                 stdin=receiving.fileno())
        tar = subprocess.Popen(["tar", "-cf", "-", *(
            arg for source in sources for arg in ("-C", str(source), "."))],
            stdout=sending.fileno())
        sending.close()  # the children hold the ends now: tar's exit is the EOF
        receiving.close()
        codes = (tar.wait(), untar.wait())
        elapsed = time.perf_counter() - started
    if codes != (0, 0):
        raise RuntimeError(f"tar | tar exited {codes}")
    return elapsed


# ------------------------------------------------------------------------ a migration
def _migrate(fleet: Fleet, watches: tuple[Watch, Watch],
             container: docker.models.containers.Container, name: str,
             during: Callable[[], None] | None = None) -> dict[str, float]:
    """Create the GpuMigration of ``container``'s instance to node b and wait for its
    end; ``during`` runs once it shows Transferring. Times in seconds from its
    creation: its phases as the watch saw them, the container's kill and stop on
    node a (Docker's events), Ready on b (the GpuReplicaSet's watch)."""
    migrations, replica_sets = watches
    instance, target = container.labels["gpudock.dev/name"], fleet.nodes[1]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GpuMigration",
            "metadata": {"name": name},
            "spec": {"replicaSetName": instance, "targetNode": target}}
    restored = _restore_seconds(METRICS_PORT[0])
    started = time.time()
    migrations.api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE,
                                                   "gpumigrations", body)
    result: dict[str, float] = {}
    if during is not None:
        migrations.wait(name, lambda s: s.get("phase") in ("Transferring", *END_PHASES),
                        started, 300)
        during()
        result["during end"] = time.time() - started
    migrations.wait(name, lambda s: s.get("phase") in END_PHASES, started, 1800)
    status = migrations.last(name)
    if status.get("phase") != "Succeeded":
        raise RuntimeError(f"{name}: {status}")
    docker_events = _stop_events(fleet, str(container.id), started)
    seen = {"transferring": migrations.first(name, _phase("Transferring")),
            "kill": docker_events.get("kill"), "stopped": docker_events.get("stop"),
            "switching": migrations.first(name, _phase("Switching")),
            "ready": replica_sets.first(instance, _ready_on(target), started),
            "succeeded": migrations.first(name, _phase("Succeeded"))}
    result.update({k: v - started if v is not None else float("nan")
                   for k, v in seen.items()})
    result["total"] = result["succeeded"]
    result["downtime"] = float(status.get("downtimeSeconds") or 0)
    result["measured downtime"] = result["ready"] - result["kill"]
    result["bytes"] = float(status.get("bytesDone") or 0)
    result["layer copy"] = _restore_seconds(METRICS_PORT[0]) - restored
    return result


def _restore_seconds(port: int) -> float:
    """Node b's agent's time putting saved layers into new containers so far
    (gpudock_disk_save_duration_seconds, how="layer-restore")."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    found = re.search(r'^gpudock_disk_save_duration_seconds_sum\{how="layer-restore"\} (\S+)',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _used(fleet: Fleet, node: str) -> int:
    stat = os.statvfs(fleet.engines[node].root)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _clean(fleet: Fleet) -> None:
    """The instances and GpuMigrations go; their containers and disks leave both
    nodes."""
    fleet.stack.kubectl("delete", "grs", "--all", "-n", NAMESPACE, "--timeout=300s")
    fleet.stack.kubectl("delete", "gmig", "--all", "-n", NAMESPACE, "--timeout=120s")
    fleet.stack.kubectl("delete", "svol", "--all", "-n", NAMESPACE, "--timeout=300s")
    wait_for(lambda: not any(fleet.containers(n) for n in fleet.nodes), 120,
             what="no containers on either node")
    deadline = time.monotonic() + 60
    while any(_saved_layers(fleet, n) for n in fleet.nodes) and time.monotonic() < deadline:
        time.sleep(0.5)
    for node in fleet.nodes:
        if _saved_layers(fleet, node):
            print(f"left on {node}: {_saved_layers(fleet, node)}", flush=True)
    os.sync()


def _saved_layers(fleet: Fleet, node: str) -> list[str]:
    """What is under the node's saved-layers directory, two levels deep."""
    home = fleet.engines[node].root / "gpudock" / "layers"
    return sorted(str(p.relative_to(home)) for p in home.glob("*/*")) + sorted(
        str(p.relative_to(home)) for p in home.glob("*") if p.is_file())


# ------------------------------------------------------------------------------ round
def _round(fleet: Fleet, watches: tuple[Watch, Watch], number: int, size: int,
           volume: int, scratch: Path) -> dict[str, float]:
    a, b = fleet.nodes
    before = {n: _used(fleet, n) for n in fleet.nodes}
    plain = _instance(fleet, f"plain-{number}", volume)
    _fill(plain, size, volume)
    copy = scratch / f"tar-{number}"
    baseline = tar_through_socket(_sources(fleet, plain), copy)
    # What it takes to make that copy durable (the migration's target syncs what it
    # receives before the source lets go of its disk; tar never syncs).
    started = time.perf_counter()
    subprocess.run(["sync", "-f", str(copy)], check=True)
    synced = time.perf_counter() - started
    shutil.rmtree(copy)
    os.sync()
    moved = _migrate(fleet, watches, plain, f"plain-{number}-to-b")

    busy = _instance(fleet, f"busy-{number}", volume)
    _fill(busy, size, volume)
    changing = _inside(busy, "/data")
    busy_run = _migrate(fleet, watches, busy, f"busy-{number}-to-b", during=(
        lambda: _write_random(changing, CHANGED_FILES, CHANGED_BYTES, "changed")))
    _clean(fleet)
    return {"tar": baseline, "tar sync": synced, **moved,
            **{f"busy {k}": v for k, v in busy_run.items()},
            "left a": (_used(fleet, a) - before[a]) / 2**20,
            "left b": (_used(fleet, b) - before[b]) / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.migration",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0,
                        help="the data in the writable layer, GiB (the issue's 1 GiB)")
    parser.add_argument("--volume-gib", type=float, default=1.0,
                        help="the data in a SizedVolume it mounts, GiB (the issue's 1 GiB; "
                        "0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size = int(args.gib * 2**30) // FILES * FILES
    volume = int(args.volume_gib * 2**30) // FILES * FILES
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    with LocalStack() as stack:
        stack.kubectl("create", "namespace", NAMESPACE)
        with running_fleet(stack, NAMESPACE) as fleet:
            METRICS_PORT[0] = free_port()  # node b's agent again, with its metrics
            fleet.agents[fleet.nodes[1]].stop()
            fleet.start_agent(fleet.nodes[1], extra_args=["--metrics-port",
                                                          str(METRICS_PORT[0])])
            watches = (Watch(stack, NAMESPACE, "gpumigrations"),
                       Watch(stack, NAMESPACE, "gpureplicasets"))
            scratch = fleet.engines[fleet.nodes[1]].root / "bench-scratch"
            scratch.mkdir()
            runs = []
            try:
                for number in range(1, args.rounds + 1):
                    runs.append(_round(fleet, watches, number, size, volume, scratch))
                    print(f"round {number}: {runs[-1]}", flush=True)
            finally:
                for watch in watches:
                    watch.stop()
                shutil.rmtree(scratch, ignore_errors=True)
                _clean(fleet)
            report(runs, size / 2**30, volume / 2**30, stack.docker_root_fs, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
