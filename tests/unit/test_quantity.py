from __future__ import annotations

import pytest

from gpudock.api.quantity import format_size, format_size_approx, parse_size
from gpudock.errors import SpecError


@pytest.mark.parametrize(("text", "expected"), [
    ("20Gi", 20 * 1024**3),
    ("500Mi", 500 * 1024**2),
    ("1.5Gi", 3 * 1024**3 // 2),
    ("10G", 10 * 1000**3),
    ("1k", 1000),
    ("4096", 4096),
    # The seed's form: KB/MB/GB/TB as powers of 1024, any case, as Docker reads them.
    ("20GB", 20 * 1024**3),
    ("20gb", 20 * 1024**3),
    ("512MB", 512 * 1024**2),
])
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12XB", "", "Gi", "-1Gi", "1.5", "10 Gi", "1m", "1e3"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(20 * 1024**3) == "20Gi"
    assert format_size(1536 * 1024) == "1536Ki"
    assert format_size(1000) == "1000"
    assert format_size_approx(3 * 1024**3 // 2) == "1.5Gi"
    assert format_size_approx(10) == "10"
