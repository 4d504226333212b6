"""A revision store that times every call into the store-latency metric."""

from __future__ import annotations

import builtins

from gpudock.core.revision import Revision, RevisionStore
from gpudock.core.volume_revision import VolumeRevision
from gpudock.metrics import STORE_SECONDS, timed_call


class TimedRevisionStore:
    def __init__(self, store: RevisionStore) -> None:
        self._store = store

    def put(self, record: Revision) -> None:
        timed_call(STORE_SECONDS, "put", lambda: self._store.put(record))

    def get(self, namespace: str, name: str, revision: int) -> Revision | None:
        return timed_call(STORE_SECONDS, "get",
                          lambda: self._store.get(namespace, name, revision))

    def list_retained(self, namespace: str, name: str) -> list[Revision]:
        return timed_call(STORE_SECONDS, "list_retained",
                          lambda: self._store.list_retained(namespace, name))

    def list(self, namespace: str, name: str) -> list[Revision]:
        return timed_call(STORE_SECONDS, "list", lambda: self._store.list(namespace, name))

    def delete(self, namespace: str, name: str, revision: int) -> None:
        timed_call(STORE_SECONDS, "delete",
                   lambda: self._store.delete(namespace, name, revision))

    def delete_own(self, namespace: str, name: str, revision: int) -> None:
        timed_call(STORE_SECONDS, "delete",
                   lambda: self._store.delete_own(namespace, name, revision))

    def delete_all(self, namespace: str, name: str) -> None:
        timed_call(STORE_SECONDS, "delete_all",
                   lambda: self._store.delete_all(namespace, name))

    def put_volume(self, record: VolumeRevision) -> None:
        timed_call(STORE_SECONDS, "put_volume", lambda: self._store.put_volume(record))

    def list_volume(self, namespace: str, name: str) -> builtins.list[VolumeRevision]:
        return timed_call(STORE_SECONDS, "list_volume",
                          lambda: self._store.list_volume(namespace, name))

    def delete_volume_all(self, namespace: str, name: str) -> None:
        timed_call(STORE_SECONDS, "delete_volume_all",
                   lambda: self._store.delete_volume_all(namespace, name))

    def close(self) -> None:
        self._store.close()
