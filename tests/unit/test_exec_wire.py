"""#26 item 1: the frames of `kubectl gpudock exec -i/-t` (adapters/exec_wire.py)."""

from __future__ import annotations

import pytest

from gpudock.adapters import exec_wire
from gpudock.adapters.exec_wire import Frame, FrameError, FrameType
from gpudock.cli import kubectl_plugin


@pytest.mark.parametrize("kind", [FrameType.STDIN, FrameType.STDOUT, FrameType.STDERR])
def test_data_frames_round_trip(kind: FrameType) -> None:
    assert exec_wire.decode(exec_wire.encode(kind, b"ls\r\x03")) == Frame(kind, b"ls\r\x03")


def test_an_empty_stdin_frame_says_stdin_closed() -> None:
    assert exec_wire.encode(FrameType.STDIN) == b"\x00"
    assert exec_wire.decode(b"\x00") == Frame(FrameType.STDIN, b"")


def test_resize_carries_rows_then_columns() -> None:
    message = exec_wire.resize(40, 132)
    assert message == b"\x03\x00\x28\x00\x84"
    assert exec_wire.size_of(exec_wire.decode(message)) == (40, 132)
    assert exec_wire.size_of(exec_wire.decode(exec_wire.resize(70000, -1))) == (65535, 0)


@pytest.mark.parametrize("code", [0, 3, 130, 255, -1])
def test_exit_code_round_trips(code: int) -> None:
    frame = exec_wire.decode(exec_wire.exit_frame(code))
    assert frame.type == FrameType.EXIT
    assert exec_wire.code_of(frame) == code


@pytest.mark.parametrize("message", [b"", b"\x09abc", b"\x03\x00", b"\x04\x00\x00\x00"])
def test_bytes_that_are_no_frame_are_refused(message: bytes) -> None:
    with pytest.raises(FrameError):
        exec_wire.decode(message)


def test_a_payload_over_the_limit_is_refused() -> None:
    with pytest.raises(FrameError):
        exec_wire.encode(FrameType.STDOUT, b"x" * (exec_wire.MAX_PAYLOAD + 1))


@pytest.mark.parametrize(("words", "stdin", "tty", "command"), [
    (["exec", "-it", "box", "--", "bash"], True, True, ["bash"]),
    (["exec", "box", "-i", "-n", "ns", "--", "cat"], True, False, ["cat"]),
    (["exec", "--tty", "box", "--", "top"], False, True, ["top"]),
    (["exec", "box", "--", "bash", "-i"], False, False, ["bash", "-i"]),  # the command's
])
def test_26_1_exec_takes_kubectls_stdin_and_tty_flags(words: list[str], stdin: bool,
                                                        tty: bool, command: list[str]) -> None:
    args = kubectl_plugin.parse(words)
    assert (args.stdin, args.tty, args.argv) == (stdin, tty, command)
