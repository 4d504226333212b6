"""The wire between two agents during a migration: framed messages over one TLS
connection, each frame authenticated, the sender's rate capped.

The target proves who it is by TLS: its agent serves the transfer port with a
certificate made at its start and published in its GpuNode
(``status.transfer.caBundle``; only agents write GpuNode status), and the source
trusts that certificate alone. The source proves who it is by a one-time token: it
makes one for the migration and writes only its SHA-256 in the GpuMigration's status
(which only agents may write), and sends the token in its first frame, inside TLS; the
target reads the GpuMigration, checks that it is the migration's target and that the
token's digest is the one written there, and accepts one session per token. Every
later frame, both ways, also carries an HMAC-SHA256 keyed by the token over its
sequence number, type and length, and a message's over its payload too (docs/migration.md,
"The transfer endpoint"). A DATA frame's bytes are not hashed again: TLS authenticates
every record, and each file's bytes are checked once more on arrival against the
source's manifest (its content SHA-256), so one more SHA-256 pass over every byte on
each side would add CPU and no protection.

A frame: 1 byte type, 8 bytes length, the payload, 32 bytes MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, ClassVar

from gpudock.api.reasons import Reason
from gpudock.errors import TransientError

JSON, DATA = 1, 2
_HEAD = struct.Struct(">BQ")
_MAC = 32
MAX_JSON = 64 * 2**20
MAX_DATA = 64 * 2**20  # senders cut data into frames of 1 MiB; a frame is read whole
IO_TIMEOUT = 150.0  # no byte for this long: TransferStalled


class WireError(TransientError):
    """The session broke, a frame did not authenticate, or the peer refused."""

    reason: ClassVar[Reason] = Reason.TRANSFER_FAILED


class StalledError(WireError):
    """No byte moved between the two sides for IO_TIMEOUT seconds."""

    reason: ClassVar[Reason] = Reason.TRANSFER_STALLED


class RefusedError(WireError):
    """The peer answered with a refusal: its reason and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # the refusal's Reason


