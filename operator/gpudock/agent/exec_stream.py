"""``kubectl gpudock exec -i/-t NAME -- COMMAND``: an interactive command in a
GpuReplicaSet's container, served by the agent of its node on the TLS endpoint of the
log streams (log_stream.py, ``--stream-port``), as a WebSocket of frames
(adapters/exec_wire.py): stdin and resizes in, output and at last the exit code out.

Checked as logs are, before anything runs: the caller's bearer token (TokenReview)
and their permission to ``create`` ``gpureplicasets/exec`` of that resource
(SubjectAccessReview: gpudock-edit grants it, as pods/exec is granted; gpudock-view
does not). Both are asked again every RECHECK_SECONDS; a session ends when either
says no, after --stream-idle-seconds without a byte either way, or when the caller
goes: then what the command started is killed. Sessions count against the streams'
MAX_STREAMS; each reads Docker on a thread of its own and writes on another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from gpudock.adapters import exec_wire
from gpudock.adapters.container_tty import STDERR, TtySession
from gpudock.adapters.exec_wire import FrameType
from gpudock.core.observed import ObservedContainer, ResourceKey
from gpudock.errors import GpudockError, TransientError
from gpudock.settings import Settings

logger = logging.getLogger(__name__)
RECHECK_SECONDS = 60.0
END_GRACE_SECONDS = 10.0  # for the output to end once the command is killed
PROBLEM_HEADER = "X-Gpudock-Problem"  # a refusal's reason (the WebSocket's client
# reads no body of a refused handshake)

Permitted = Callable[[str, str, str, str, str], Awaitable[str | None]]
# (token, verb, subresource, namespace, name) -> None, or why not


def _refusal(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=f"{text}\n",
                        headers={PROBLEM_HEADER: text.encode("ascii", "replace").decode()})


class ExecStreams:
    def __init__(self, settings: Settings, permitted: Permitted,
                 current: Callable[[ResourceKey], ObservedContainer | None],
                 slots: threading.BoundedSemaphore, max_streams: int) -> None:
        self._settings = settings
        self._permitted = permitted
        self._current = current
        self._slots = slots
        self._max = max_streams

    async def handle(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        command = request.query.getall("command", [])
        tty, stdin = request.query.get("tty") == "1", request.query.get("stdin") == "1"
        if not token:
            return _refusal(401, "a bearer token is required")
        if not command:
            return _refusal(400, "no command")
        try:
            problem = await self._permitted(token, "create", "exec", namespace, name)
        except GpudockError as exc:
            return _refusal(503, f"cannot check the caller: {exc}")
        if problem is not None:
            return _refusal(401 if "token" in problem else 403, problem)
        container = await asyncio.to_thread(self._current, ResourceKey(namespace, name))
        if container is None or container.status != "running":
            how = container.status if container else "missing"
            return _refusal(409 if container else 404, f"the container of gpureplicaset "
                           f"{namespace}/{name} is {how} on node {self._settings.node_name}")
        if not self._slots.acquire(blocking=False):
            return _refusal(429, f"{self._max} streams run already")
        try:
            try:
                session = await asyncio.to_thread(
                    TtySession, self._settings.docker_host, container.id, command,
                    tty=tty, stdin=stdin, mark=f"tty-{uuid.uuid4()}")
            except GpudockError as exc:  # the container stopped meanwhile; Docker down
                return _refusal(503 if isinstance(exc, TransientError) else 409,
                                f"cannot start the command: {exc}")
            socket = web.WebSocketResponse(max_msg_size=exec_wire.MAX_PAYLOAD + 1)
            await socket.prepare(request)
            logger.info("exec session in %s/%s (tty %s, stdin %s)", namespace, name, tty,
                        stdin)
            await _Session(session, socket, self._settings.stream_idle_seconds,
                           lambda: self._permitted(token, "create", "exec", namespace,
                                                   name)).run()
            return socket
        finally:
            self._slots.release()


class _Session:
    """One caller's session: Docker's output read on a thread, stdin and resizes
    written on another, the WebSocket served on the event loop."""

    def __init__(self, session: TtySession, socket: web.WebSocketResponse, idle: float,
                 recheck: Callable[[], Awaitable[str | None]]) -> None:
        self._docker = session
        self._socket = socket
        self._idle = idle
        self._recheck = recheck
        self._output: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=64)
        # Bounded both ways: a caller who sends faster than the command reads waits
        # (the WebSocket is not read meanwhile), as does a command whose caller reads slowly.
        self._input: asyncio.Queue[tuple[FrameType, bytes] | None] = asyncio.Queue(maxsize=64)
        self._active = time.monotonic()
        self._closed = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), daemon=True,
                         name="gpudock-exec-out").start()
        threading.Thread(target=self._write, args=(loop,), daemon=True,
                         name="gpudock-exec-in").start()
        caller = asyncio.create_task(self._from_caller())
        try:
            ended = await self._to_caller(caller)
            if ended is not None:  # cut short: kill, then the output ends
                await self._notice(f"session ended: {ended}")
                await asyncio.to_thread(self._docker.kill)
                await self._drain(END_GRACE_SECONDS)
            if not self._socket.closed:
                code = await self._exit_code()
                caller.cancel()
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._socket.send_bytes(exec_wire.exit_frame(code))
                    await self._socket.close()
        finally:
            caller.cancel()
            self._closed = True
            await asyncio.to_thread(self._docker.close)  # the threads' socket calls end
            for pending in (self._input, self._output):  # a thread waiting to put goes on
                while not pending.empty():
                    pending.get_nowait()
            self._input.put_nowait(None)

    async def _to_caller(self, caller: asyncio.Task[None]) -> str | None:
        """Output to the caller until it ends (None); else why the session was cut."""
        checked = time.monotonic()
        while True:
            getting = asyncio.ensure_future(self._output.get())
            done, _ = await asyncio.wait({getting, caller},
                                         timeout=min(self._idle, RECHECK_SECONDS),
                                         return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
            if caller in done:
                return "the caller left"
            now = time.monotonic()
            if getting in done:
                item = getting.result()
                if item is None:
                    return None
                self._active = now
                stream, chunk = item
                kind = FrameType.STDERR if stream == STDERR else FrameType.STDOUT
                for at in range(0, len(chunk), exec_wire.MAX_PAYLOAD):
                    await self._socket.send_bytes(
                        exec_wire.encode(kind, chunk[at:at + exec_wire.MAX_PAYLOAD]))
            if now - checked >= RECHECK_SECONDS:
                checked = now
                try:
                    problem = await self._recheck()
                except GpudockError as exc:  # never longer than what can be checked
                    problem = f"cannot check the caller: {exc}"
                if problem is not None:
                    return problem
            if now - self._active >= self._idle:
                return f"idle for {self._idle:.0f}s"

    async def _from_caller(self) -> None:
        """The caller's frames into the writer's queue, until the caller closes."""
        async for message in self._socket:
            if message.type != WSMsgType.BINARY:
                continue
            try:
                frame = exec_wire.decode(message.data)
            except exec_wire.FrameError as exc:
                logger.debug("exec session: a bad frame: %s", exc)
                continue
            if frame.type in (FrameType.STDIN, FrameType.RESIZE):
                self._active = time.monotonic()
                await self._input.put((frame.type, frame.payload))

    async def _notice(self, text: str) -> None:
        if not self._socket.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._socket.send_bytes(exec_wire.encode(
                    FrameType.STDERR, f"\r\n(gpudock: {text})\r\n".encode()))

    async def _drain(self, seconds: float) -> None:
        """Drop the output until it ends (the command is gone), at most ``seconds``."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            while await asyncio.wait_for(self._output.get(),
                                         max(deadline - time.monotonic(), 0.01)) is not None:
                pass

    async def _exit_code(self) -> int:
        """The command's exit code once Docker has it (the output has ended)."""
        deadline = time.monotonic() + END_GRACE_SECONDS
        while True:
            running, code, _ = await asyncio.to_thread(self._docker.state)
            if (not running and code is not None) or time.monotonic() > deadline:
                return 137 if code is None else code  # as a killed command's
            await asyncio.sleep(0.05)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for item in self._docker.output():
                asyncio.run_coroutine_threadsafe(self._output.put(item), loop).result()
                if self._closed:
                    return
        except RuntimeError as exc:  # the loop closed
            logger.debug("exec output ended: %s", exc)
        finally:
            if not self._closed:
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(self._output.put(None), loop)

    def _write(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._closed:
            try:
                item = asyncio.run_coroutine_threadsafe(self._input.get(), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):  # the loop closed
                return
            if item is None:
                return
            kind, payload = item
            try:
                if kind == FrameType.RESIZE:
                    self._docker.resize(*exec_wire.size_of(exec_wire.Frame(kind, payload)))
                elif payload:
                    self._docker.write(payload)
                else:
                    self._docker.close_stdin()
            except GpudockError as exc:
                logger.debug("exec input: %s", exc)
