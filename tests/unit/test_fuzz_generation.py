"""The fuzz's specs (tests/fuzz) are the same for the same seed, so a printed seed
replays a run; mutations touch what they say and enum values are all sent."""

from __future__ import annotations

import json

from tests.fuzz import mutations, specs


def test_the_same_seed_draws_the_same_specs_and_another_seed_others() -> None:
    kind = specs.load_kinds()["SizedVolume"]
    first = [json.dumps(c.spec, sort_keys=True, default=repr) for c in specs.cases(kind, 6, 5)]
    again = [json.dumps(c.spec, sort_keys=True, default=repr) for c in specs.cases(kind, 6, 5)]
    other = [json.dumps(c.spec, sort_keys=True, default=repr) for c in specs.cases(kind, 6, 6)]
    assert first == again
    assert first != other


def test_every_enum_value_of_a_kind_is_sent_once_on_a_valid_spec() -> None:
    kind = specs.load_kinds()["GpuNode"]
    sent = [c for c in specs.cases(kind, 6, 1) if c.how.startswith("enum ")]
    assert sorted(c.spec["taints"][0]["effect"] for c in sent) == [
        "NoExecute", "NoSchedule", "PreferNoSchedule"]


def test_an_absent_required_field_is_absent_and_a_wrong_type_is_set_where_it_says() -> None:
    spec = {"replicaSetName": "a", "command": ["x"], "env": [{"name": "N", "value": "v"}]}
    schema = specs.load_kinds()["ExecRequest"].schema
    assert mutations.delete_at(json.loads(json.dumps(spec)), ("env", 0, "name")) == {
        "replicaSetName": "a", "command": ["x"], "env": [{"value": "v"}]}
    assert mutations.set_at(json.loads(json.dumps(spec)), ("timeoutSeconds",), "12",
                            schema)["timeoutSeconds"] == "12"
    assert mutations.set_at({}, ("env", 0, "name"), 7, schema) == {"env": [{"name": 7}]}
