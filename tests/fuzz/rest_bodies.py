"""The REST API's bodies fuzzed: the POST and PATCH bodies of the replicaSet and volume
routes, drawn from the same schemas its OpenAPI document gives (hypothesis-jsonschema,
seeded), mutated, or of the wrong shape altogether (no JSON, an array, a number, deep
nesting, a NaN, an int64 overflow). Every answer must be the envelope
``{code, msg, data}`` with HTTP 200: code 200 accepted, any other a refusal; never a
500, never a traceback in the service's log."""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpudock.rest import routes
from tests.fuzz import mutations
from tests.fuzz.specs import Kind, valid_specs
from tests.stack.api_process import ApiProcess
from tests.stack.localstack import BUSYBOX_IMAGE, IDLE_COMMAND

TARGET = "fuzzrest"  # a replicaSet made through the API, the PATCH bodies' target
VOLUME = "fuzzvol"  # a volume made through the API, the size PATCH bodies' target
FUZZED = (("POST", routes.RS), ("PATCH", routes.RS + "/{name}"),
          ("PATCH", routes.RS + "/{name}/rollback"), ("POST", routes.RS + "/{name}/commit"),
          ("POST", routes.RS + "/{name}/execute"), ("POST", "/api/v1/volumes"),
          ("PATCH", "/api/v1/volumes/{name}/size"))
# Bodies of no use to any route: not JSON, not an object, too deep, numbers Go's
# decoder refuses.
WRONG_SHAPES: list[bytes] = [
    b"", b" ", b"{", b"}", b"[]", b"[{}]", b'"x"', b"42", b"-1", b"null", b"true",
    b"{}{}", b"not json", b"\xff\xfe\x00", b"\x00", b'{"a":NaN}', b"NaN", b"Infinity",
    b'{"gpuCount": 1e400}', b'{"gpuCount": 9223372036854775808}',
    b'{"gpuCount": -9223372036854775809}', b'{"gpuCount": 1.0}', b'{"size": ["1GB"]}',
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"imageName": "\\ud800"}', b'{"ImageName": "x", "imagename": "y"}',
    json.dumps({"x" * 200_000: 1}).encode(), b"\xef\xbb\xbf{}",
]


@dataclass(frozen=True)
class RestCase:
    index: int
    method: str
    path: str  # the route's path with {name} filled in
    how: str
    raw: bytes


def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    bodies = {(r.method, r.path): r.body for r in routes.ROUTES}
    out = {}
    for key in FUZZED:
        body = bodies[key]
        assert body is not None, key
        out[key] = body.schema()
    return out


def cases(count: int, seed: int) -> list[RestCase]:
    """``count`` bodies spread over the fuzzed routes, the same for the same seed."""
    rng = random.Random(f"{seed}:rest")
    drawn = {key: valid_specs(Kind(key[1], "", True, schema, True), 60, seed)
             for key, schema in schemas().items()}
    out = []
    for index in range(count):
        method, route = FUZZED[index % len(FUZZED)]
        schema = schemas()[(method, route)]
        body = json.loads(json.dumps(rng.choice(drawn[(method, route)])))
        roll = rng.random()
        if roll < 0.2:
            how, raw = "wrong shape", rng.choice(WRONG_SHAPES)
        elif roll < 0.55:
            how, raw = "valid shape", _dumps(_aimed(route, body, rng))
        else:
            how, mutated = mutations.mutate(body, schema, rng, spec_required=False)
            if mutated is mutations.MISSING:
                mutated = None
            raw = _dumps(_aimed(route, mutated, rng) if isinstance(mutated, dict)
                         else mutated)
        name = TARGET if "volumes" not in route else VOLUME
        if rng.random() < 0.3:
            name = rng.choice(["nosuch", "a-b", "ÄÖ", "x" * 300, "%2F"])
        out.append(RestCase(index, method,
                            route.replace("{name}", urllib.parse.quote(name, safe="")), how,
                            raw))
    return out


def _aimed(route: str, body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Creates that run at all run the node's busybox (no registry is reachable); the
    rest name an image no registry has, or a volume of a few MiB."""
    if route == routes.RS and isinstance(body.get("imageName"), str):
        if rng.random() < 0.3:
            body.update(imageName=BUSYBOX_IMAGE, cmd=IDLE_COMMAND)
        else:
            body["imageName"] = "127.0.0.1:9/" + body["imageName"]
        if isinstance(body.get("gpuCount"), int) and rng.random() < 0.7:
            body["gpuCount"] = body["gpuCount"] % 3
    if "size" in body and isinstance(body["size"], str) and rng.random() < 0.5:
        body["size"] = rng.choice(["8MB", "16MB", "12mb", "1KB", "0MB", "20GB"])
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=bool(random.Random(len(str(value))).getrandbits(1)),
                      ).encode("utf-8", errors="surrogatepass")


def run(api: ApiProcess, rest_cases: list[RestCase], count: Callable[[str], None],
        violation: Callable[[str], None]) -> None:
    """Send each body; ``count`` each outcome's label, ``violation`` what may not be."""
    for case in rest_cases:
        try:
            answer = api.request(case.method, case.path, raw=case.raw,
                                 headers={"Content-Type": "application/json"}, timeout=120)
        except OSError as exc:
            violation(f"{case.method} {case.path} ({case.how}): no answer: {exc}")
            count("no answer (VIOLATION)")
            continue
        last = case.path.rsplit("/", 1)[-1]
        route = f"{case.method} {case.path.split('/')[3]}" + (
            f" {last}" if last in ("size", "rollback", "commit", "execute") else "")
        body = answer.body
        if answer.status != 200 or not isinstance(body, dict) \
                or set(body) != {"code", "msg", "data"}:
            violation(f"{case.method} {case.path[:80]} ({case.how}): HTTP {answer.status}: "
                      f"{answer.raw[:300]!r}")
            count(f"{route}: HTTP {answer.status} (VIOLATION)")
            continue
        code = body["code"]
        if answer.reason == "InternalError":  # the service's catch-all: a bug
            violation(f"{case.method} {case.path[:80]} ({case.how}): InternalError "
                      f"(code {code}); body {case.raw[:200]!r}")
        if code == 200:
            count(f"{route}: accepted (200)")
        else:
            count(f"{route}: refused ({code} {answer.reason or '-'})")
