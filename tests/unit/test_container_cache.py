"""The logic of the event-kept container cache (adapters/container_events.py), fed by
hand. That it stays true against a real dockerd is shown by the whole integration
suite (every agent there follows Docker's events) and by the drift test in
tests/integration/test_node_responsiveness.py."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from gpudock.adapters.container_events import ContainerCache
from gpudock.core.observed import ObservedContainer

UID_LABEL = "gpudock.dev/uid"
SYNC = "sync"  # the UID of the marker event _settle sends


class Stream:
    """As docker-py's event stream: iterated by one thread, closed from another."""

    def __init__(self, events: queue.Queue[dict[str, Any] | None],
                 iterated: threading.Event) -> None:
        self.events, self.iterated = events, iterated

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.iterated.set()  # the cache iterates once it has taken the stream as live
        while (event := self.events.get()) is not None:
            yield event
        raise ConnectionError("stream ended")

    def close(self) -> None:
        self.events.put(None)


class Node:
    """What the cache is told: the containers there are, and a queue of events; what
    it asks and whom it wakes is noted."""

    def __init__(self, containers: dict[str, str] | None = None) -> None:
        self.containers: dict[str, str] = dict(containers or {})  # id -> status
        self.inspected: list[str] = []
        self.lists = 0
        self.woken: list[str] = []
        self.synced = threading.Event()
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.connected = threading.Event()  # the cache follows the stream now

    def stream(self) -> Stream:
        return Stream(self.events, self.connected)

    def list_ids(self) -> list[str]:
        self.lists += 1
        return list(self.containers)

    def inspect(self, container_id: str) -> ObservedContainer | None:
        self.inspected.append(container_id)
        status = self.containers.get(container_id)
        if status is None:
            return None
        return ObservedContainer(id=container_id, name=container_id, status=status,
                                 owner=None, uid="", revision=0, gpus=())

    def wake(self, uid: str) -> None:
        if uid == SYNC:
            self.synced.set()
        else:
            self.woken.append(uid)

    def event(self, container_id: str, action: str, uid: str = "") -> None:
        self.events.put({"Action": action, "Actor": {
            "ID": container_id, "Attributes": {UID_LABEL: uid} if uid else {}}})


def _following(containers: dict[str, str]) -> tuple[Node, ContainerCache]:
    """A cache following a node's stream, after its first observation."""
    node = Node(containers)
    cache = ContainerCache(node.stream)
    cache.follow(node.wake)
    assert node.connected.wait(5)
    cache.observe(node.list_ids, node.inspect)
    return node, cache


def _settle(node: Node) -> None:
    """Wait until the stream's thread has applied every queued event: events are
    applied in order, so once a marker sent last has woken its UID, all have."""
    node.synced.clear()
    node.event("marker", "update", uid=SYNC)
    assert node.synced.wait(5)


def _states(found: list[ObservedContainer] | None) -> dict[str, str]:
    assert found is not None
    return {c.id: c.status for c in found}


def test_not_followed_means_not_trusted() -> None:
    node = Node({"a": "running"})
    cache = ContainerCache(node.stream)
    assert cache.observe(node.list_ids, node.inspect) is None


def test_an_idle_node_is_observed_without_asking_docker() -> None:
    node, cache = _following({"a": "running", "b": "exited"})
    assert sorted(node.inspected) == ["a", "b"]
    node.inspected.clear()
    for _ in range(5):
        assert _states(cache.observe(node.list_ids, node.inspect)) == {"a": "running",
                                                                       "b": "exited"}
    assert (node.lists, node.inspected) == (1, [])
    cache.close()


def test_an_event_drops_one_entry_and_wakes_its_resource() -> None:
    node, cache = _following({"a": "running", "b": "running"})
    node.inspected.clear()
    node.containers["a"] = "exited"
    node.event("a", "die", uid="uid-a")
    _settle(node)
    assert _states(cache.observe(node.list_ids, node.inspect)) == {"a": "exited",
                                                                   "b": "running"}
    assert node.inspected == ["a"]
    assert node.woken == ["uid-a"]
    cache.close()


def test_the_agents_own_change_is_seen_before_its_event() -> None:
    node, cache = _following({"a": "running"})
    node.containers["a"] = "exited"  # the agent stopped it; no event has come yet
    cache.changed("a")
    assert _states(cache.observe(node.list_ids, node.inspect)) == {"a": "exited"}
    cache.close()


def test_creates_list_again_and_destroys_drop() -> None:
    node, cache = _following({"a": "running"})
    node.containers["b"] = "created"
    cache.created()
    assert _states(cache.observe(node.list_ids, node.inspect)) == {"a": "running",
                                                                   "b": "created"}
    del node.containers["a"]
    node.event("a", "destroy")
    _settle(node)
    assert _states(cache.observe(node.list_ids, node.inspect)) == {"b": "created"}
    assert node.lists == 2
    cache.close()


def test_a_broken_stream_empties_the_cache_until_it_reconnects() -> None:
    node, cache = _following({"a": "running"})
    node.connected.clear()
    node.events.put(None)  # the stream breaks (dockerd restarted)
    assert node.connected.wait(5)  # and reconnects a second later
    node.containers["a"] = "exited"  # changed while no event could be seen
    assert _states(cache.observe(node.list_ids, node.inspect)) == {"a": "exited"}
    cache.close()


class Images:
    """Docker's answers about images, counting how often it was asked."""

    def __init__(self) -> None:
        self.tags = frozenset({"gpudock-preserved/a:rev-1"})
        self.asked = 0

    def ask(self) -> frozenset[str]:
        self.asked += 1
        return self.tags


