"""``kubectl gpudock logs``: a GpuReplicaSet's container output, streamed by the agent
of its node over TLS (``--stream-port``; its certificate published in the GpuNode).

Nothing is open to anonymous callers: each request carries the caller's own bearer
token, which the API server checks (TokenReview), and the caller must be allowed
``get`` on ``gpureplicasets/log`` of that resource (SubjectAccessReview: the
gpudock-view and gpudock-edit roles grant it, as pods/log is granted). A followed
stream asks both again every RECHECK_SECONDS and ends when either says no (a
withdrawn permission, an expired token), and after --stream-idle-seconds without
output. At most MAX_STREAMS run at once, each reading Docker on a thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import Any

from aiohttp import web

from gpudock.adapters import stream_tls
from gpudock.adapters.docker.containers import LogChunks
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import Reviews
from gpudock.agent.exec_stream import ExecStreams
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.errors import GpudockError
from gpudock.settings import Settings

logger = logging.getLogger(__name__)
RECHECK_SECONDS = 60.0
MAX_STREAMS = 16


class LogStreams:
    def __init__(self, settings: Settings, docker: DockerRuntime, reviews: Reviews) -> None:
        self._settings = settings
        self._docker = docker
        self._reviews = reviews
        self._slots = threading.BoundedSemaphore(MAX_STREAMS)
        self._runner: web.AppRunner | None = None

    async def start(self) -> dict[str, Any]:
        """Serve; what the GpuNode publishes (url, caBundle)."""
        settings = self._settings
        cert = await asyncio.to_thread(stream_tls.make, settings.state_dir / "stream",
                                       settings.stream_address)
        app = web.Application()
        app.router.add_get("/logs/{namespace}/{name}", self._logs)
        # kubectl gpudock exec -i/-t: the same endpoint, checks and slots (exec_stream.py)
        app.router.add_get("/exec/{namespace}/{name}", ExecStreams(
            settings, self._permitted_to, self._current, self._slots, MAX_STREAMS).handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, settings.stream_address, settings.stream_port,
                          ssl_context=cert.context).start()
        url = f"https://{settings.stream_address}:{settings.stream_port}"
        logger.info("log streams at %s", url)
        return {"url": url, "caBundle": cert.pem}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _permitted(self, token: str, namespace: str, name: str) -> str | None:
        """None when the token's user may read the logs; else why not."""
        return await self._permitted_to(token, "get", "log", namespace, name)

    async def _permitted_to(self, token: str, verb: str, subresource: str, namespace: str,
                            name: str) -> str | None:
        """None when the token's user may ``verb`` gpureplicasets/``subresource``."""
        found = await asyncio.to_thread(self._reviews.user_of, token)
        if found is None:
            return "the token is not valid (TokenReview)"
        user, groups, _ = found
        if not await asyncio.to_thread(self._reviews.allowed, user, groups, verb,
                                       "gpureplicasets", subresource, namespace, name):
            role = "gpudock-view" if verb == "get" else "gpudock-edit"
            return (f"user {user!r} may not {verb} gpureplicasets/{subresource} of "
                    f"{namespace}/{name} (a role such as {role} grants it)")
        return None

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not token:
            return web.Response(status=401, text="a bearer token is required\n")
        try:
            refused = await self._permitted(token, namespace, name)
        except GpudockError as exc:
            return web.Response(status=503, text=f"cannot check the caller: {exc}\n")
        if refused is not None:
            return web.Response(status=401 if "token" in refused else 403,
                                text=f"{refused}\n")
        container = await asyncio.to_thread(self._current, ResourceKey(namespace, name))
        if container is None:
            return web.Response(status=404, text=f"gpureplicaset {namespace}/{name} has no "
                                f"container on node {self._settings.node_name}\n")
        follow = request.query.get("follow") == "1"
        tail = int(request.query["tail"]) if request.query.get("tail") else None
        until = container.started_at if request.query.get("previous") == "1" else None
        if not self._slots.acquire(blocking=False):
            return web.Response(status=429, text=f"{MAX_STREAMS} streams run already\n")
        stopped = threading.Event()
        chunks: LogChunks | None = None
        try:  # the slot and Docker's stream are given back however this ends
            chunks = await asyncio.to_thread(self._docker.logs, container.id, follow=follow,
                                             tail=tail, until=until)
            response = web.StreamResponse(
                headers={"Content-Type": "text/plain; charset=utf-8"})
            await response.prepare(request)
            queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
            threading.Thread(target=self._read, daemon=True, name="gpudock-logs", args=(
                chunks, queue, asyncio.get_running_loop(), stopped)).start()
            await self._relay(queue, response, token, namespace, name)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        finally:
            stopped.set()
            if chunks is not None:
                chunks.close()  # ends a follow that waits on a silent container
            self._slots.release()

    async def _relay(self, queue: asyncio.Queue[bytes | None], response: web.StreamResponse,
                     token: str, namespace: str, name: str) -> None:
        """Docker's chunks to the caller until the stream ends, the caller's permission
        is gone (checked again every RECHECK_SECONDS) or nothing came for the idle
        timeout."""
        idle = self._settings.stream_idle_seconds
        checked = last_output = time.monotonic()
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), timeout=min(idle, RECHECK_SECONDS))
            except TimeoutError:
                chunk = b""
            if chunk is None:
                return
            now = time.monotonic()
            if now - checked >= RECHECK_SECONDS:
                checked = now
                refused = await self._permitted(token, namespace, name)
                if refused is not None:
                    await response.write(f"\n(gpudock: stream ended: {refused})\n".encode())
                    return
            if chunk:
                last_output = now
                await response.write(chunk)
            elif now - last_output >= idle:
                await response.write(b"\n(gpudock: stream ended: idle)\n")
                return

    @staticmethod
    def _read(chunks: LogChunks, queue: asyncio.Queue[bytes | None],
              loop: asyncio.AbstractEventLoop, stopped: threading.Event) -> None:
        """Docker's chunks into the queue, then None, on this stream's own thread; it
        stops as soon as the caller's side has (nothing reads the queue then: a full
        one is never waited on past that)."""

        def offer(item: bytes | None) -> bool:
            put = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            while not stopped.is_set():
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    put.result(timeout=1.0)
                    return True
            put.cancel()
            return False

        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
        except Exception as exc:
            logger.debug("log stream ended: %s", exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            offer(None)

    def _current(self, key: ResourceKey) -> ObservedContainer | None:
        mine = [c for c in self._docker.list_containers()
                if c.owner == key and c.node in ("", self._settings.node_name)]
        return max(mine, key=lambda c: c.revision, default=None)
