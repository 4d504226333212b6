"""#23: after the switch, the GpuMigration says why the target does not run the
instance yet (its Ready condition there), not only that it waits; the binding moves
only while the instance still wants that node (review finding)."""
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gpudock.agent.migration_context import (
    MigrationContext,
    SwitchRefusedError,
    precise_now,
    seconds,
)
from gpudock.agent.migration_switch import Switch, _not_ready
from gpudock.api.gpu_migration import made_before
from gpudock.core.observed import ResourceKey
from gpudock.crash_points import CrashPoints


def test_23_the_wait_for_the_target_names_what_the_target_says() -> None:
    waiting = {"conditions": [{"type": "Ready", "status": "False",
                               "reason": "InsufficientGPUs",
                               "message": "needs 2 GPUs; 0 of 1 on node b are free"}]}
    assert _not_ready(waiting) == \
        "InsufficientGPUs: needs 2 GPUs; 0 of 1 on node b are free"
    # The source's own Migrating condition, or nothing yet: the target said nothing.
    assert _not_ready({"conditions": [{"type": "Ready", "status": "False",
                                       "reason": "Migrating", "message": "moving"}]}) == ""
    assert _not_ready({}) == ""
    assert _not_ready({"conditions": [{"type": "Ready", "status": "True",
                                       "reason": "Running"}]}) == ""


class _Kube:
    """get / patch_status_at of one GpuReplicaSet (what Switch._bind uses)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.patched: list[dict[str, Any]] = []

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.body

    def patch_status_at(self, plural: str, namespace: str, name: str,
                        status: dict[str, Any], version: str) -> None:
        self.patched.append(status)


def _switch(body: dict[str, Any]) -> tuple[Switch, _Kube]:
    kube = _Kube(body)
    agent = cast(MigrationContext, SimpleNamespace(kube=kube, now=lambda: "now"))
    return Switch(agent, CrashPoints(()), lambda uid: None), kube


def _grs(spec_node: str | None, bound: str | None) -> dict[str, Any]:
    return {"metadata": {"uid": "u-1", "resourceVersion": "7"},
            "spec": {"nodeName": spec_node} if spec_node else {},
            "status": {"nodeName": bound} if bound else {}}


MIGRATION = {"replicaSetUID": "u-1", "sourceNode": "a", "targetNode": "b"}


def test_23_the_binding_moves_only_while_the_instance_still_wants_that_node() -> None:
    for body in (_grs("b", None), _grs(None, "a"), _grs("b", "a")):
        switch, kube = _switch(body)
        assert switch._bind(ResourceKey("ns", "lab"), "b", dict(MIGRATION)) is body
        assert kube.patched[-1]["nodeName"] == "b"
    # spec.nodeName set back to a (or to a third node) during the move; or another
    # migration bound it elsewhere meanwhile: refused, nothing written.
    for body, said in ((_grs("a", None), "changed to a"), (_grs("c", "a"), "changed to c"),
                       (_grs(None, "c"), "bound to node c")):
        switch, kube = _switch(body)
        with pytest.raises(SwitchRefusedError, match=said):
            switch._bind(ResourceKey("ns", "lab"), "b", dict(MIGRATION))
        assert kube.patched == []


def test_23_of_two_migrations_of_one_instance_at_once_the_earlier_goes_first() -> None:
    first = {"metadata": {"name": "m-2", "creationTimestamp": "2026-12-05T10:00:00Z"}}
    second = {"metadata": {"name": "m-1", "creationTimestamp": "2026-12-05T10:00:01Z"}}
    same_second = {"metadata": {"name": "m-3", "creationTimestamp": "2026-12-05T10:00:00Z"}}
    assert made_before(first, second)
    assert not made_before(second, first)
    assert made_before(first, same_second)  # the same second: by name
    assert not made_before(same_second, first)


def test_23_the_stop_is_stamped_to_the_millisecond_for_downtime_seconds() -> None:
    """(from the migration benchmark) stoppedAt to the whole second made
    downtimeSeconds read up to a second high."""
    stamp = precise_now()
    assert len(stamp) == len("2026-12-06T02:20:39.227Z")
    assert abs(seconds(stamp) - time.time()) < 1.0
    assert seconds("2026-12-06T02:20:39.227Z") - seconds("2026-12-06T02:20:39Z") == \
        pytest.approx(0.227)
