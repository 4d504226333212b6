"""#25 item 2: the REST service's wire rules as pure functions: gin's lenient body
decoding, Go's JSON bytes, gin's CORS headers, names, times and sizes."""

from __future__ import annotations

import pytest

from gpudock.rest import names
from gpudock.rest.decoding import BodyError, decode_body
from gpudock.rest.routes import PATCH, ROLLBACK, RUN
from gpudock.rest.wire import cors_headers, go_json


def test_25_2_keys_match_case_insensitively_and_unknown_keys_are_ignored() -> None:
    body = decode_body(b'{"ImageName": "a", "REPLICASETNAME": "b", "other": [1], '
                       b'"gpucount": 2, "Binds": [{"SRC": "/x", "Dest": "/y"}]}', RUN)
    assert body["imageName"] == "a"
    assert body["replicaSetName"] == "b"
    assert body["gpuCount"] == 2
    assert body["binds"] == [{"src": "/x", "dest": "/y"}]
    assert body["env"] == []
    assert body["cmd"] == []


def test_25_2_an_exact_key_or_the_last_one_wins_and_null_is_the_zero_value() -> None:
    assert decode_body(b'{"gpuCount": 1, "GPUCOUNT": 3}', RUN)["gpuCount"] == 3
    assert decode_body(b'{"gpuCount": null, "imageName": null}', RUN)["gpuCount"] == 0
    assert decode_body(b"null", RUN)["imageName"] == ""


def test_25_2_only_the_first_json_value_is_read() -> None:
    assert decode_body(b'{"version": 2} trailing', ROLLBACK)["version"] == 2


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"not json", b"[]", b'"text"', b'{"version": "2"}', b'{"version": 1.5}',
    b'{"version": true}', b'{"version": 9223372036854775808}', b'{"version": NaN}',
    b"\xff\xfe",
])
def test_25_2_a_wrong_type_or_no_json_is_a_body_error(raw: bytes) -> None:
    with pytest.raises(BodyError):
        decode_body(raw, ROLLBACK)


def test_25_2_struct_pointers_are_none_when_absent() -> None:
    body = decode_body(b'{"gpuPatch": {"gpuCount": 1}, "volumePatch": {"newBind": null}}',
                       PATCH)
    assert body["gpuPatch"] == {"gpuCount": 1}
    assert body["volumePatch"] == {"oldBind": None, "newBind": None}
    assert decode_body(b"{}", PATCH) == {"gpuPatch": None, "volumePatch": None}
    with pytest.raises(BodyError):
        decode_body(b'{"gpuPatch": [1]}', PATCH)


def test_25_2_json_is_compact_with_html_escaped_as_go_writes_it() -> None:
    assert go_json({"a": "<b>&", "c": None, "d": "é"}) == \
        '{"a":"\\u003cb\\u003e\\u0026","c":null,"d":"é"}'.encode()


def test_25_2_cors_headers_are_gins() -> None:
    assert cors_headers(None, "GET") == {}
    echoed = cors_headers("http://ui", "GET")
    assert echoed["Access-Control-Allow-Origin"] == "http://ui"
    assert echoed["Access-Control-Allow-Credentials"] == "true"
    assert cors_headers("http://ui", "OPTIONS")["Access-Control-Allow-Origin"] == "*"


def test_25_3_go_names_kubernetes_does_not_take_get_a_derived_name() -> None:
    assert names.object_name("foo") == "foo"
    derived = names.object_name("Foo_Bar")
    assert derived.startswith("foo")
    assert "-" in derived
    assert derived != names.object_name("foo_bar")
    assert len(names.object_name("a" * 300)) <= 253
    assert names.base_name("bar-2") == "bar"
    assert names.base_name("bar") == "bar"


def test_25_2_times_and_sizes_as_the_go_service_writes_them() -> None:
    assert names.go_time("2026-12-05T13:12:11Z") == "2026-12-05 13:12:11"
    assert names.go_size_bytes("20gb") == 20 * 1024**3
    assert names.go_size_bytes("20GiB") is None
    assert names.go_size_bytes("GB") is None
    assert names.go_size(20 * 1024**3) == "20GB"
    assert not names.has_go_unit("5")
