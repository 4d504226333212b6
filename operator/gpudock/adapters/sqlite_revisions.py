"""The embedded revision store: one SQLite file under the agent's state dir.

One table keyed like the etcd backend's keys (kind, namespace, name, revision); WAL
journal and synchronous=FULL, so a record that put() returned for survives a crash of
the agent or the machine. SQLite errors (disk full, locked, I/O) are transient.
"""

from __future__ import annotations

import builtins
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from gpudock.core import volume_revision
from gpudock.core.revision import KIND, Revision
from gpudock.core.volume_revision import VolumeRevision
from gpudock.errors import StoreUnavailableError

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    revision INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name, revision)
)
"""


class SqliteRevisionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self._translated(f"open {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(SCHEMA)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            raise StoreUnavailableError(f"revision store {self.path}: {what}: {exc}",
                                        delay=5) from exc

    def put(self, record: Revision) -> None:
        with self._lock, self._translated("put"):
            self._db.execute(
                "INSERT OR REPLACE INTO revisions VALUES (?, ?, ?, ?, ?)",
                (KIND, record.namespace, record.name, record.revision, record.to_json()))

    def get(self, namespace: str, name: str, revision: int) -> Revision | None:
        with self._lock, self._translated("get"):
            row = self._db.execute(
                "SELECT record FROM revisions WHERE kind=? AND namespace=? AND name=? "
                "AND revision=?", (KIND, namespace, name, revision)).fetchone()
        return None if row is None else Revision.from_json(row[0])

    def list_retained(self, namespace: str, name: str) -> list[Revision]:
        prefix = f"{name}@"
        with self._lock, self._translated("list retained"):
            rows = self._db.execute(
                "SELECT record FROM revisions WHERE kind=? AND namespace=? AND "
                "substr(name, 1, ?)=? ORDER BY name, revision",
                (KIND, namespace, len(prefix), prefix)).fetchall()
        return [Revision.from_json(row[0]) for row in rows]

    def list(self, namespace: str, name: str) -> list[Revision]:
        with self._lock, self._translated("list"):
            rows = self._db.execute(
                "SELECT record FROM revisions WHERE kind=? AND namespace=? AND name=? "
                "ORDER BY revision", (KIND, namespace, name)).fetchall()
        return [Revision.from_json(row[0]) for row in rows]

    def delete(self, namespace: str, name: str, revision: int) -> None:
        with self._lock, self._translated("delete"):
            self._db.execute(
                "DELETE FROM revisions WHERE kind=? AND namespace=? AND name=? AND revision=?",
                (KIND, namespace, name, revision))

    def delete_own(self, namespace: str, name: str, revision: int) -> None:
        self.delete(namespace, name, revision)  # a node's own file: every record is its own

    def delete_all(self, namespace: str, name: str) -> None:
        with self._lock, self._translated("delete all"):
            self._db.execute("DELETE FROM revisions WHERE kind=? AND namespace=? AND name=?",
                             (KIND, namespace, name))

    def put_volume(self, record: VolumeRevision) -> None:
        with self._lock, self._translated("put volume"):
            self._db.execute(
                "INSERT OR REPLACE INTO revisions VALUES (?, ?, ?, ?, ?)",
                (volume_revision.KIND, record.namespace, record.name, record.revision,
                 record.to_json()))

    def list_volume(self, namespace: str, name: str) -> builtins.list[VolumeRevision]:
        with self._lock, self._translated("list volume"):
            rows = self._db.execute(
                "SELECT record FROM revisions WHERE kind=? AND namespace=? AND name=? "
                "ORDER BY revision", (volume_revision.KIND, namespace, name)).fetchall()
        return [VolumeRevision.from_json(row[0]) for row in rows]

    def delete_volume_all(self, namespace: str, name: str) -> None:
        with self._lock, self._translated("delete volume"):
            self._db.execute("DELETE FROM revisions WHERE kind=? AND namespace=? AND name=?",
                             (volume_revision.KIND, namespace, name))

    def close(self) -> None:
        with self._lock:
            self._db.close()
