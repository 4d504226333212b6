"""A SizedVolume's revision record: one per size the volume has had.

Kept in the same revision store as GpuReplicaSet revisions (kind ``SizedVolume``).
The latest record says where the volume lives now: its backend and that backend's
root (so changing --volume-backend or --volume-root never strands an existing
volume) and its Docker volume (the copy backend makes a new one per revision).
Record 1 is written before the volume is made (and marked made after); a later one
once its size is real.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

KIND = "SizedVolume"


@dataclass(frozen=True)
class VolumeRevision:
    namespace: str
    name: str
    revision: int
    uid: str
    backend: str  # loopfile, btrfs, xfs-quota, copy
    root: str  # the backend's --volume-root when the volume was made
    volume_id: str  # the Docker volume (and the backend's name for it)
    size_bytes: int
    created_at: str
    change_cause: str = ""
    generation: int | None = None
    # Revision 1 is written before the volume is made (False), and again once it is:
    # a volume its records say was made and that is not there is lost, never made
    # again empty as if nothing had happened.
    made: bool = True

    def summary(self) -> dict[str, object]:
        """The entry of status.history."""
        return {"revision": self.revision, "createdAt": self.created_at,
                "sizeBytes": self.size_bytes, "volumeName": self.volume_id,
                "changeCause": self.change_cause}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> VolumeRevision:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
