"""The etcd revision store, through aetcd (the maintained asyncio etcd3 client).

The rest of the agent is synchronous (reconciles run in worker threads), so the
store runs aetcd on its own event loop in a daemon thread and waits for each call.
One key per revision: reading one is a get, listing is one prefix range read; neither
asks etcd for an old MVCC revision, so compaction never breaks them.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions

from gpudock.core import volume_revision
from gpudock.core.revision import Revision, revision_key
from gpudock.core.volume_revision import VolumeRevision
from gpudock.errors import StoreUnavailableError

T = TypeVar("T")
DEFAULT_PREFIX = "/gpudock/revisions"


class EtcdRevisionStore:
    def __init__(self, host: str, port: int, prefix: str = DEFAULT_PREFIX,
                 timeout: float = 10.0) -> None:
        self.endpoint = f"{host}:{port}"
        self.prefix = prefix
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="etcd-revision-store")
        self._thread.start()
        self._client: aetcd.Client = self._run("connect", self._connect(host, port))

    async def _connect(self, host: str, port: int) -> aetcd.Client:
        client = aetcd.Client(host=host, port=port, timeout=int(self._timeout))
        await client.connect()
        return client

    def _run(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout + 1)
        except (aetcd.exceptions.ClientError, concurrent.futures.TimeoutError,
                OSError) as exc:
            future.cancel()
            raise StoreUnavailableError(
                f"etcd {self.endpoint}: {what}: {type(exc).__name__}: {exc}", delay=5) from exc

    def _key(self, namespace: str, name: str, revision: int | None = None) -> bytes:
        return revision_key(self.prefix, namespace, name, revision).encode()

    def put(self, record: Revision) -> None:
        key = self._key(record.namespace, record.name, record.revision)
        self._run("put", self._client.put(key, record.to_json().encode()))

    def get(self, namespace: str, name: str, revision: int) -> Revision | None:
        found = self._run("get", self._client.get(self._key(namespace, name, revision)))
        return None if found is None else Revision.from_json(found.value)

    def list_retained(self, namespace: str, name: str) -> list[Revision]:
        prefix = self._key(namespace, name)[:-1] + b"@"  # every "<name>@<uid>/"
        found = self._run("list retained", self._client.get_prefix(prefix))
        records = [Revision.from_json(kv.value) for kv in found]
        return sorted(records, key=lambda r: (r.name, r.revision))

    def list(self, namespace: str, name: str) -> list[Revision]:
        found = self._run("list", self._client.get_prefix(self._key(namespace, name)))
        records = [Revision.from_json(kv.value) for kv in found]
        return sorted(records, key=lambda r: r.revision)

    def delete(self, namespace: str, name: str, revision: int) -> None:
        self._run("delete", self._client.delete(self._key(namespace, name, revision)))

    def delete_all(self, namespace: str, name: str) -> None:
        self._run("delete all", self._client.delete_prefix(self._key(namespace, name)))

    def _volume_key(self, namespace: str, name: str, revision: int | None = None) -> bytes:
        return revision_key(self.prefix, namespace, name, revision,
                            kind=volume_revision.KIND).encode()

    def put_volume(self, record: VolumeRevision) -> None:
        key = self._volume_key(record.namespace, record.name, record.revision)
        self._run("put volume", self._client.put(key, record.to_json().encode()))

    def list_volume(self, namespace: str, name: str) -> builtins.list[VolumeRevision]:
        found = self._run("list volume",
                          self._client.get_prefix(self._volume_key(namespace, name)))
        return sorted((VolumeRevision.from_json(kv.value) for kv in found),
                      key=lambda r: r.revision)

    def delete_volume_all(self, namespace: str, name: str) -> None:
        self._run("delete volume",
                  self._client.delete_prefix(self._volume_key(namespace, name)))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(StoreUnavailableError):
            self._run("close", self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
