"""The bytes on the wire as gin writes them: compact JSON, HTML characters escaped,
``application/json; charset=utf-8``; gin's CORS answers and its plain-text 404."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

JSON_TYPE = "application/json; charset=utf-8"
NOT_FOUND_TEXT = b"404 page not found"

# What the Go service's CORS middleware sets (internal/routers/cors.go).
WITH_ORIGIN = {
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE,UPDATE",
    "Access-Control-Allow-Headers": "Authorization, Content-Length, X-CSRF-Token, Token,session",
    "Access-Control-Expose-Headers": "Content-Length, Access-Control-Allow-Origin, "
                                     "Access-Control-Allow-Headers",
    "Access-Control-Max-Age": "172800",
    "Access-Control-Allow-Credentials": "true",
}
PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Content-Type,AccessToken,X-CSRF-Token, Authorization",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Expose-Headers": "Content-Length, Access-Control-Allow-Origin, "
                                     "Access-Control-Allow-Headers, Content-Type",
    "Access-Control-Allow-Credentials": "true",
}


def go_json(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def json_response(value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(go_json(value), status_code=200, media_type=JSON_TYPE, headers=headers)


def not_found() -> Response:
    return Response(NOT_FOUND_TEXT, status_code=404, media_type="text/plain")


def cors_headers(origin: str | None, method: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if origin:
        headers = {"Access-Control-Allow-Origin": origin, **WITH_ORIGIN}
    if method == "OPTIONS":
        headers.update(PREFLIGHT)
    return headers
