"""#23: a tree sent between agents (adapters/tree_stream.py over migration_wire.py),
on this machine's filesystem: everything arrives, the pass after a pre-copy sends
only what changed, and a copy or a frame that differs is refused."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpudock.adapters import migration_wire, stream_tls, tree_copy, tree_stream
from gpudock.adapters.migration_wire import Channel, WireError


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    left, right = Channel(a), Channel(b)
    left.keyed("secret")
    right.keyed("secret")
    yield left, right
    left.close()
    right.close()


def _over(send: Callable[[], None], receive: Callable[[], int]) -> int:
    thread = threading.Thread(target=send)
    thread.start()
    try:
        return receive()
    finally:
        thread.join(10)


def _user_tree(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "big").write_bytes(os.urandom(3_000_000))
    (root / "kept").write_bytes(os.urandom(1_000_000))
    os.link(root / "kept", root / "twin")
    os.setxattr(root / "kept", "user.note", b"v")
    with open(root / "sparse", "wb") as sparse:
        sparse.truncate(1 << 30)
        sparse.seek(5 << 20)
        sparse.write(b"tail")
    os.symlink("d/big", root / "link")
    os.mkfifo(root / "fifo")
    os.chmod(root / "d" / "big", 0o4750)


def test_23_2_a_tree_arrives_whole_and_a_pre_copied_one_sends_only_changes(
        tmp_path: Path, pair: tuple[Channel, Channel]) -> None:
    source, pre, final = tmp_path / "source", tmp_path / "pre", tmp_path / "final"
    for path in (source, pre, final):
        path.mkdir()
    _user_tree(source)
    time.sleep(1.1)  # older than the racy second: reusable
    left, right = pair
    sender = tree_stream.TreeSender(source, left, "migrated-x")
    digests = tree_stream.Digests()
    _over(lambda: sender.send(final=False),
          lambda: tree_stream.receive_tree(right, right.receive(), pre, None, digests))
    (source / "d" / "big").write_bytes(b"changed")
    (source / "new").write_bytes(b"new")
    received = _over(sender.send, lambda: tree_stream.receive_tree(
        right, right.receive(), final, pre, digests))
    assert received == len(b"changed") + len(b"new")  # the rest was reused
    assert tree_stream.manifest_digest(final) == tree_stream.manifest_digest(source)
    assert os.stat(final / "kept").st_ino == os.stat(final / "twin").st_ino
    assert os.getxattr(final / "kept", "user.note") == b"v"
    assert os.stat(final / "sparse").st_blocks * 512 < 1 << 20


def test_23_4_a_copy_that_differs_from_the_source_is_refused(
        tmp_path: Path, pair: tuple[Channel, Channel], monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    _user_tree(source)
    left, right = pair
    real = tree_copy.set_metadata

    def astray(fd: int | None, dir_fd: int, name: str, info: os.stat_result,
               attrs: tuple[tuple[str, bytes], ...]) -> None:
        real(fd, dir_fd, name, info, attrs)
        if name == "kept" and fd is not None:
            os.fchmod(fd, 0o777)  # the receiving side gets one mode wrong

    monkeypatch.setattr(tree_copy, "set_metadata", astray)
    sender = tree_stream.TreeSender(source, left, "migrated-x")
    with pytest.raises(WireError, match="does not match the source's manifest"):
        _over(sender.send, lambda: tree_stream.receive_tree(right, right.receive(), target))


def test_23_5_a_frame_changed_on_the_wire_or_keyed_otherwise_is_refused(
        pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    right.keyed("guessed")
    left.send({"op": "hello"})
    with pytest.raises(WireError, match="did not authenticate"):
        right.receive()
    assert migration_wire.token_digest("secret") != migration_wire.token_digest("guessed")


def test_23_5_a_frame_longer_than_any_sender_makes_is_refused_before_it_is_read() -> None:
    a, b = socket.socketpair()
    receiving = Channel(b)
    try:
        # A header announcing a 1 TiB data frame: refused, nothing allocated for it.
        a.sendall(migration_wire._HEAD.pack(migration_wire.DATA, 1 << 40))
        with pytest.raises(WireError, match="too long"):
            receiving.receive_data()
    finally:
        a.close()
        receiving.close()


def test_23_4_a_data_byte_changed_on_its_way_fails_the_manifest_check(
        tmp_path: Path, pair: tuple[Channel, Channel],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DATA frame's bytes are TLS's to authenticate on the wire, not the frame MAC's;
    one that still arrives changed (here: changed after the frame was read) is caught
    by the manifest: nothing is kept."""
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    _user_tree(source)
    left, right = pair
    real = Channel.receive_data
    flipped: list[bool] = []

    def altered(channel: Channel) -> bytes | bytearray:
        data = real(channel)
        if not flipped:
            flipped.append(True)
            return bytes([data[0] ^ 1]) + data[1:]
        return data

    monkeypatch.setattr(Channel, "receive_data", altered)
    sender = tree_stream.TreeSender(source, left, "migrated-x")
    with pytest.raises(WireError, match="does not match the source's manifest"):
        _over(sender.send, lambda: tree_stream.receive_tree(right, right.receive(), target))
    assert flipped


def test_23_5_a_peer_that_moves_no_byte_for_the_timeout_is_a_stalled_transfer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migration_wire, "IO_TIMEOUT", 0.2)
    mine, theirs = socket.socketpair()
    try:
        channel = Channel(mine)
        with pytest.raises(migration_wire.StalledError) as stalled:
            channel.receive()  # the peer never sends
        assert stalled.value.reason == "TransferStalled"
        assert isinstance(stalled.value, WireError)  # ends the session like any break

        def flood() -> None:  # the peer never reads: its buffers fill, then nothing moves
            while True:
                channel.send_data(bytes(1 << 20))

        with pytest.raises(migration_wire.StalledError):
            flood()
    finally:
        mine.close()
        theirs.close()


def test_23_5_the_source_talks_tls_to_the_certificate_the_target_published_alone(
        tmp_path: Path) -> None:
    """The target's endpoint is TLS with the certificate its GpuNode publishes; a
    source trusting another certificate (another agent, a man in the middle) does not
    get a session, and what the right one sends does not cross the wire in clear."""
    target = stream_tls.make(tmp_path / "target", "127.0.0.1", "transfer")
    impostor = stream_tls.make(tmp_path / "impostor", "127.0.0.1", "transfer")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[dict[str, object]] = []

    def accept(count: int) -> None:
        for _ in range(count):
            conn, _ = server.accept()
            try:
                channel = Channel(migration_wire.serve(conn, target.context))
                got.append(channel.receive())
                channel.send({"op": "welcome"})
                channel.close()
            except WireError:
                conn.close()

    thread = threading.Thread(target=accept, args=(2,), daemon=True)
    thread.start()
    try:
        with pytest.raises(WireError, match="TLS"):
            migration_wire.connect("127.0.0.1", port, 0, lambda: False, impostor.pem)
        channel = migration_wire.connect("127.0.0.1", port, 0, lambda: False, target.pem)
        channel.send({"op": "hello", "token": "secret-token"})
        assert channel.receive() == {"op": "welcome"}
        channel.close()
        thread.join(10)
    finally:
        server.close()
    assert got == [{"op": "hello", "token": "secret-token"}]