def test_image_answers_are_remembered_until_an_image_event() -> None:
    node, cache = _following({})
    images = Images()
    for _ in range(3):
        assert cache.remembered(("tags", "a"), images.ask) == images.tags
    assert images.asked == 1
    images.tags = frozenset()
    node.events.put({"Type": "image", "Action": "untag", "Actor": {"ID": "sha256:1"}})
    _settle(node)
    assert cache.remembered(("tags", "a"), images.ask) == frozenset()
    assert images.asked == 2
    cache.close()


def test_the_agents_own_image_step_and_a_commit_make_answers_stale() -> None:
    node, cache = _following({"a": "running"})
    images = Images()
    cache.remembered(("tags", "a"), images.ask)
    cache.images_changed()  # the agent tagged or removed an image
    cache.remembered(("tags", "a"), images.ask)
    node.event("a", "commit")  # someone committed a container: a new image
    _settle(node)
    cache.remembered(("tags", "a"), images.ask)
    assert images.asked == 3
    cache.close()


def test_image_answers_are_not_remembered_while_the_stream_is_not_followed() -> None:
    cache = ContainerCache(Node().stream)
    images = Images()
    cache.remembered(("tags", "a"), images.ask)
    cache.remembered(("tags", "a"), images.ask)
    assert images.asked == 2


def test_a_restarted_container_shows_the_exit_that_made_docker_restart_it() -> None:
    node, cache = _following({"a": "running"})

    def restarted(container_id: str) -> ObservedContainer:
        # What Docker's inspect says once the restart policy started it again.
        return ObservedContainer(id=container_id, name=container_id, status="running",
                                 restart_count=1, exit_code=0)
    node.events.put({"Action": "die", "Actor": {"ID": "a", "Attributes": {
        "exitCode": "3"}}})
    node.event("a", "start")
    _settle(node)
    found = cache.observe(node.list_ids, restarted)
    assert found is not None
    assert [c.exit_code for c in found] == [3]
    cache.close()


def test_a_second_observer_waits_for_a_listing_in_progress() -> None:
    """Two reconciles observe at once while the stream has just (re)connected and the
    containers are being listed (an agent's start): the second must not take the
    still empty cache for a node without containers (it planned a new revision
    over a running one)."""
    node = Node({"a": "running"})
    cache = ContainerCache(node.stream)
    cache.follow(node.wake)
    assert node.connected.wait(5)
    listing, release = threading.Event(), threading.Event()

    def slow_list() -> list[str]:
        listing.set()
        assert release.wait(5)
        return node.list_ids()

    seen: dict[str, dict[str, str]] = {}

    def observe(who: str, list_ids: Any) -> None:
        seen[who] = _states(cache.observe(list_ids, node.inspect))

    first = threading.Thread(target=observe, args=("first", slow_list))
    first.start()
    assert listing.wait(5)
    second = threading.Thread(target=observe, args=("second", node.list_ids))
    second.start()
    second.join(1)  # it waits for the listing (or, wrongly, answers at once)
    release.set()
    first.join(5)
    second.join(5)
    assert seen == {"first": {"a": "running"}, "second": {"a": "running"}}
def test_the_events_of_the_agents_own_steps_wake_nobody_and_the_rest_do() -> None:
    node, cache = _following({"a": "running"})
    cache.expect("a", "kill", "die", "stop")  # the agent stops it
    for action in ("kill", "die", "stop"):
        node.event("a", action, uid="uid-a")
    node.event("a", "die", uid="uid-a")  # a second die was not the agent's doing
    _settle(node)
    assert node.woken == ["uid-a"]
    cache.close()


def test_a_new_step_drops_what_an_earlier_one_expected_and_never_got() -> None:
    node, cache = _following({"a": "exited"})
    cache.expect("a", "kill", "die", "stop")  # a stop of a stopped container: no event
    cache.expect("a", "start")  # the agent starts it; then it crashes
    node.event("a", "start", uid="uid-a")
    node.event("a", "die", uid="uid-a")
    _settle(node)
    assert node.woken == ["uid-a"]  # the crash is seen
    cache.close()


def test_a_create_is_expected_by_name_before_its_id_is_known() -> None:
    node, cache = _following({})
    cache.expect("ns_box-1", "create")
    node.events.put({"Action": "create", "Actor": {
        "ID": "new", "Attributes": {UID_LABEL: "uid-b", "name": "ns_box-1"}}})
    node.event("other", "create", uid="uid-c")
    _settle(node)
    assert node.woken == ["uid-c"]
    cache.close()


def test_a_removed_container_leaves_nothing_behind_in_the_cache() -> None:
    # Found reading the code for the soak's slow RSS growth: the step that removed a
    # container marked it changed after its destroy event, and its ID stayed for good.
    node, cache = _following({"a": "running"})
    for n in range(50):
        name = f"c{n}"
        node.containers[name] = "created"
        cache.created()
        node.event(name, "create")
        assert name in _states(cache.observe(node.list_ids, node.inspect))
        del node.containers[name]
        node.event(name, "destroy")
        _settle(node)
        cache.changed(name)          # the removing step's own mark, after the event
    node.containers["gone-unseen"] = "created"   # listed, gone before its inspect
    cache.created()
    cache.observe(node.list_ids, lambda _id: None)
    assert sorted(cache._generations) == []      # the leak itself
    assert _states(cache.observe(node.list_ids, node.inspect)) == {"a": "running"}
    cache.close()
