"""The application: gin's wire rules (wire.py), every endpoint of the Go service's
v0.0.3 (routes.py) with its caller checked first, its body decoded the lenient way,
its work done on a thread (it waits for the agent), and any failure answered with
the endpoint's own code."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio.to_thread
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gpudock import __version__
from gpudock.rest.codes import REASON_HEADER, Code, RefusalError, envelope
from gpudock.rest.context import ApiContext, log
from gpudock.rest.decoding import BodyError, decode_body
from gpudock.rest.names import object_name
from gpudock.rest.routes import ROUTES, Route
from gpudock.rest.wire import cors_headers, json_response, not_found


def _handler(ctx: ApiContext, route: Route) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        name = request.path_params.get("name")
        try:
            caller = await run_in_threadpool(ctx.gate.caller, request.headers)
            await run_in_threadpool(ctx.gate.allow, caller, route.verb, route.resource,
                                    object_name(name) if name else None,
                                    cluster=route.resource == "gpunodes")
            body = None
            if route.body is not None:
                try:
                    body = decode_body(await request.body(), route.body)
                except BodyError as exc:
                    raise RefusalError(Code.INVALID_PARAMS, "InvalidBody", str(exc)) from exc
            data = await run_in_threadpool(route.operation, ctx, caller, name or "", body,
                                           dict(request.query_params))
            return json_response(envelope(Code.SUCCESS, data))
        except RefusalError as refusal:
            log.info("%s %s: %s", request.method, request.url.path, refusal)
            return json_response(envelope(refusal.code), {REASON_HEADER: refusal.why})
        except Exception:  # never a crash, never a 500: the endpoint's failure code
            log.exception("%s %s", request.method, request.url.path)
            return json_response(envelope(route.failure), {REASON_HEADER: "InternalError"})
    return handle


# Threads for the calls' work: each change holds one while it waits for the agent (up
# to --wait-seconds), so the default 40 would let 40 slow creates stall every GET.
THREADS = 256


@contextlib.asynccontextmanager
async def _threads(app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    yield


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="gpudock api (gpu-docker-api v0.0.3)", version=__version__,
                  docs_url=None, redoc_url=None, lifespan=_threads)

    @app.middleware("http")
    async def cors(request: Request,
                   call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        headers = cors_headers(request.headers.get("origin"), request.method)
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=headers)
        response = await call_next(request)
        response.headers.update(headers)
        return response

    @app.exception_handler(HTTPException)
    async def unknown(request: Request, exc: HTTPException) -> Response:
        # gin answers an unknown path and a known path's wrong method alike: 404.
        return not_found()

    @app.get("/ping", include_in_schema=False)
    async def ping() -> Response:
        return json_response({"message": "pong"})

    for route in ROUTES:
        app.add_api_route(route.path, _handler(ctx, route), methods=[route.method],
                          summary=route.summary, operation_id=route.operation_id,
                          openapi_extra=route.openapi_extra(),
                          response_class=Response)
    return app
