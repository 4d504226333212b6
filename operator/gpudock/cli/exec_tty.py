"""``kubectl gpudock exec -i/-t NAME -- COMMAND``: an interactive command in a
GpuReplicaSet's container, through the agent of its node (agent/exec_stream.py): a
WebSocket over TLS verified against the certificate its GpuNode publishes, carrying
the caller's own bearer token; the frames are adapters/exec_wire.py's.

With -t and -i on a terminal, the local terminal is put in raw mode (restored on
exit, whatever ends the session): every key, Ctrl-C and Ctrl-D included, goes to the
command as a byte, and the terminal's size is sent at the start and on every
SIGWINCH. Exits with the command's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import sys
import termios
import threading
import tty as terminal
from collections.abc import Iterator, Sequence
from typing import TextIO
from urllib.parse import urlencode

import aiohttp

from gpudock.adapters import exec_wire
from gpudock.adapters.exec_wire import FrameType
from gpudock.adapters.kube_api import KubeApi
from gpudock.cli.log_command import endpoint

PROBLEM_HEADER = "X-Gpudock-Problem"  # agent/exec_stream.py's
READ_SIZE = 32 * 1024


def exec_interactive(kube: KubeApi, namespace: str, name: str, command: Sequence[str],
                     *, stdin: bool, tty: bool, out: TextIO, err: TextIO,
                     source: TextIO | None = None) -> int:
    source = sys.stdin if source is None else source
    found = endpoint(kube, namespace, name, "exec -i/-t", err)
    if found is None:
        return 1
    node, stream, token = found
    fd = source.fileno()
    raw = tty and stdin and os.isatty(fd)
    if tty and stdin and not raw:
        print("Unable to use a TTY - input is not a terminal", file=err)
        tty = False
    query = urlencode([("command", word) for word in command]
                      + [("stdin", "1" if stdin else "0"), ("tty", "1" if tty else "0")])
    url = f"{stream['url']}/exec/{namespace}/{name}?{query}"
    context = ssl.create_default_context(cadata=str(stream["caBundle"]))
    with _raw_mode(fd if raw else None):
        try:
            return asyncio.run(_session(url, token, context, fd if stdin else None,
                                        tty, out, err))
        except aiohttp.WSServerHandshakeError as exc:
            problem = (exc.headers.get(PROBLEM_HEADER) if exc.headers else None) or exc.message
            print(f"error: {exc.status}: {problem}", file=err)
        except (aiohttp.ClientError, OSError) as exc:
            print(f"error: cannot reach the agent of node {node} at {stream['url']}: {exc}",
                  file=err)
    return 1


@contextlib.contextmanager
def _raw_mode(fd: int | None) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (None: nothing to do), restored after."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        terminal.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _size(fd: int) -> tuple[int, int] | None:
    try:
        columns, rows = os.get_terminal_size(fd)
    except OSError:
        return None
    return rows, columns


def _write(stream: TextIO, data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


async def _session(url: str, token: str, context: ssl.SSLContext, stdin_fd: int | None,
                   tty: bool, out: TextIO, err: TextIO) -> int:
    loop = asyncio.get_running_loop()
    outgoing: asyncio.Queue[bytes] = asyncio.Queue()
    async with aiohttp.ClientSession() as client, client.ws_connect(
            url, headers={"Authorization": f"Bearer {token}"}, ssl=context,
            max_msg_size=exec_wire.MAX_PAYLOAD + 1, autoping=True) as socket:
        if tty:
            try:
                size_fd = stdin_fd if stdin_fd is not None else out.fileno()
            except (OSError, ValueError):  # no terminal's size to send
                size_fd = -1

            def resized() -> None:
                size = _size(size_fd)
                if size is not None:
                    outgoing.put_nowait(exec_wire.resize(*size))

            resized()  # the size at the start
            loop.add_signal_handler(signal.SIGWINCH, resized)
        if stdin_fd is not None:
            threading.Thread(target=_read_stdin, args=(stdin_fd, outgoing, loop),
                             daemon=True, name="gpudock-exec-stdin").start()

        async def send() -> None:
            while True:
                await socket.send_bytes(await outgoing.get())

        sender = asyncio.create_task(send())
        try:
            async for message in socket:
                if message.type != aiohttp.WSMsgType.BINARY:
                    continue
                frame = exec_wire.decode(message.data)
                if frame.type == FrameType.STDOUT:
                    _write(out, frame.payload)
                elif frame.type == FrameType.STDERR:
                    _write(err, frame.payload)
                elif frame.type == FrameType.EXIT:
                    return exec_wire.code_of(frame)
        finally:
            sender.cancel()
            if tty:
                loop.remove_signal_handler(signal.SIGWINCH)
    print("\r\nerror: the session ended without an exit code (the agent went away?)",
          file=err)
    return 1


def _read_stdin(fd: int, outgoing: asyncio.Queue[bytes],
                loop: asyncio.AbstractEventLoop) -> None:
    """Local stdin into stdin frames (a thread: stdin may be a file or a pipe, which
    the event loop cannot watch); an empty frame when it ends."""
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        with contextlib.suppress(RuntimeError):  # the session is over
            loop.call_soon_threadsafe(outgoing.put_nowait,
                                      exec_wire.encode(FrameType.STDIN, data))
        if not data:
            return
