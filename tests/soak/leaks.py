"""What the soak may leave behind, looked at before the first operation and after the
last delete: anything there after and not before is a leak. Per node: Docker
containers, images and volumes, the agent's saved layers and staging directories
(``*.gpudock-incoming``) under ``<Docker root>/gpudock``, staging directories in its
state dir, what its volume backend keeps under its volume root (loopfile: image,
undo and size files, mount points; btrfs: subvolumes, their qgroups and the files
noting their IDs); on the machine: mounts and loop devices under the stack's
directory. After the deletes, no revision record (of an instance or a volume) of any
name the soak used may be left in any node's store (every instance is ``Purge``).
Before the deletes, no instance may keep more revision records than its history
limit allows, nor a saved layer that none of its records names (read from the
node's store: SQLite in its state dir, or etcd)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpudock.adapters.revision_store import open_revision_store
from gpudock.core.revision import layers_named
from tests.soak.world import World
from tests.stack.localstack import BUSYBOX_IMAGE, CUDA_LIKE_IMAGE

STAGING = ".gpudock-incoming"
TEST_IMAGES = {BUSYBOX_IMAGE, CUDA_LIKE_IMAGE}


@dataclass(frozen=True)
class Snapshot:
    things: frozenset[str]   # "kind node/what"
    # Images tagged as a test image: one a migration streamed in is what a pull
    # would bring, not a leak (the nodes' test images differ by ID).
    test_images: frozenset[str]


def snapshot(world: World) -> Snapshot:
    things: set[str] = set()
    test_images: set[str] = set()
    for node in world.nodes:
        with world.client(node) as client:
            things |= {f"container {node}/{c.name}" for c in client.containers.list(all=True)}
            for image in client.images.list(all=True):
                things.add(f"image {node}/{image.id} {sorted(image.tags)}")
                if set(image.tags) & TEST_IMAGES:
                    test_images.add(f"image {node}/{image.id}")
            things |= {f"volume {node}/{v.name}" for v in client.volumes.list()}
        root = world.fleet.engines[node].root
        things |= {f"saved {node}/{p}" for p in _tree(root / "gpudock", depth=3)
                   if len(Path(p).parts) > 1}   # layers/ itself is made once, kept
        state = world.fleet.agents[node].state_dir
        things |= {f"staging {node}/{p}" for p in _tree(state, depth=8) if STAGING in p}
        things |= _volume_things(world, node)
    base = str(world.stack.base_dir)
    with open("/proc/self/mounts") as mounts:
        things |= {f"mount {line.split()[1]}" for line in mounts
                   if line.split()[1].startswith(base)}
    listing = subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True,
                             check=False).stdout
    for device in (json.loads(listing)["loopdevices"] if listing.strip() else ()):
        if str(device.get("back-file") or "").startswith(base):
            things.add(f"loop {device['name']} {device['back-file']}")
    return Snapshot(frozenset(things), frozenset(test_images))


def _volume_things(world: World, node: str) -> set[str]:
    setup = world.setups[node]
    root = setup.volume_root
    # loopfile: images/<id>.ext4, mounts/<id>, ... (not images/, mounts/ themselves);
    # btrfs: the subvolumes' directories, .gpudock-qgroups/<id> (not that directory)
    things = {f"volume-file {node}/{p}" for p in _tree(root, depth=2)
              if len(Path(p).parts) > 1 or (setup.backend == "btrfs" and
                                            p != ".gpudock-qgroups")}
    if setup.backend == "btrfs":
        listing = subprocess.run(["btrfs", "subvolume", "list", str(root)],
                                 capture_output=True, text=True, check=False).stdout
        things |= {f"subvolume {node}/{line.split()[-1]}" for line in listing.splitlines()
                   if line.strip()}
        qgroups = subprocess.run(["btrfs", "qgroup", "show", "--raw", str(root)],
                                 capture_output=True, text=True, check=False).stdout
        things |= {f"qgroup {node}/{line.split()[0]}" for line in qgroups.splitlines()
                   if line.split() and line.split()[0].startswith("0/")
                   and line.split()[0] != "0/5"}
    return things


def records_left(world: World, names: set[str]) -> list[str]:
    """The revision records of ``names`` (instances and volumes, all deleted by
    now) still in some node's store."""
    left = []
    for node, setup in sorted(world.setups.items()):
        url = setup.store
        store = open_revision_store(url, node)  # an etcd store: that node's records
        try:
            for name in sorted(names):
                records = [r.revision for r in store.list(world.namespace, name)]
                volumes = [r.revision for r in store.list_volume(world.namespace, name)]
                if records or volumes:
                    left.append(f"revision records of {name} in {url} ({node}): "
                                f"{records or volumes}")
        finally:
            store.close()
    return left


def leaked(before: Snapshot, after: Snapshot) -> list[str]:
    """What is there after and was not before (an image by its ID: one that only
    lost its tag meanwhile is no new thing)."""
    def key(thing: str) -> str:
        return " ".join(thing.split()[:2]) if thing.startswith("image ") else thing
    known = {key(t) for t in before.things} | set(after.test_images)
    return sorted(t for t in after.things if key(t) not in known)


def history_problems(world: World, node: str, name: str, uid: str,
                     limit: int) -> list[str]:
    """What the history of resource ``uid`` on ``node`` keeps beyond its limit: more
    records than the limit, the current revision and one on its way allow; saved
    layers (or staging copies) that no record names, which nothing would remove."""
    store = open_revision_store(world.setups[node].store, node)
    try:
        records = [r for r in store.list(world.namespace, name) if r.uid == uid]
    finally:
        store.close()
    problems = []
    if len(records) > limit + 2:
        problems.append(f"{len(records)} revision records (revisionHistoryLimit {limit}): "
                        f"{[r.revision for r in records]}")
    mine = world.fleet.engines[node].root / "gpudock" / "layers" / uid
    named = layers_named(records)
    orphans = sorted(p.name for p in mine.iterdir() if str(p) not in named) \
        if mine.is_dir() else []
    if orphans:
        problems.append(f"saved layers no record names: {orphans} (named: "
                        f"{sorted(Path(p).name for p in named)})")
    return problems


def _tree(top: Path, depth: int) -> list[str]:
    found: list[str] = []
    if not top.is_dir():
        return found
    for root, dirs, files in os.walk(top):
        relative = Path(root).relative_to(top)
        if len(relative.parts) >= depth:
            dirs.clear()
        found += [str(relative / name) for name in (*dirs, *files)]
    return found
