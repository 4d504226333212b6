"""The etcd revision store, through aetcd (the maintained asyncio etcd3 client).

The rest of the agent is synchronous (reconciles run in worker threads), so the
store runs aetcd on its own event loop in a daemon thread and waits for each call.
One key per revision: reading one is a get, listing is one prefix range read; neither
asks etcd for an old MVCC revision, so compaction never breaks them.

Each node's agent keeps its records under ``<prefix>/nodes/<node>/``: records name
that node's saved layers and containers, and several nodes are often given one URL
(the Helm chart's one ``agent.store``). Under one shared prefix a migration lost the
instance's history (the soak found it): the target put the received records under the
source's keys, and the source's clean-up deleted them. Records an agent before the
node layout wrote directly under ``<prefix>/`` are still read, below the node's own
(a node's record of the same revision wins), and deleted with them, except by
``delete_own``: a migration's target removing what it received must not delete the
source's records from before the layout.
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
from gpudock.core.revision import KIND as REVISION_KIND
from gpudock.core.revision import Revision, revision_key
from gpudock.core.volume_revision import VolumeRevision
from gpudock.errors import StoreUnavailableError

T = TypeVar("T")
DEFAULT_PREFIX = "/gpudock/revisions"


class EtcdRevisionStore:
    def __init__(self, host: str, port: int, prefix: str = DEFAULT_PREFIX,
                 timeout: float = 10.0, node: str = "") -> None:
        """``node``: the node whose records these are ("": the whole prefix, as
        before the node layout)."""
        self.endpoint = f"{host}:{port}"
        self.prefix = f"{prefix.rstrip('/')}/nodes/{node}" if node else prefix
        self._legacy = prefix if node else None
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

    def _keys(self, namespace: str, name: str, revision: int | None = None,
              kind: str = REVISION_KIND) -> list[bytes]:
        """This node's key (or prefix), then the one before the node layout."""
        return [revision_key(p, namespace, name, revision, kind=kind).encode()
                for p in (self.prefix, self._legacy) if p is not None]

    def _read(self, what: str, prefixes: list[bytes]) -> list[bytes]:
        """The values under each prefix, the first's over the later ones' of the same
        key suffix (a node's record over the legacy one of the same revision)."""
        found: dict[bytes, bytes] = {}
        for prefix in prefixes:
            for kv in self._run(what, self._client.get_prefix(prefix)):
                found.setdefault(bytes(kv.key)[len(prefix):], bytes(kv.value))
        return list(found.values())

    def put(self, record: Revision) -> None:
        key = self._keys(record.namespace, record.name, record.revision)[0]
        self._run("put", self._client.put(key, record.to_json().encode()))

    def get(self, namespace: str, name: str, revision: int) -> Revision | None:
        for key in self._keys(namespace, name, revision):
            found = self._run("get", self._client.get(key))
            if found is not None:
                return Revision.from_json(found.value)
        return None

    def list_retained(self, namespace: str, name: str) -> list[Revision]:
        prefixes = [k[:-1] + b"@" for k in self._keys(namespace, name)]  # "<name>@<uid>/"
        records = [Revision.from_json(v) for v in self._read("list retained", prefixes)]
        return sorted(records, key=lambda r: (r.name, r.revision))

    def list(self, namespace: str, name: str) -> list[Revision]:
        records = [Revision.from_json(v) for v in self._read("list",
                                                             self._keys(namespace, name))]
        return sorted(records, key=lambda r: r.revision)

    def delete(self, namespace: str, name: str, revision: int) -> None:
        for key in self._keys(namespace, name, revision):
            self._run("delete", self._client.delete(key))

    def delete_own(self, namespace: str, name: str, revision: int) -> None:
        self._run("delete", self._client.delete(self._keys(namespace, name, revision)[0]))

    def delete_all(self, namespace: str, name: str) -> None:
        for prefix in self._keys(namespace, name):
            self._run("delete all", self._client.delete_prefix(prefix))

    def put_volume(self, record: VolumeRevision) -> None:
        key = self._keys(record.namespace, record.name, record.revision,
                         kind=volume_revision.KIND)[0]
        self._run("put volume", self._client.put(key, record.to_json().encode()))

    def list_volume(self, namespace: str, name: str) -> builtins.list[VolumeRevision]:
        found = self._read("list volume", self._keys(namespace, name,
                                                     kind=volume_revision.KIND))
        return sorted((VolumeRevision.from_json(v) for v in found),
                      key=lambda r: r.revision)

    def delete_volume_all(self, namespace: str, name: str) -> None:
        for prefix in self._keys(namespace, name, kind=volume_revision.KIND):
            self._run("delete volume", self._client.delete_prefix(prefix))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(StoreUnavailableError):
            self._run("close", self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
