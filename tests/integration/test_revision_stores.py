"""One contract for both revision stores: the embedded SQLite file and etcd (the
stack's real etcd, with a compaction in the middle)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aetcd
import pytest

from gpudock.adapters.revision_store import open_revision_store
from gpudock.api.gpu_replica_set import PortBinding
from gpudock.core.revision import Revision, RevisionStore
from gpudock.errors import StoreUnavailableError
from tests.stack.localstack import LocalStack


def record(revision: int, name: str = "box", namespace: str = "team-a") -> Revision:
    return Revision(
        namespace=namespace, name=name, revision=revision, uid="uid-1",
        spec={"image": "img:1", "command": [], "gpuCount": revision, "env": [],
              "ports": [], "mounts": []},
        image="img:1", container_name=f"{namespace}_{name}-{revision}",
        gpus=tuple(f"GPU-{i}" for i in range(revision)),
        ports=(PortBinding(22, 40000 + revision),), created_at="2026-11-22T10:00:00Z",
        change_cause=f"change {revision}", generation=revision)


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RevisionStore]:
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'revisions.sqlite3'}"
    else:
        stack: LocalStack = request.getfixturevalue("stack")
        url = f"etcd://127.0.0.1:{stack.etcd_port}/gpudock-test-{uuid.uuid4().hex[:8]}"
    opened = open_revision_store(url, "gpu-node-1")
    yield opened
    opened.close()


def test_put_get_list_in_revision_order(store: RevisionStore) -> None:
    for revision in (3, 1, 12, 2):
        store.put(record(revision))
    store.put(record(1, name="other"))
    store.put(record(1, name="box-2"))  # a name that starts like "box"
    assert [r.revision for r in store.list("team-a", "box")] == [1, 2, 3, 12]
    assert store.get("team-a", "box", 12) == record(12)
    assert store.get("team-a", "box", 4) is None
    assert store.list("team-b", "box") == []


def test_put_replaces_and_delete_removes(store: RevisionStore) -> None:
    store.put(record(1))
    preserved = replace(record(1), preserved_image="p:rev-1", preserved_from="abc")
    store.put(preserved)
    assert store.get("team-a", "box", 1) == preserved
    store.put(record(2))
    store.put(record(3))
    store.delete("team-a", "box", 1)
    store.delete_own("team-a", "box", 3)
    assert [r.revision for r in store.list("team-a", "box")] == [2]
    store.put(record(1, name="other"))
    store.delete_all("team-a", "box")
    assert store.list("team-a", "box") == []
    assert [r.name for r in store.list("team-a", "other")] == ["other"]


def test_history_survives_etcd_compaction(stack: LocalStack) -> None:
    """Many overwrites, then etcd drops every old MVCC revision: reads still work,
    because they never ask for an old revision of a key."""
    prefix = f"/gpudock-test-{uuid.uuid4().hex[:8]}"
    store = open_revision_store(f"etcd://127.0.0.1:{stack.etcd_port}{prefix}")
    try:
        for revision in range(1, 6):
            store.put(record(revision))
        for round_ in range(20):  # churn: many MVCC versions of the same keys
            store.put(replace(record(5), change_cause=f"round {round_}"))

        async def compact() -> None:
            client = aetcd.Client(host="127.0.0.1", port=stack.etcd_port)
            await client.connect()
            try:
                written = await client.put(f"{prefix}/scratch".encode(), b"x")
                await client.compact(written.header.revision, physical=True)
            finally:
                await client.close()

        asyncio.run(compact())
        records = store.list("team-a", "box")
        assert [r.revision for r in records] == [1, 2, 3, 4, 5]
        assert records[-1].change_cause == "round 19"
        assert store.get("team-a", "box", 3) == record(3)
        store.put(record(6))  # and writes go on after the compaction
        assert store.get("team-a", "box", 6) == record(6)
    finally:
        store.close()


def test_27_nodes_sharing_one_etcd_prefix_keep_their_own_records(stack: LocalStack) -> None:
    """The soak found one etcd prefix given to two nodes (as the chart's one
    agent.store URL does) losing an instance's history on migration: the target put
    the received records under the source's keys, then the source's clean-up deleted
    every record of the instance. Each node now has its own keys under the prefix."""
    url = f"etcd://127.0.0.1:{stack.etcd_port}/gpudock-test-{uuid.uuid4().hex[:8]}"
    source, target = open_revision_store(url, "node-a"), open_revision_store(url, "node-b")
    try:
        for revision in (1, 2):
            source.put(record(revision))
            target.put(replace(record(revision), saved_layer=f"/b/layers/rev-{revision}"))
        source.delete_all("team-a", "box")  # the source's clean-up after the switch
        assert source.list("team-a", "box") == []
        assert [r.saved_layer for r in target.list("team-a", "box")] == [
            "/b/layers/rev-1", "/b/layers/rev-2"]
    finally:
        source.close()
        target.close()


def test_27_records_written_before_the_node_layout_are_read_and_deleted(
        stack: LocalStack) -> None:
    """An agent upgraded from the shared layout still sees its history: the records
    under the bare prefix are read beneath the node's own, and deleted with them."""
    url = f"etcd://127.0.0.1:{stack.etcd_port}/gpudock-test-{uuid.uuid4().hex[:8]}"
    before, node = open_revision_store(url), open_revision_store(url, "node-a")
    try:
        for revision in (1, 2, 3):
            before.put(record(revision))
        node.put(replace(record(3), change_cause="written after the upgrade"))
        records = node.list("team-a", "box")
        assert [r.revision for r in records] == [1, 2, 3]
        assert records[-1].change_cause == "written after the upgrade"
        assert node.get("team-a", "box", 1) == record(1)
        node.delete("team-a", "box", 1)  # a prune
        assert [r.revision for r in node.list("team-a", "box")] == [2, 3]
        node.delete_all("team-a", "box")
        assert node.list("team-a", "box") == []
        assert before.list("team-a", "box") == []
    finally:
        before.close()
        node.close()


