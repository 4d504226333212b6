"""The core's choices for disks saved as overlay2 writable layers (no Docker: plain
observed values). The integration tests show the copies themselves."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gpudock.api.gpu_replica_set import HistoryPolicy
from gpudock.core.observed import ImageInfo
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.history import plan_delete
from gpudock.core.replica_set.plan import plan_replica_set
from gpudock.core.replica_set.saved_disks import SavedDisks, preserved_image
from gpudock.core.revision import Revision
from tests.unit.test_replica_set_plan import KEY, _mine, _obs, _record, _spec

ROOT = "/var/lib/docker/gpudock/layers"
UPPER = "/var/lib/docker/overlay2/abc/diff"


def _on_overlay(**kw: Any) -> dict[str, Any]:
    return {"upper_dir": UPPER, "image": "img", **kw}


def _saved(record: Revision, container_id: str = "c1") -> Revision:
    path = f"{ROOT}/uid-1/rev-{record.revision}-{container_id}"
    return replace(record, saved_layer=path, preserved_from=container_id)


def test_an_update_saves_the_writable_layer_and_carries_it_over() -> None:
    old, new = _spec(), _spec(gpuCount=1)
    running = _mine(old, **_on_overlay())
    plan = plan_replica_set(_obs(new, running, records=(_record(old),),
                                      layer_root=ROOT))
    stop, save, start, remove = plan.actions  # one plan: save, start on it, remove
    assert isinstance(stop, act.StopContainer)
    assert stop.saving
    assert isinstance(save, act.PreserveDisk)
    assert save.layer == f"{ROOT}/uid-1/rev-1-c1"
    assert save.previous is None  # revision 1 started from the image alone
    assert isinstance(start, act.StartRevision)
    assert start.layer == save.layer == start.record.layer  # the layer the save makes
    assert isinstance(remove, act.RemoveContainer)
    assert remove.container_id == "c1"
    assert plan.next_config is not None
    assert plan.next_config.image == "img"
    assert plan.next_carries_disk

    # Saved: the new revision is made from the same image, the layer copied in.
    record = _saved(_record(old))
    stopped = replace(running, status="exited")
    plan = plan_replica_set(_obs(new, stopped, records=(record,), layer_root=ROOT,
                                      saved_layers=frozenset({record.saved_layer or ""})))
    start, remove = plan.actions  # a rollout cut short after the save resumes there
    assert isinstance(start, act.StartRevision)
    assert isinstance(remove, act.RemoveContainer)
    assert start.config.image == "img"
    assert start.layer == record.saved_layer == start.record.layer
    assert start.record.revision == 2


def test_the_next_save_shares_files_with_the_layer_it_started_from() -> None:
    spec = _spec(gpuCount=1)
    first = _saved(_record(spec))
    second = replace(_record(spec, 2), layer=first.saved_layer)
    running = _mine(spec, id="c2", revision=2, **_on_overlay())
    plan = plan_replica_set(_obs(_spec(gpuCount=2), running, records=(first, second),
                                      layer_root=ROOT,
                                      saved_layers=frozenset({first.saved_layer or ""})))
    save = next(a for a in plan.actions if isinstance(a, act.PreserveDisk))
    assert (save.layer, save.previous) == (f"{ROOT}/uid-1/rev-2-c2", first.saved_layer)


def test_commit_where_no_layer_can_be_saved() -> None:
    old, new = _spec(), _spec(gpuCount=1)
    for running, root in ((_mine(old, **_on_overlay()), None),  # --disk-saves commit
                          (_mine(old, image="img"), ROOT)):  # another storage driver
        plan = plan_replica_set(_obs(new, running, records=(_record(old),),
                                          layer_root=root))
        save = next(a for a in plan.actions if isinstance(a, act.PreserveDisk))
        assert save.layer is None
        assert plan.next_config is not None
        assert plan.next_config.image == preserved_image(KEY, 1)


def test_rollback_and_resume_start_from_the_saved_layer() -> None:
    spec = _spec(gpuCount=1)
    first = _saved(_record(spec))
    second = replace(_saved(_record(_spec(gpuCount=2), 2), "c2"), layer=first.saved_layer,
                     container_id="c2")  # the agent saved and removed its container
    layers = frozenset({first.saved_layer or "", second.saved_layer or ""})
    # Stopped -> Running: revision 2 is made again from its own saved layer.
    plan = plan_replica_set(_obs(_spec(gpuCount=2), records=(first, second),
                                      layer_root=ROOT, saved_layers=layers))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert (start.reason, start.layer, start.record.revision) == (
        "Resumed", second.saved_layer, 2)
    # Rolled back to revision 1 while stopped: its saved layer.
    rollback = _spec(gpuCount=2, rollbackTo={"revision": 1})
    plan = plan_replica_set(_obs(rollback, records=(first, second), layer_root=ROOT,
                                      saved_layers=layers))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert (start.layer, start.record.rollback_of) == (first.saved_layer, 1)
    # Its layer gone: refused, nothing started from the bare image.
    plan = plan_replica_set(_obs(rollback, records=(first, second), layer_root=ROOT,
                                      saved_layers=frozenset({second.saved_layer or ""})))
    assert plan.actions == ()
    assert plan.status.reason == "RevisionDiskGone"


def test_a_created_container_gets_its_layer_before_it_starts() -> None:
    spec = _spec()
    first = _saved(_record(spec))
    second = replace(_record(spec, 2), layer=first.saved_layer)
    created = _mine(spec, id="c2", name="team-a_knock-2", revision=2, status="created",
                    **_on_overlay())
    plan = plan_replica_set(_obs(spec, created, records=(first, second),
                                      saved_layers=frozenset({first.saved_layer or ""})))
    (start,) = plan.actions
    assert isinstance(start, act.StartContainer)
    assert start.layer == first.saved_layer


def test_prune_keeps_the_layer_the_current_revision_started_from() -> None:
    spec = _spec(revisionHistoryLimit=0)
    first = _saved(_record(spec))
    second = replace(_saved(_record(spec, 2), "c2"), layer=first.saved_layer)
    third = replace(_record(spec, 3), layer=second.saved_layer)
    running = _mine(spec, id="c3", name="team-a_knock-3", revision=3, **_on_overlay())
    plan = plan_replica_set(_obs(spec, running, records=(first, second, third),
                                      saved_layers=frozenset({first.saved_layer or "",
                                                              second.saved_layer or ""})))
    pruned = [a.record.revision for a in plan.actions if isinstance(a, act.PruneRevision)]
    assert pruned == [1]


def test_purge_removes_the_saved_layers() -> None:
    spec = _spec()
    first = _saved(_record(spec))
    second = replace(_record(spec, 2), layer=first.saved_layer)
    actions = plan_delete(KEY, (), (first, second), SavedDisks(frozenset()),
                               HistoryPolicy.PURGE)
    (purge,) = actions
    assert isinstance(purge, act.PurgeHistory)
    assert purge.layers == (first.saved_layer,)


def test_a_saved_layer_whose_image_is_gone_is_never_started_bare() -> None:
    old, new = _spec(), _spec(gpuCount=1)
    # Its container was made from a disk committed before (a node that saved with
    # docker commit then), and that image was untagged by hand since.
    committed = preserved_image(KEY, 0)
    record = replace(_saved(_record(old)), image=committed)
    stopped = _mine(old, status="exited", **_on_overlay(image=committed))
    plan = plan_replica_set(_obs(new, stopped, records=(record,), layer_root=ROOT,
                                      saved_layers=frozenset({record.saved_layer or ""})))
    assert plan.actions == ()
    assert plan.status.reason == "RevisionDiskGone"


def test_28_8_a_saved_layer_goes_back_only_over_the_image_id_it_was_made_over() -> None:
    spec = _spec(gpuCount=1)
    first = replace(_saved(_record(spec)), image_id="sha256:old")
    layers = frozenset({first.saved_layer or ""})
    moved = {"img": ImageInfo(id="sha256:new", repo_tags=("img",))}
    # Stopped -> Running after the name was pointed at another image: refused.
    plan = plan_replica_set(_obs(spec, records=(first,), layer_root=ROOT,
                                 saved_layers=layers, images=moved))
    assert plan.actions == ()
    assert plan.status.reason == "ImageChanged"
    # The same with the name back on the image: it starts, and records that ID.
    same = {"img": ImageInfo(id="sha256:old", repo_tags=("img",))}
    plan = plan_replica_set(_obs(spec, records=(first,), layer_root=ROOT,
                                 saved_layers=layers, images=same))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert (start.layer, start.record.image_id) == (first.saved_layer, "sha256:old")
    # An update of a running instance whose image name moved since its container
    # was made: refused before anything stops.
    running = _mine(spec, image_id="sha256:old", **_on_overlay())
    plan = plan_replica_set(_obs(_spec(gpuCount=2), running, records=(_record(spec),),
                                 layer_root=ROOT, images=moved))
    assert not any(isinstance(a, act.StopContainer | act.PreserveDisk) for a in plan.actions)
    assert plan.status.reason == "ImageChanged"
    # A new revision records the ID its image had.
    plan = plan_replica_set(_obs(spec, images=same))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert start.record.image_id == "sha256:old"


def test_a_migrated_instance_starts_on_its_target_as_a_new_revision_from_its_disk() -> None:
    """#23: the record a migration brought (``migrated_from``) is started as the next
    revision, "migrated from A to B", from the disk it ended with on the source; that
    record keeps its saved layer (a rollback to it works). A stopped one records the
    new revision, to start when it runs."""
    spec = _spec(gpuCount=1)
    first = _saved(_record(spec))
    moved = replace(_saved(_record(spec, 2), "c2"), layer=first.saved_layer,
                    container_id="c2", migrated_from="node-a")
    layers = frozenset({first.saved_layer or "", moved.saved_layer or ""})
    plan = plan_replica_set(_obs(spec, records=(first, moved), layer_root=ROOT,
                                 saved_layers=layers, node_name="n1"))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert (start.record.revision, start.record.change_cause) == (
        3, "migrated from node-a to n1")
    assert start.layer == moved.saved_layer == start.record.layer
    assert start.record.migrated_from is None
    # Once it ran here, the new revision is the current one: resumed as any other.
    third = replace(start.record, container_id="c3", saved_layer=f"{ROOT}/uid-1/rev-3-c3",
                    preserved_from="c3")
    plan = plan_replica_set(_obs(spec, records=(first, moved, third), layer_root=ROOT,
                                 saved_layers=layers | {third.saved_layer or ""},
                                 node_name="n1"))
    (start,) = plan.actions
    assert isinstance(start, act.StartRevision)
    assert (start.reason, start.record.revision) == ("Resumed", 3)
    # Stopped when it moved: the new revision is recorded, not started.
    stopped = _spec(gpuCount=1, state="Stopped")
    plan = plan_replica_set(_obs(stopped, records=(first, moved), layer_root=ROOT,
                                 saved_layers=layers, node_name="n1"))
    (record,) = plan.actions
    assert isinstance(record, act.RecordRevision)
    assert (record.record.revision, record.record.layer) == (3, moved.saved_layer)
