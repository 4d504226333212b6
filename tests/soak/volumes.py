"""The users' SizedVolume operations (docs/reliability.md#soak):

- ``volume_create``: a SizedVolume of 64-256 MiB pinned to a node (on that node's
  backend, tests/soak/nodes.py), an instance on the same node that mounts it at
  MOUNT_PATH, and BALLAST_MIB of random bytes written into it through an ExecRequest
  (so a shrink below its use is below it on every backend); when a volume lost its
  user (its instance deleted), a new instance mounts it instead and must see its files;
- ``volume_resize``: grow (twice the size, up to MAX_MIB), shrink (to half, down to
  MIN_MIB: a refusal is an outcome), or shrink below what it holds (SHRINK_BELOW_MIB),
  which must be refused with ``ShrinkBelowUsage`` and nothing changed: the outcome is
  "refused ShrinkBelowUsage", and the size is set back;
- ``volume_delete``: the SizedVolume deleted while its user still mounts it (it waits,
  ``VolumeInUse``), then the user; both must go.

Every resize is followed by a check of the files of the volume (and of its user).
The exec_write operation writes into the volume half the time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.soak.world import Body, condition

if TYPE_CHECKING:
    from tests.soak.operations import Instance, Operations

MOUNT_PATH = "/root/vol"
MAX_VOLUMES = 2
MIN_MIB, MAX_MIB = 48, 512
SIZES_MIB = (64, 128, 256)
BALLAST_MIB = 8
SHRINK_BELOW_MIB = 4
MiB = 2**20


@dataclass
class Volume:
    name: str
    node: str
    size_mib: int
    user: str | None = None     # the instance that mounts it
    files: dict[str, str] = field(default_factory=dict)   # path (in the user) -> sha256
    written: int = 0            # bytes written into it


def pick(ops: Operations, kind: str) -> str:
    """``kind``, or what can be done instead: a create when there is no volume, a
    resize when there is no room for another."""
    full = len(ops.instances) >= ops.max_instances
    if kind == "volume_create":
        orphan = any(v.user is None for v in ops.volumes.values())
        if full or (len(ops.volumes) >= MAX_VOLUMES and not orphan):
            return "volume_resize" if ops.volumes else "delete"
        return kind
    if not ops.volumes:
        return "exec_write" if full else "volume_create"
    return kind


def create(ops: Operations) -> str:
    orphans = sorted(n for n, v in ops.volumes.items() if v.user is None)
    if orphans and (len(ops.volumes) >= MAX_VOLUMES or ops.rng.random() < 0.5):
        volume = ops.touch(ops.volumes[ops.rng.choice(orphans)])
        return _new_user(ops, volume)
    node = ops.rng.choice(ops.world.nodes)
    ops.created += 1
    volume = ops.touch(Volume(f"soakv-{ops.created}", node, ops.rng.choice(SIZES_MIB)))
    ops.names.add(volume.name)
    if not ops.world.apply({"apiVersion": "gpudock.dev/v1alpha1", "kind": "SizedVolume",
                            "metadata": {"name": volume.name},
                            "spec": {"nodeName": node, "size": f"{volume.size_mib}Mi"}}):
        return "refused"
    ops.volumes[volume.name] = volume
    ready = ops.poll(lambda: _ready(ops.world.get("sizedvolumes", volume.name)), timeout=120)
    if ready is None:
        return f"volume not ready {_reason(ops.world.get('sizedvolumes', volume.name))}"
    outcome = _new_user(ops, volume)
    if outcome != "ok" or volume.user is None:
        return outcome
    return write(ops, ops.instances[volume.user], BALLAST_MIB * MiB)


def _new_user(ops: Operations, volume: Volume) -> str:
    instance, outcome = ops.create(volume.node, ops.rng.randint(0, 1), volume.name)
    if instance is None:
        return outcome
    volume.user = instance.name
    return ops.settle_and_check(instance)   # the volume's files too


def write(ops: Operations, instance: Instance, size: int) -> str:
    volume = ops.volumes[str(instance.volume)]
    outcome, sha = ops.write(instance, MOUNT_PATH, size)
    if sha is not None:
        volume.files[f"{MOUNT_PATH}/f{instance.serial}"] = sha
        volume.written += size
    return outcome


def resize(ops: Operations) -> str:
    volume = ops.touch(ops.volumes[ops.rng.choice(sorted(ops.volumes))])
    roll = ops.rng.random()
    if roll < 0.25 and volume.written >= BALLAST_MIB * MiB:
        return _shrink_below(ops, volume)
    if (roll < 0.6 and volume.size_mib < MAX_MIB) or volume.size_mib <= MIN_MIB:
        size = min(volume.size_mib * 2, MAX_MIB)
    else:
        size = max(volume.size_mib // 2, MIN_MIB)
    outcome = _resize_to(ops, volume, size)
    if outcome.startswith("refused "):   # a shrink its data (or a grow the disk) denies
        restored = _resize_to(ops, volume, volume.size_mib)
        outcome = outcome if restored == "ok" else f"{outcome}, then {restored}"
    else:
        volume.size_mib = size if outcome == "ok" else volume.size_mib
    return _check_user(ops, volume, outcome)


def _shrink_below(ops: Operations, volume: Volume) -> str:
    """Must be refused (ShrinkBelowUsage), the volume Ready at its size; then the
    size is set back."""
    outcome = _resize_to(ops, volume, SHRINK_BELOW_MIB)
    if outcome == "ok":
        ops.figures.violation(f"volume {volume.name} shrunk to {SHRINK_BELOW_MIB}Mi with "
                              f"{volume.written >> 20} MiB written into it")
        volume.size_mib = SHRINK_BELOW_MIB
        return _check_user(ops, volume, "shrunk below use")
    restored = _resize_to(ops, volume, volume.size_mib)
    return _check_user(ops, volume, outcome if restored == "ok" else
                       f"{outcome}, then {restored}")


def _resize_to(ops: Operations, volume: Volume, size_mib: int) -> str:
    """Ask for ``size_mib``; "ok" once the volume is Ready at that size, "refused
    REASON" once it says why not (Degraded, nothing changed)."""
    if not ops.world.patch("svol", volume.name, {"spec": {"size": f"{size_mib}Mi"}}):
        return "refused"
    done = ops.poll(lambda: _resized(ops.world.get("sizedvolumes", volume.name), size_mib))
    if done is None:
        return f"unsettled {_reason(ops.world.get('sizedvolumes', volume.name))}"
    degraded = condition(done, "Degraded")
    if degraded.get("status") == "True":
        return f"refused {degraded.get('reason')}"
    return "ok"


