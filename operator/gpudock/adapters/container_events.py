"""The node's containers as last inspected, kept true by following Docker's event
stream, so a reconcile of an idle resource asks Docker nothing about containers.

Without it every resync of every resource listed and inspected every container on
the node: the cost of an idle node grew with the square of its resources. With it:

- while the stream is followed, an entry is reused until an event names its container
  (start, die, stop, rename, update, destroy...) or a step of the agent's own changes
  it (``changed``); only those are inspected again, and the container list is asked
  for again only after a create;
- each event of a gpudock container is passed to ``on_event`` with the resource's UID,
  so drift (a container stopped, killed or removed behind the agent's back) wakes its
  resource at once instead of at the next resync;
- when the stream is not followed (not yet connected, or broken until it reconnects)
  ``observe`` returns None and the caller lists and inspects everything, as before.

The same stream keeps what a reconcile asks of images (does the spec's image exist,
which saved disks are tagged): ``remembered`` answers from memory until an image
event (pull, load, tag, untag, delete, import, a container's commit) or one of the
agent's own image steps (``images_changed``) makes every image answer stale.

The events of the agent's own steps wake nobody: a step tells the cache which events
it will cause (``expect``: a create and a start, a stop's kill, die and stop, ...),
and each expected event is taken once, when it comes, without calling ``on_event``
(the reconcile that took the step observes the node after it anyway). Anything else
(a second kill after a stop timeout, a die after the agent's start) still wakes the
resource. An expectation that no event met is dropped after EXPECT_SECONDS.

Every entry carries the generation of its container at the time the inspect began: a
result that an event overtook is dropped rather than stored.

Docker resets a container's exit code when its restart policy starts it again, so an
inspect of a crash-looping container caught running says "exit code 0". The code of
each container's last ``die`` event is kept and given instead, so the status shows
the exit that made Docker restart it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from gpudock.core import labels
from gpudock.core.observed import ObservedContainer

logger = logging.getLogger(__name__)
T = TypeVar("T")
RECONNECT_SECONDS = 1.0
EXPECT_SECONDS = 10.0  # an expected event that did not come by then is forgotten
# Events that change nothing the agent observes of a container.
IGNORED = ("exec_", "top", "resize", "attach", "archive-path", "extract-to-dir", "export",
           "commit", "health_status", "copy")


class ContainerCache:
    def __init__(self, events: Callable[[], Iterable[dict[str, Any]]]) -> None:
        """``events`` opens Docker's stream of container events (it blocks until the
        stream is established, then yields decoded events)."""
        self._events = events
        self._on_event: Callable[[str], None] | None = None
        self._on_reconnect: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._entries: dict[str, ObservedContainer | None] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0  # bumped whenever the stream (re)connects or breaks
        self._live = False
        self._listed = False  # the entries' keys are every container on the node
        self._creates = 0  # creates seen (a listing they overtook is not trusted)
        # Held while the containers are listed: a second caller must not take the
        # entries for the node's containers before the listing has filled them in
        # (it would see a node without containers).
        self._listing = threading.Lock()
        self._image_epoch = 0  # bumped by every change of the node's images
        self._exit_codes: dict[str, int] = {}  # of each container's last die event
        self._image_answers: dict[tuple[str, str], Any] = {}  # cleared by every bump
        self._closed = False
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        # (container ID or name, action) -> when the agent's step said it would come
        self._expected: dict[tuple[str, str], list[float]] = {}

    def follow(self, on_event: Callable[[str], None] | None = None,
               on_reconnect: Callable[[], None] | None = None) -> None:
        """Start following the stream (once); ``on_event`` gets the resource UID of
        each event of a gpudock container, from the stream's thread; ``on_reconnect``
        is called when the stream is back after a break (a restart of Docker): the
        events of the break are lost, so every resource has to look again."""
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, daemon=True,
                                            name="docker-events")
            self._thread.start()

    def close(self) -> None:
        self._closed = True
        stream = self._stream
        if stream is not None and hasattr(stream, "close"):
            stream.close()

    def _follow(self) -> None:
        tries = 0
        while not self._closed:
            tries += 1
            try:
                stream = self._events()
                self._reset(live=True, stream=stream)
                if tries > 1 and self._on_reconnect is not None:
                    # What changed during the break (a restart of Docker stops and
                    # starts containers) came as no event: the soak found instances
                    # shown Ready for up to 4 resyncs with no container running.
                    self._on_reconnect()
                for event in stream:
                    self._apply(event)
                    if self._closed:
                        break
            except Exception as exc:  # any break of the stream: reconnect
                if not self._closed:
                    logger.warning("Docker event stream broke, reconnecting: %s", exc)
            self._reset(live=False, stream=None)
            if not self._closed:
                time.sleep(RECONNECT_SECONDS)

    def live(self) -> bool:
        """Whether the stream is followed now (the cache is true to Docker)."""
        with self._lock:
            return self._live

    def _reset(self, *, live: bool, stream: Any) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._generations.clear()
            self._image_answers.clear()
            self._exit_codes.clear()
            self._listed = False
            self._live = live
            self._stream = stream

    def _apply(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        if event.get("Type") == "image":
            self.images_changed()
            return
        if action == "commit":  # a container's commit makes an image
            self.images_changed()
        actor = event.get("Actor") or {}
        container_id = str(actor.get("ID") or event.get("id") or "")
        if not container_id or action.startswith(IGNORED):
            return
        attributes = actor.get("Attributes") or {}
        with self._lock:
            self._bump(container_id)
            if action == "destroy":
                self._entries.pop(container_id, None)
                self._generations.pop(container_id, None)
                self._exit_codes.pop(container_id, None)
            elif action == "create":
                self._listed = False
                self._creates += 1
            elif action == "die" and str(attributes.get("exitCode", "")).isdigit():
                self._exit_codes[container_id] = int(attributes["exitCode"])
            own = self._take_expected((container_id, str(attributes.get("name") or "")),
                                      action.split(":", 1)[0])
        uid = attributes.get(labels.UID)
        if uid and self._on_event is not None and not own:
            self._on_event(str(uid))

    def _take_expected(self, names: tuple[str, ...], action: str) -> bool:
        """Whether the event was one an agent's step said it would cause (taken once);
        called with the lock held. Old expectations are dropped on the way."""
        now = time.monotonic()
        for key in [k for k, times in self._expected.items()
                    if all(now - t > EXPECT_SECONDS for t in times)]:
            del self._expected[key]
        for name in names:
            times = self._expected.get((name, action))
            if name and times:
                times.pop(0)
                if not times:
                    del self._expected[(name, action)]
                return True
        return False

    def _bump(self, container_id: str) -> None:
        """An entry to inspect again; the generation tells an inspect under way that
        it is out of date. Kept for entries only (a removed container's ID, bumped by
        the step that removed it after its destroy event, would stay for good)."""
        if container_id in self._entries:
            self._generations[container_id] = self._generations.get(container_id, 0) + 1
            self._entries[container_id] = None

    # ---------------------------------------------------------------- the agent's side
    def expect(self, container: str, *actions: str) -> None:
        """A step of the agent is about to cause these events of ``container`` (its
        ID, or its name when the ID is not known yet): they wake nobody. What an
        earlier step of the same container expected and did not come (a stop of a
        container that had stopped already causes no event) is dropped: it must not
        hide what happens after this step."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k in self._expected if k[0] == container]:
                del self._expected[key]
            for action in actions:
                self._expected.setdefault((container, action), []).append(now)

    def changed(self, container_id: str) -> None:
        """A step of the agent changed this container: inspect it again next time
        (its own event may come later than the next observation)."""
        with self._lock:
            self._bump(container_id)

    def images_changed(self) -> None:
        """An image was made, tagged, untagged or removed: ask Docker again."""
        with self._lock:
            self._image_epoch += 1
            self._image_answers.clear()

    def remembered(self, question: tuple[str, str], ask: Callable[[], T]) -> T:
        """Docker's answer to ``question`` about images, from memory while no image
        changed since it was asked; asked every time while the stream is not live."""
        with self._lock:
            epoch = (self._epoch, self._image_epoch)
            if self._live and question in self._image_answers:
                return self._image_answers[question]  # type: ignore[no-any-return]
        answer = ask()
        with self._lock:  # kept only when no image changed while it was asked
            if self._live and (self._epoch, self._image_epoch) == epoch:
                self._image_answers[question] = answer
        return answer

    def created(self) -> None:
        with self._lock:
            self._listed = False
            self._creates += 1

    def observe(self, list_ids: Callable[[], list[str]],
                inspect: Callable[[str], ObservedContainer | None],
                ) -> list[ObservedContainer] | None:
        """Every container on the node, inspecting only what changed; None when the
        stream is not followed now (the caller observes everything itself)."""
        with self._listing:  # one caller lists; the others wait for what it found
            with self._lock:
                if not self._live:
                    return None
                epoch, listed, creates = self._epoch, self._listed, self._creates
            if not listed:
                ids = set(list_ids())
                with self._lock:
                    if self._epoch != epoch:
                        return None
                    for gone in set(self._entries) - ids:
                        del self._entries[gone]
                        self._generations.pop(gone, None)
                    for container_id in ids:
                        self._entries.setdefault(container_id, None)
                    # The entries are the node's containers now, unless a create
                    # came while Docker was asked (then the next caller lists again).
                    self._listed = self._creates == creates
        with self._lock:
            snapshot = dict(self._entries)
            generations = {cid: self._generations.get(cid, 0) for cid in snapshot}
        result = []
        for container_id, entry in snapshot.items():
            if entry is not None:  # true when the snapshot was taken
                result.append(self._with_last_exit(entry))
                continue
            found = inspect(container_id)
            with self._lock:
                if self._epoch == epoch and container_id in self._entries:
                    if found is None:
                        del self._entries[container_id]
                        self._generations.pop(container_id, None)
                    elif self._generations.get(container_id, 0) == generations[container_id]:
                        self._entries[container_id] = found
                    # else an event overtook the inspect: used now, inspected next time
            if found is not None:
                result.append(self._with_last_exit(found))
        return result

    def _with_last_exit(self, container: ObservedContainer) -> ObservedContainer:
        """A container Docker restarted, with the exit code that made it restart."""
        if container.status != "running" or container.restart_count == 0 or \
                container.exit_code != 0:
            return container
        with self._lock:
            code = self._exit_codes.get(container.id)
        return container if code is None else replace(container, exit_code=code)
