"""#25 item 4 in the REST service: a new version of the same spec is a fresh
gpudock.dev/redeploy value, and the answer waits for the new revision
(rest/waiting.py: no new generation tells an annotation-only change apart)."""

from __future__ import annotations

from typing import Any

from gpudock.rest.replica_set_shapes import env_list, shape_info
from gpudock.rest.waiting import DONE, PENDING, replica_set_settled


def _grs(revision: int, *, progressing: str = "False", degraded: str = "AsExpected",
         history: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {},
            "status": {"observedGeneration": 1, "revision": revision, "phase": "Running",
                       "history": [{"revision": r} for r in range(1, revision + 1)]
                       + list(history),
                       "conditions": [
                           {"type": "Progressing", "status": progressing,
                            "reason": "RollingOut"},
                           {"type": "Degraded", "status": "False" if degraded ==
                            "AsExpected" else "True", "reason": degraded}]}}


def test_25_4_an_annotation_only_change_waits_for_the_new_revision() -> None:
    verdict = replica_set_settled(1, "Running", after_revision=2, spec_changed=False)
    assert verdict(_grs(2)) is PENDING  # the old settled status: not yet
    assert verdict(_grs(2, degraded="RevisionDiskGone")) is PENDING  # maybe stale
    assert verdict(_grs(3, progressing="True")) is PENDING
    assert verdict(_grs(3)) == DONE


def test_25_4_a_failed_new_revision_is_the_refusal() -> None:
    verdict = replica_set_settled(1, "Running", after_revision=2, spec_changed=False)
    failed = {"revision": 3, "failed": "ContainerStartFailed: exec format error"}
    assert verdict(_grs(2, history=(failed,))) == "ContainerStartFailed"


def test_25_4_with_a_spec_change_its_conditions_count_at_once() -> None:
    verdict = replica_set_settled(1, "Running", after_revision=2, spec_changed=True)
    assert verdict(_grs(2, degraded="InsufficientGPUs")) == "InsufficientGPUs"
    assert verdict(_grs(2)) is PENDING


def test_25_4_container_version_is_the_agents_not_the_specs() -> None:
    assert env_list(["A=1", "CONTAINER_VERSION=9"]) == [{"name": "A", "value": "1"}]
    info = shape_info("foo", {"env": [{"name": "A", "value": "1"},
                                      {"name": "CONTAINER_VERSION", "value": "1"}]},
                      {}, 4, "2026-12-05 18:00:00", {})
    assert info["config"]["Env"] == ["A=1", "CONTAINER_VERSION=4"]
