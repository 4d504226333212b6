"""The users' day-2 requests in the soak: an ImageCommit (``deletionPolicy: Delete``,
deleted once done: its image must go) of an instance, and a GpuMigration of an
unpinned instance to another node; each followed by a check of the instance's files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.soak.world import Body

if TYPE_CHECKING:
    from tests.soak.operations import Operations


def finished(body: Body | None, phases: tuple[str, ...] = ("Completed", "Failed"),
             ) -> Body | None:
    return body if body is not None and (body.get("status") or {}).get("phase") in phases \
        else None


def commit(ops: Operations) -> str:
    """An ImageCommit (deletionPolicy Delete), then its delete: the image goes."""
    instance = ops.instance()
    instance.serial += 1
    name = f"{instance.name}-c{instance.serial}"
    if not ops.world.apply({
            "apiVersion": "gpudock.dev/v1alpha1", "kind": "ImageCommit",
            "metadata": {"name": name}, "spec": {
                "replicaSetName": instance.name, "deletionPolicy": "Delete",
                "pause": ops.rng.random() < 0.5,
                "image": f"gpudock.invalid/{ops.world.namespace}/{name}:1"}}):
        return "refused"
    done = ops.poll(lambda: finished(ops.world.get("imagecommits", name),
                                     ("Succeeded", "Failed")), timeout=180)
    ops.world.kubectl("delete", "imagecommit", name, "--wait=false")
    if done is None:
        return "unsettled"
    status = done.get("status") or {}
    if status.get("phase") != "Succeeded":
        return f"failed {status.get('reason')}"
    return ops.settle_and_check(instance)


def migrate(ops: Operations) -> str:
    movable = [i for i in ops.instances.values() if i.pinned is None and i.node]
    if not movable:
        return "skipped"
    instance = ops.touch(ops.rng.choice(sorted(movable, key=lambda i: i.name)))
    targets = [n for n in ops.world.nodes
               if n != instance.node and ops.free(n) >= instance.gpus]
    if not targets:
        return "skipped"
    target = ops.rng.choice(targets)
    instance.serial += 1
    name = f"{instance.name}-m{instance.serial}"
    if not ops.world.apply({"apiVersion": "gpudock.dev/v1alpha1",
                            "kind": "GpuMigration", "metadata": {"name": name},
                            "spec": {"replicaSetName": instance.name,
                                     "targetNode": target}}):
        return "refused"
    done = ops.poll(lambda: finished(ops.world.get("gpumigrations", name),
                                     ("Succeeded", "Failed", "Cancelled")))
    if done is None:
        return "unsettled"
    phase = (done.get("status") or {}).get("phase")
    outcome = ops.settle_and_check(instance)
    if phase != "Succeeded":
        return f"migration {phase} {(done.get('status') or {}).get('reason')}"
    return outcome
