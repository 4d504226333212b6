"""The SizedVolume resource: a node-local Docker volume with a hard size."""

from __future__ import annotations

from dataclasses import dataclass

from gpudock.api.parsing import RawDict, get_node_name
from gpudock.api.quantity import parse_size
from gpudock.errors import SpecError

KIND = "SizedVolume"
PLURAL = "sizedvolumes"
MIN_SIZE_BYTES = 1024**2  # a filesystem needs some room for its own metadata


@dataclass(frozen=True)
class SizedVolumeSpec:
    node_name: str
    size_bytes: int

    @classmethod
    def parse(cls, raw: RawDict) -> SizedVolumeSpec:
        node_name = get_node_name(raw)
        size = raw.get("size")
        size_bytes = parse_size(str(size)) if isinstance(size, str | int) else parse_size("")
        if size_bytes < MIN_SIZE_BYTES:
            raise SpecError(f"spec.size {size!r} is below the minimum of 1Mi")
        return cls(node_name=node_name, size_bytes=size_bytes)
