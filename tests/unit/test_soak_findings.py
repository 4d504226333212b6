"""Regression tests for what the chaos soak found (docs/reliability.md#soak), each
named after the finding."""

from __future__ import annotations

from typing import Any

from gpudock.core.revision import Revision, layer_let_go

HOME = "/docker/gpudock/layers/u"


def _record(revision: int, **kw: Any) -> Revision:
    base: dict[str, Any] = dict(
        namespace="soak", name="box", revision=revision, uid="u", spec={"image": "img"},
        image="img", container_name=f"soak_box-{revision}", gpus=(), ports=(),
        created_at="t")
    return Revision(**{**base, **kw})


def test_a_revision_resumed_twice_lets_go_of_the_layer_its_first_container_came_from(
        ) -> None:
    # Stopped and started twice (or migrated there and back): the record's `layer`
    # moves from the first saved disk to the second one; the first was named by no
    # record any more and stayed on disk past the history limit and after a Purge.
    before = _record(4, layer=f"{HOME}/rev-4-first", saved_layer=f"{HOME}/rev-4-second")
    after = _record(4, layer=f"{HOME}/rev-4-second", saved_layer=f"{HOME}/rev-4-second")
    assert layer_let_go(before, after, [_record(3, saved_layer=f"{HOME}/rev-3"), after]) \
        == f"{HOME}/rev-4-first"


def test_a_migrated_revision_lets_go_of_the_copy_of_its_starting_layer() -> None:
    before = _record(4, layer=f"{HOME}/migrated-migrated-rev-4-a",
                     saved_layer=f"{HOME}/migrated-rev-4-b")
    after = _record(4, layer=f"{HOME}/migrated-rev-4-b", saved_layer=f"{HOME}/migrated-rev-4-b")
    assert layer_let_go(before, after, [after]) == f"{HOME}/migrated-migrated-rev-4-a"


def test_a_layer_another_record_still_names_is_kept() -> None:
    # Revision 5 was a rollback to 2: it started from revision 2's saved disk, which
    # stays revision 2's.
    before = _record(5, layer=f"{HOME}/rev-2", saved_layer=f"{HOME}/rev-5")
    after = _record(5, layer=f"{HOME}/rev-5", saved_layer=f"{HOME}/rev-5")
    assert layer_let_go(before, after, [_record(2, saved_layer=f"{HOME}/rev-2"), after]) \
        is None


def test_a_new_revision_or_the_same_layer_lets_go_of_nothing() -> None:
    after = _record(6, layer=f"{HOME}/rev-5")
    assert layer_let_go(None, after, [after]) is None
    assert layer_let_go(after, after, [after]) is None
