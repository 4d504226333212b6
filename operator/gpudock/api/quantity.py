"""Sizes: Kubernetes quantities (``20Gi``, ``500M``) and the seed's ``20GB`` form.

The seed service passed sizes to Docker's local driver, which reads ``KB/MB/GB/TB`` as
powers of 1024 (``units.RAMInBytes``); gpudock keeps that meaning so an old request
means the same number of bytes. Kubernetes suffixes keep theirs: ``Gi`` is 1024**3 and
``G`` is 1000**3.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from gpudock.errors import SpecError

# The CRD schema uses the same grammar (crds/ is checked against this in the tests).
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE]|[kKmMgGtTpP][bB])?$"

_MULTIPLIERS: dict[str, int] = {
    "": 1,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6,
    "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5, "E": 1000**6,
    "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5,
}
_SIZE_RE = re.compile(SIZE_PATTERN)
_BINARY_UNITS = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki")


def parse_size(text: str) -> int:
    """Bytes in ``text``; raises :class:`SpecError` for anything else."""
    match = _SIZE_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise SpecError(
            f"size {text!r} is not a quantity such as 20Gi, 500Mi, 10G or 20GB"
        )
    suffix = match.group(2) or ""
    if len(suffix) == 2 and suffix[1] in "bB":
        suffix = suffix.upper()
    number = text.strip()[: len(text.strip()) - len(suffix)]
    try:
        value = Decimal(number) * _MULTIPLIERS[suffix]
    except (InvalidOperation, KeyError) as exc:  # pragma: no cover - the regex forbids it
        raise SpecError(f"size {text!r} cannot be read: {exc}") from exc
    if value != value.to_integral_value():
        raise SpecError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    """The shortest exact binary quantity for ``size`` bytes (``20Gi``, ``1536Ki``)."""
    for unit in _BINARY_UNITS:
        factor = _MULTIPLIERS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_size_approx(size: int) -> str:
    """A human reading of ``size`` bytes for printer columns (``1.5Gi``)."""
    for unit in _BINARY_UNITS:
        factor = _MULTIPLIERS[unit]
        if size >= factor:
            return f"{size / factor:.1f}".rstrip("0").rstrip(".") + unit
    return str(size)
