"""Revision records as the stores keep them (Revision.to_json / from_json): a refused
revision's reason and message are fields; a record written before they were (its
``failed`` is the text "Reason: message") is read into them once, when it is read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpudock.api.reasons import Reason
from gpudock.core.revision import Revision, legacy_failure


def _record(**kw: Any) -> Revision:
    base: dict[str, Any] = dict(
        namespace="team-a", name="box", revision=2, uid="u", spec={"image": "img"},
        image="img", container_name="team-a_box-2", gpus=(), ports=(), created_at="t")
    return Revision(**{**base, **kw})


@pytest.mark.parametrize(("text", "expected"), [
    ("CommandNotFound: exec: \"jupyter\": not found",
     (Reason.COMMAND_NOT_FOUND, "exec: \"jupyter\": not found")),
    ("ContainerStartFailed: start x: a: b", (Reason.CONTAINER_START_FAILED, "start x: a: b")),
    ("HostPortInUse: ", (Reason.HOST_PORT_IN_USE, "")),
    (None, (None, "")),
    ("", (None, "")),
    # Never written so: kept whole under the default reason.
    ("Something odd", (Reason.CONTAINER_START_FAILED, "Something odd")),
])
def test_the_legacy_failed_text_is_parsed_once_into_fields(
        text: str | None, expected: tuple[Reason | None, str]) -> None:
    assert legacy_failure(text) == expected


def test_a_record_of_an_older_agent_reads_as_before() -> None:
    new = json.loads(_record().to_json())
    for key in ("failed_reason", "failed_message"):
        del new[key]
    new["failed"] = "CommandNotFound: exec: jupyter not found"
    read = Revision.from_json(json.dumps(new))
    assert (read.failed_reason, read.failed_message) == (Reason.COMMAND_NOT_FOUND,
                                                         "exec: jupyter not found")
    assert read.failed
    # What status.history shows is the text the older agent showed.
    assert read.summary().failed == "CommandNotFound: exec: jupyter not found"
    del new["failed"]
    assert not Revision.from_json(json.dumps(new)).failed


def test_a_refused_revision_round_trips_as_fields() -> None:
    record = _record(failed_reason=Reason.HOST_PATH_MISSING,
                     failed_message="start x: bind source path does not exist: /a: b")
    stored = json.loads(record.to_json())
    assert stored["failed_reason"] == "HostPathMissing"
    assert stored["failed_message"] == "start x: bind source path does not exist: /a: b"
    # Still written for an agent older than the fields (never read back by this one).
    assert stored["failed"] == "HostPathMissing: start x: bind source path does not " \
        "exist: /a: b"
    again = Revision.from_json(record.to_json())
    assert again == record
    stored["failed"] = "CommandNotFound: not what the fields say"
    assert Revision.from_json(json.dumps(stored)) == record
    ok = _record()
    assert Revision.from_json(ok.to_json()) == ok
    assert not ok.failed
    assert ok.summary().failed is None


def test_a_reason_this_agent_does_not_know_is_kept_in_the_message() -> None:
    stored = json.loads(_record().to_json())
    stored.update(failed_reason="SomethingNew", failed_message="why")
    read = Revision.from_json(json.dumps(stored))
    assert (read.failed_reason, read.failed_message) == (Reason.CONTAINER_START_FAILED,
                                                         "SomethingNew: why")