def new_token() -> str:
    return secrets.token_hex(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Channel:
    """One side of a session. ``cancelled`` is asked between frames: when it says
    so, the session ends with WireError. ``bandwidth`` (bytes/s, 0: none) caps what
    this side sends; ``sent`` counts the bytes of the DATA frames sent."""

    def __init__(self, sock: socket.socket, bandwidth: int = 0,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self._sock = sock
        self._key: bytes | None = None
        self._out = self._in = 0
        self._bandwidth = bandwidth
        self._cancelled = cancelled
        self._started = time.monotonic()
        self._frame = bytearray()  # send_file_data's, reused
        self.sent = 0
        sock.settimeout(IO_TIMEOUT)

    def keyed(self, token: str) -> None:
        """From now on every frame carries a MAC keyed by the token."""
        self._key = token.encode()

    def _mac(self, seq: int, head: bytes | bytearray,
             payload: bytes | bytearray | memoryview) -> bytes:
        if self._key is None:
            return bytes(_MAC)
        mac = hmac.new(self._key, seq.to_bytes(8, "big") + head, hashlib.sha256)
        if head[0] != DATA:  # (data: TLS's records and the tree's manifest, above)
            mac.update(payload)
        return mac.digest()

    def _send(self, kind: int, payload: bytes | memoryview) -> None:
        if self._cancelled():
            raise WireError("the migration was cancelled")
        head = _HEAD.pack(kind, len(payload))
        mac = self._mac(self._out, head, payload)
        self._out += 1
        # One write per frame: over TLS, each write is a record of its own.
        self._write(b"".join((head, payload, mac)))
        if kind == DATA:
            self.sent += len(payload)
            self._pace()

    def _write(self, frame: bytes | memoryview) -> None:
        try:
            self._sock.sendall(frame)
        except TimeoutError as exc:
            raise StalledError(f"the peer took no data for {IO_TIMEOUT:.0f} s") from exc
        except OSError as exc:
            raise WireError(f"sending to the peer: {exc}") from exc

    def _pace(self) -> None:
        """Sleep off what was sent faster than --migration-bandwidth allows."""
        if self._bandwidth > 0:
            ahead = self.sent / self._bandwidth - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)

    def send(self, message: dict[str, Any]) -> None:
        self._send(JSON, json.dumps(message).encode())

    def send_data(self, data: bytes | memoryview) -> None:
        self._send(DATA, data)

    def send_file_data(self, fd: int, count: int, offset: int) -> memoryview:
        """A DATA frame of up to ``count`` bytes of the open file ``fd`` at
        ``offset``, read straight into this channel's one frame buffer (no bytes
        object per chunk, no join): the bytes sent (empty at the file's end; a
        view valid until the next call)."""
        size = _HEAD.size + count + _MAC
        if len(self._frame) < size:
            self._frame = bytearray(size)
        view = memoryview(self._frame)
        done = os.preadv(fd, [view[_HEAD.size:_HEAD.size + count]], offset)
        if done:
            if self._cancelled():
                raise WireError("the migration was cancelled")
            head = _HEAD.pack(DATA, done)
            view[:_HEAD.size] = head
            view[_HEAD.size + done:_HEAD.size + done + _MAC] = self._mac(self._out, head, b"")
            self._out += 1
            self._write(view[:_HEAD.size + done + _MAC])
            self.sent += done
            self._pace()
        return view[_HEAD.size:_HEAD.size + done]

    def _exact(self, count: int) -> bytearray:
        """``count`` bytes, read into one buffer: an SSL socket's recv(n) makes an
        n-byte object for each TLS record (16 KiB) it returns, and a join copied
        them all once more."""
        buffer = bytearray(count)
        view, got = memoryview(buffer), 0
        while got < count:
            try:
                done = self._sock.recv_into(view[got:], count - got)
            except TimeoutError as exc:
                raise StalledError(f"no data from the peer for {IO_TIMEOUT:.0f} s") from exc
            except OSError as exc:
                raise WireError(f"receiving from the peer: {exc}") from exc
            if not done:
                raise WireError("the peer closed the connection")
            got += done
        return buffer

    def _receive(self) -> tuple[int, bytearray]:
        head = self._exact(_HEAD.size)
        kind, length = _HEAD.unpack(head)
        if kind == JSON and length > MAX_JSON:
            raise WireError(f"a message of {length} bytes is too long")
        if length > MAX_DATA:  # (its buffer is made before any of it arrives)
            raise WireError(f"a frame of {length} bytes is too long")
        payload = self._exact(length)
        mac = self._exact(_MAC)
        if not hmac.compare_digest(mac, self._mac(self._in, head, payload)):
            raise WireError("a frame did not authenticate: the session is dropped")
        self._in += 1
        return kind, payload

    def receive(self) -> dict[str, Any]:
        """The next message; a refusal the peer sent is raised as RefusedError."""
        kind, payload = self._receive()
        if kind != JSON:
            raise WireError("a message was expected, data came")
        message = json.loads(payload)
        if not isinstance(message, dict):
            raise WireError("a message must be an object")
        if message.get("op") == "refused":
            raise RefusedError(str(message.get("reason")), str(message.get("message")))
        return message

    def receive_data(self) -> bytearray:
        kind, payload = self._receive()
        if kind != DATA:
            raise WireError("data was expected, a message came")
        return payload

    def refuse(self, reason: str, message: str) -> None:
        self.send({"op": "refused", "reason": reason, "message": message})

    def close(self) -> None:
        self._sock.close()


def connect(address: str, port: int, bandwidth: int, cancelled: Callable[[], bool],
            ca_bundle: str) -> Channel:
    """A session to the target's endpoint over TLS, trusting ``ca_bundle`` (the
    certificate its GpuNode publishes) alone, for ``address``."""
    try:
        context = ssl.create_default_context(cadata=ca_bundle)
    except (ssl.SSLError, ValueError) as exc:
        raise WireError(f"the target's certificate cannot be read: {exc}") from exc
    try:
        sock = socket.create_connection((address, port), timeout=30)
    except OSError as exc:
        raise WireError(f"connecting to {address}:{port}: {exc}") from exc
    try:
        secured = context.wrap_socket(sock, server_hostname=address)
    except OSError as exc:  # ssl.SSLError too: not the certificate published
        sock.close()
        raise WireError(f"TLS with {address}:{port}: {exc}") from exc
    return Channel(secured, bandwidth, cancelled)


def serve(conn: socket.socket, context: ssl.SSLContext) -> socket.socket:
    """The target's side of a new connection: TLS with its certificate (the handshake
    bounded by IO_TIMEOUT)."""
    conn.settimeout(IO_TIMEOUT)
    try:
        return context.wrap_socket(conn, server_side=True)
    except OSError as exc:
        conn.close()
        raise WireError(f"TLS handshake: {exc}") from exc
