"""file_data.BlockDigest: the digest of a file's bytes fed as they pass (sent or
received, in pieces cut anywhere, holes left out) is content_digest's of the file
read back, for real sparse files; a piece out of order is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudock.adapters.file_data import CHUNK, BlockDigest, content_digest, segments


def _sparse_file(path: Path, size: int, writes: list[tuple[int, bytes]]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    for offset, data in writes:
        os.pwrite(fd, data, min(offset, max(0, size - len(data))))
    os.ftruncate(fd, size)
    return fd


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 * CHUNK + 17),
       writes=st.lists(st.tuples(st.integers(0, 3 * CHUNK), st.binary(min_size=1,
                                                                       max_size=4096)),
                       max_size=6),
       cuts=st.lists(st.integers(1, CHUNK + 5), min_size=1, max_size=8))
def test_fed_in_any_pieces_it_is_content_digest(tmp_path_factory: pytest.TempPathFactory,
                                                size: int, writes: list[tuple[int, bytes]],
                                                cuts: list[int]) -> None:
    path = tmp_path_factory.mktemp("digest") / "file"
    fd = _sparse_file(path, size, writes)
    try:
        expected = content_digest(fd, size)
        digest, turn = BlockDigest(size), 0
        for start, end in segments(fd, size):
            offset = start
            while offset < end:
                count = min(cuts[turn % len(cuts)], end - offset)
                turn += 1
                digest.update(offset, os.pread(fd, count, offset))
                offset += count
        assert digest.hexdigest() == expected
    finally:
        os.close(fd)


def test_a_piece_before_the_last_or_past_the_end_is_refused() -> None:
    digest = BlockDigest(2 * CHUNK)
    digest.update(CHUNK, b"x" * 10)
    with pytest.raises(ValueError, match="out of order"):
        digest.update(0, b"y")
    with pytest.raises(ValueError, match="past the end"):
        digest.update(2 * CHUNK - 1, b"zz")
