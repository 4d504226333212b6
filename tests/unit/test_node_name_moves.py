"""#23 item 1: a changed spec.nodeName of an instance moves it. The node that holds it
makes one GpuMigration per change (generation, target); the node it names, a node
that does not hold it and a resource being deleted make none."""
from __future__ import annotations

from typing import Any

from gpudock.agent.node_name_moves import migration_name, request_move, target_of
from gpudock.api import ownership
from tests.unit.fakes.kube import InMemoryKube

A, B = "node-a", "node-b"


def grs(spec_node: str | None, held_by: str | None, status_node: str | None = None,
        **meta: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "lab", "uid": "u-1", "generation": 4,
                         "finalizers": [ownership.node_finalizer(held_by)] if held_by else [],
                         **meta},
            "spec": {"nodeName": spec_node} if spec_node else {},
            "status": {"nodeName": status_node} if status_node else {}}


def test_23_1_only_the_holder_of_a_renamed_instance_moves_it() -> None:
    assert target_of(grs(B, held_by=A), A) == B  # the node that holds it
    assert target_of(grs(B, held_by=A), B) == ""  # the node named: it waits for the move
    assert target_of(grs(A, held_by=A), A) == ""  # not changed
    assert target_of(grs(None, held_by=A, status_node=A), A) == ""  # unpinned
    assert target_of(grs(B, held_by=None), A) == ""  # never held: nothing to move
    assert target_of(grs(B, held_by=A, deletionTimestamp="2026-01-01T00:00:00Z"), A) == ""
    # Moved to B by a migration, then renamed to C: B holds it now, A no longer does.
    moved = grs("node-c", held_by=B, status_node=B)
    assert (target_of(moved, B), target_of(moved, A)) == ("node-c", "")
    # A's finalizer is still on while the move switches (status.nodeName names B): A
    # does not start a second move.
    switching = grs(B, held_by=A, status_node=B)
    assert target_of(switching, A) == ""


def test_23_1_one_migration_per_change_owned_by_the_instance() -> None:
    kube = InMemoryKube()
    body = grs(B, held_by=A)
    name = request_move(kube, body, A)
    assert name == "lab-to-node-b-g4"
    made = kube.get("gpumigrations", "ns", name)
    assert made["spec"] == {"replicaSetName": "lab", "targetNode": B}
    (owner,) = made["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("GpuReplicaSet", "lab", "u-1")
    # Every later pass of the same change finds it (failed or not): no second one.
    kube.patch_status("gpumigrations", "ns", name, {"phase": "Failed"})
    assert request_move(kube, body, A) == name
    assert len([k for k in kube.objects if k[0] == "gpumigrations"]) == 1
    # Another change (a new generation) is another try.
    assert request_move(kube, {**body, "metadata": {**body["metadata"], "generation": 5}},
                        A) == "lab-to-node-b-g5"
    assert request_move(kube, body, B) is None


def test_23_1_a_long_name_is_cut_to_a_valid_one() -> None:
    name = migration_name("x" * 250, "node-" + "y" * 60, 12)
    assert len(name) == 253
    assert name != migration_name("x" * 250, "node-" + "y" * 61, 12)


def test_23_1_a_source_whose_binding_moved_away_leaves_the_instance_alone() -> None:
    # Unpinned, or pinned to the node the binding names: moved away from A.
    assert ownership.moved_away(grs(None, held_by=A, status_node=B), A)
    assert ownership.moved_away(grs(B, held_by=A, status_node=B), A)
    # Not moved: bound here, not bound, or the spec names another node than the
    # binding (a switch this node refused: it still serves it).
    assert not ownership.moved_away(grs(None, held_by=A, status_node=A), A)
    assert not ownership.moved_away(grs(B, held_by=A), A)
    assert not ownership.moved_away(grs(A, held_by=B, status_node=B), A)