def _check_user(ops: Operations, volume: Volume, outcome: str) -> str:
    if volume.user is None or volume.user not in ops.instances:
        return outcome
    after = ops.settle_and_check(ops.instances[volume.user])
    return outcome if outcome != "ok" else after


def delete(ops: Operations) -> str:
    volume = ops.touch(ops.volumes[ops.rng.choice(sorted(ops.volumes))])
    if not ops.world.kubectl("delete", "svol", volume.name, "--wait=false"):
        return "refused"
    del ops.volumes[volume.name]
    outcome = "ok"
    if volume.user in ops.instances:
        # In use: it waits for its user (phase Deleting, VolumeInUse), then goes.
        in_use = ops.poll(lambda: _deleting(ops.world.get("sizedvolumes", volume.name)),
                          timeout=30)
        outcome = ops.delete(ops.instances[volume.user])
        if outcome == "ok" and in_use is None:
            outcome = "ok, not seen waiting"
    gone = ops.poll(lambda: None if ops.world.get("sizedvolumes", volume.name) is not None
                    else {"gone": volume.name})
    return outcome if gone is not None else "unsettled"


def _ready(body: Body | None) -> Body | None:
    return body if body is not None and \
        (body.get("status") or {}).get("phase") == "Ready" else None


def _resized(body: Body | None, size_mib: int) -> Body | None:
    if body is None:
        return None
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation") or \
            condition(body, "Progressing").get("status") == "True":
        return None
    if condition(body, "Degraded").get("status") == "True":
        return body
    return body if status.get("phase") == "Ready" and \
        status.get("sizeBytes") == size_mib * MiB else None


def _deleting(body: Body | None) -> Body | None:
    return body if body is not None and \
        (body.get("status") or {}).get("reason") == "VolumeInUse" else None


def _reason(body: Body | None) -> str:
    return "gone" if body is None else str((body.get("status") or {}).get("reason"))