def test_a_migration_target_deleting_what_it_received_keeps_the_sources_older_records(
        stack: LocalStack) -> None:
    """Under a shared prefix, records from before the node layout are read by every
    node. A target that removes the records a failed migration brought (delete_own)
    must leave those: they are the source's history, read beneath its own keys."""
    url = f"etcd://127.0.0.1:{stack.etcd_port}/gpudock-test-{uuid.uuid4().hex[:8]}"
    before = open_revision_store(url)
    source, target = open_revision_store(url, "node-a"), open_revision_store(url, "node-b")
    try:
        for revision in (1, 2):
            before.put(record(revision))  # node-a's, written before its upgrade
        source.put(record(3))
        for revision in (1, 2, 3):  # what the transfer brought to node-b
            target.put(replace(record(revision), saved_layer=f"/b/layers/rev-{revision}"))
        for received in target.list("team-a", "box"):  # the failed migration's leftovers
            target.delete_own("team-a", "box", received.revision)
        assert [r.revision for r in source.list("team-a", "box")] == [1, 2, 3]
        assert [r.saved_layer for r in target.list("team-a", "box")] == [None, None]
        assert [r.revision for r in before.list("team-a", "box")] == [1, 2]
    finally:
        for store in (before, source, target):
            store.close()


def test_unreachable_etcd_is_a_transient_error(tmp_path: Path) -> None:
    from tests.stack.processes import free_port

    with pytest.raises(StoreUnavailableError):
        open_revision_store(f"etcd://127.0.0.1:{free_port()}").list("a", "b")


def test_unwritable_sqlite_is_a_transient_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreUnavailableError):
        open_revision_store(f"sqlite:{blocker / 'revisions.sqlite3'}")
