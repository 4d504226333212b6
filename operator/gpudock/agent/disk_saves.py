"""A GpuReplicaSet's disk between its containers: saved when one stops for good (a
copy of its writable layer on overlay2, else a `docker commit`), put into the next
container before it starts, removed when its revision is pruned or purged.

The reconciler decides when (core/replica_set/plan.py plans PreserveDisk,
StartRevision with a layer, PruneRevision, PurgeHistory); this module does the I/O
of each step, with its crash points, and says what is saved (SavedDisks) for the
next plan. docs/revisions.md has the steps of a rollout and what each keeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from gpudock import metrics
from gpudock.adapters import overlay_layers, tree_copy
from gpudock.adapters.docker.errors import DiskFullError
from gpudock.adapters.filesystem_info import free_bytes, free_inodes
from gpudock.adapters.user_trees import remove_tree, tree_usage
from gpudock.api.reasons import Reason
from gpudock.core.observed import ResourceKey
from gpudock.core.ports import ContainerRuntime
from gpudock.core.replica_set.saved_disks import SavedDisks, preserved_repository
from gpudock.core.revision import Revision, RevisionStore, layers_named
from gpudock.crash_points import CrashPoints
from gpudock.errors import TransientError, UserError
from gpudock.settings import Settings

logger = logging.getLogger(__name__)
SAVE_MARGIN = 64 * 2**20  # room a save needs beyond its writable layer
STATE_MARGIN = 16 * 2**20  # room the revision store needs in the state dir
# Inodes a save and the next container need beyond one per entry of the saved layer
# (the container's init layer and its directories, the store's files).
INODE_MARGIN = 1000
# A container whose writable layer could not be saved whole is not stopped for
# another try before this many seconds (each try stops the instance).
FAILED_SAVE_RETRY = 600.0
MAX_PRE_COPIES = 8  # pre-copies kept for saves still to come (one per stopping container)


def _mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


class DiskSaves:
    def __init__(self, settings: Settings, docker: ContainerRuntime, store: RevisionStore,
                 crash: CrashPoints, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._docker = docker
        self._store = store
        self._crash = crash
        self._clock = clock
        self._home: tuple[Path | None] | None = None  # asked of Docker once
        # By container ID: when its save failed, and the refusal's message.
        self._failed: dict[str, tuple[float, str]] = {}
        # By container ID: the copy of its layer made while it ran, and where its
        # save goes (taken by the save after the stop; lost with the agent, when the
        # save copies everything).
        self._pre_copies: dict[str, tuple[str, tree_copy.PreCopy]] = {}
        self._pre_copies_lock = threading.Lock()  # reconciles of several resources

    # ------------------------------------------------------------------ what is saved
    def layers_home(self) -> Path | None:
        """Where saved writable layers live on this node (None: Docker does not use
        overlay2, or the agent cannot reach its root); asked of Docker once."""
        if self._home is None:
            self._home = (overlay_layers.layer_home(*self._docker.storage()),)
            if self._home[0] is not None:  # what the pre-copies noted died with the
                overlay_layers.remove_pre_copies(self._home[0])  # agent that made them
        return self._home[0]

    def layer_root(self) -> str | None:
        """Where new saves copy a writable layer to; None: they commit."""
        home = self.layers_home() if self._settings.disk_saves != "commit" else None
        return str(home) if home is not None else None

    def saved(self, key: ResourceKey, records: tuple[Revision, ...]) -> SavedDisks:
        """What the records' saved disks are now: the resource's committed images, the
        saved layers still on disk, and where a new save goes."""
        layers = frozenset(p for p in layers_named(records) if Path(p).is_dir())
        return SavedDisks(self._docker.preserved_tags(preserved_repository(key)),
                               layers, self.layer_root())

    # -------------------------------------------------------------------------- save
    def check_room(self, container_id: str, name: str) -> None:
        """Refuse to stop a container for a save that cannot be made: one whose
        writable layer could not be saved whole a short while ago (FAILED_SAVE_RETRY),
        or one that cannot fit: the saved disk needs about what the save writes in
        Docker's root (layer_usage: bytes, and an inode per entry), the next
        container a few inodes more, the record a little room in the state dir.
        Raises UserError (DiskSaveFailed, DiskFull) while the container still runs."""
        now = self._clock()
        for stale in [c for c, (at, _) in self._failed.items() if now - at >= FAILED_SAVE_RETRY]:
            del self._failed[stale]
        if container_id in self._failed:  # a new error: one raised again keeps every
            # traceback it was raised through (the soak's RSS growth, read in the code)
            raise UserError(Reason.DISK_SAVE_FAILED, self._failed[container_id][1])
        layer_bytes, layer_inodes = self.layer_usage(container_id, name)
        needed = int(layer_bytes * 1.05) + SAVE_MARGIN
        free = self._docker.free_bytes()
        if free is not None and free < needed:
            raise DiskFullError(f"saving the disk of {name} needs about {_mib(needed)} in "
                                f"Docker's root directory; {_mib(free)} are free. Free "
                                "some space on the node; the instance keeps running")
        inodes_needed = layer_inodes + INODE_MARGIN
        inodes = self._docker.free_inodes()
        if inodes is not None and inodes < inodes_needed:
            raise DiskFullError(f"saving the disk of {name} and starting its next "
                                f"container need about {inodes_needed} inodes in Docker's "
                                f"root directory; {inodes} are free. Free some files on "
                                "the node; the instance keeps running")
        state = self._settings.state_dir
        state_bytes, state_inodes = free_bytes(state), free_inodes(state)
        if state_bytes < STATE_MARGIN:
            raise DiskFullError(f"the agent's state directory {state} has {_mib(state_bytes)} "
                                f"free; the revision record needs {_mib(STATE_MARGIN)}. Free "
                                "some space there; the instance keeps running")
        if state_inodes is not None and state_inodes < INODE_MARGIN:
            raise DiskFullError(f"the agent's state directory {state} has {state_inodes} "
                                f"inodes free; the revision record needs {INODE_MARGIN}. "
                                "Free some files there; the instance keeps running")

    def layer_bytes(self, container_id: str, name: str) -> int:
        """What saving the container's disk writes, in bytes (layer_usage)."""
        return self.layer_usage(container_id, name)[0]

    def layer_usage(self, container_id: str, name: str) -> tuple[int, int]:
        """What saving the container's disk writes: bytes and inodes. A copy of its
        writable layer takes what the layer holds on disk, its blocks (a sparse
        terabyte takes nothing, and stays a hole in the copy); never the files'
        apparent sizes. A commit writes every file dense (Docker's archive keeps no
        holes), so there it is the apparent size, as Docker counts it (SizeRw). Either
        takes an inode per entry of the layer."""
        upper = overlay_layers.reachable(self._docker.writable_layer_dir(container_id))
        if upper is not None:
            try:
                blocks, inodes = tree_usage(upper)
            except OSError as exc:  # a tree the running container keeps changing
                raise TransientError(f"measuring the writable layer of {name} "
                                     f"({upper}): {exc}") from exc
            if self.layer_root() is not None:
                return blocks, inodes
            return self._docker.writable_layer_bytes(container_id), inodes
        return (self._docker.writable_layer_bytes(container_id),
                self._docker.writable_layer_entries(container_id))

    def pre_copy(self, container_id: str, name: str, layer: str,
                 previous: str | None) -> None:
        """While the container still runs, before the stop of a save to ``layer``:
        copy its writable layer beside there, so that the save after the stop copies
        only what changed since. One that cannot be made is dropped (the save then
        copies everything), never a reason not to save."""
        self._drop_pre_copy(container_id)
        if self._settings.disk_saves != "layer":
            return
        upper = overlay_layers.reachable(self._docker.writable_layer_dir(container_id))
        if upper is None:
            return
        try:
            with metrics.timed(metrics.DISK_SECONDS, "layer-pre-copy"):
                made = overlay_layers.pre_copy_layer(upper, Path(layer),
                                                     Path(previous) if previous else None)
        except overlay_layers.LayerCopyError as exc:
            logger.info("%s: no copy made while it runs (its save copies all): %s",
                        name, exc)
            return
        with self._pre_copies_lock:
            dropped = []  # of stops that never came
            while len(self._pre_copies) >= MAX_PRE_COPIES:
                dropped.append(self._pre_copies.pop(next(iter(self._pre_copies))))
            self._pre_copies[container_id] = (layer, made)
        for _, stale in dropped:
            remove_tree(stale.root, ignore_errors=True)

    def _take_pre_copy(self, container_id: str) -> tuple[str, tree_copy.PreCopy] | None:
        with self._pre_copies_lock:
            return self._pre_copies.pop(container_id, None)

    def _drop_pre_copy(self, container_id: str) -> None:
        found = self._take_pre_copy(container_id)
        if found is not None:
            remove_tree(found[1].root, ignore_errors=True)

    def save(self, key: ResourceKey, container_id: str, name: str, image: str,
             record: Revision | None, layer: str | None,
             previous: str | None) -> list[tuple[Reason, str]]:
        """Save a stopped container's disk: its writable layer copied to ``layer``
        where there is one (and the record to note it in), else committed as
        ``image``. Returns (reason, message) of what was done. A save that does not
        fit (DiskFull) or a layer that cannot be saved whole (DiskSaveFailed, never
        committed instead) starts the container again (its revision goes back to
        serving) and raises that UserError; the next try is refused before the stop."""
        try:
            if layer is not None and record is not None:
                return self._save_layer(container_id, name, layer, previous, record)
            return self._commit(container_id, name, image, record)
        except UserError as exc:
            if exc.reason not in (Reason.DISK_FULL, Reason.DISK_SAVE_FAILED):
                raise
            if exc.reason is Reason.DISK_FULL:  # what the failed commit wrote goes
                self._docker.remove_dangling_images(key.namespace, key.name)
            self._docker.start(container_id, name)
            raise

    def _commit(self, container_id: str, name: str, image: str,
                record: Revision | None) -> list[tuple[Reason, str]]:
        """Commit a stopped container, flatten past the layer threshold, note it."""
        with metrics.timed(metrics.DISK_SECONDS, "commit"):
            self._docker.commit(container_id, name, image)
        self._crash.reach("PreserveDisk.committed")
        done = [(Reason.DISK_SAVED, f"filesystem of {name} saved as {image}")]
        layers = self._docker.layer_count(image)
        if layers > self._settings.max_image_layers:
            with metrics.timed(metrics.DISK_SECONDS, "commit"):
                self._docker.flatten(container_id, name, image)
            self._crash.reach("PreserveDisk.flattened")
            done.append((Reason.DISK_FLATTENED, f"{image} had {layers} layers "
                         f"(> {self._settings.max_image_layers}): flattened to one"))
        if record is not None:  # the commit is the disk now, not an earlier saved layer
            self._store.put(replace(record, preserved_image=image,
                                    preserved_from=container_id, saved_layer=None))
        return done

    def _save_layer(self, container_id: str, name: str, layer: str, previous: str | None,
                    record: Revision) -> list[tuple[Reason, str]]:
        """Copy a stopped container's writable layer to ``layer`` and note it in the
        record. A layer that cannot be copied whole is refused (DiskSaveFailed), never
        committed instead: docker commit would drop its xattrs and fill its holes."""
        named = self._docker.writable_layer_dir(container_id)
        upper = overlay_layers.reachable(named)
        if upper is None:
            raise self._refused(container_id, name, f"its writable layer ({named}) "
                                "cannot be reached from the agent")
        saved = Path(layer)
        if saved.exists():
            # A save of this container that a crash left un-noted, or one the record
            # notes of a container that ran again since: made again (the container,
            # not removed before its save is noted, still has every file).
            remove_tree(saved)
        found = self._take_pre_copy(container_id)
        pre_copy = found[1] if found is not None and found[0] == layer else None
        try:
            with metrics.timed(metrics.DISK_SECONDS, "layer-save"):
                overlay_layers.save_layer(upper, saved,
                                          Path(previous) if previous else None, pre_copy)
        except overlay_layers.LayerSpaceError as exc:
            raise DiskFullError(f"saving the disk of {name}: {exc}") from exc
        except overlay_layers.LayerCopyError as exc:
            raise self._refused(container_id, name, str(exc)) from exc
        finally:
            if found is not None:
                remove_tree(found[1].root, ignore_errors=True)
        self._failed.pop(container_id, None)
        self._crash.reach("PreserveDisk.layerSaved")
        self._store.put(replace(record, saved_layer=layer, preserved_from=container_id))
        taken = (f" ({pre_copy.reused} of its files copied while it ran, unchanged "
                 "since)") if pre_copy is not None and pre_copy.reused else ""
        return [(Reason.DISK_SAVED, f"writable layer of {name} saved to {layer}{taken}")]

    def _refused(self, container_id: str, name: str, why: str) -> UserError:
        """The refusal of a layer save, remembered so that the container is not
        stopped for the same failure at every pass (check_room)."""
        logger.warning("%s: disk not saved: %s", name, why)
        error = UserError(Reason.DISK_SAVE_FAILED, (
            f"the disk of {name} could not be saved whole: {why}. Nothing was committed "
            "instead (docker commit drops xattrs and holes); the instance runs on, and "
            f"the save is tried again in {FAILED_SAVE_RETRY / 60:.0f} minutes"))
        self._failed[container_id] = (self._clock(), error.message)
        return error

    # ----------------------------------------------------------------------- restore
    def put_layer(self, layer: str, name: str, container_id: str,
                  unless_there: bool = False,
                  saved_from: str | None = None) -> Callable[[], None] | None:
        """Copy a saved writable layer into a never-started container; with
        ``unless_there``, nothing when the container's layer already has files (a copy
        lands all at once, so those are the copy). With ``saved_from``, the stopped
        container the layer was saved from: its own writable layer is moved into the
        new container instead (hand_over, when it still holds what was saved); what
        moves it back is returned, for a new container Docker then refuses to start
        (the same old container starts again, with its own layer). Raises UserError
        DiskRestoreFailed."""
        if not unless_there:
            self._crash.reach("StartRevision.created")
        named = self._docker.writable_layer_dir(container_id)
        undo: Callable[[], None] | None = None
        try:
            upper = overlay_layers.reachable(named)
            if upper is None:
                raise overlay_layers.LayerCopyError(
                    f"the writable layer of {name} ({named}) cannot be reached")
            if unless_there and overlay_layers.filled(upper):
                return None
            if saved_from is not None and self._settings.disk_saves == "layer":
                undo = self._hand_over(saved_from, layer, upper)
            if undo is None:
                with metrics.timed(metrics.DISK_SECONDS, "layer-restore"):
                    overlay_layers.copy_layer(Path(layer), upper)
        except (OSError, overlay_layers.LayerCopyError) as exc:
            raise UserError(Reason.DISK_RESTORE_FAILED, f"the saved disk {layer} could not "
                            f"be put into {name}: {exc}") from exc
        if not unless_there:
            self._crash.reach("StartRevision.layerCopied")
        return undo

    def _hand_over(self, old_id: str, layer: str,
                   upper: Path) -> Callable[[], None] | None:
        """Move the stopped container ``old_id``'s writable layer into ``upper``; it
        stays without one (it cannot start) until the plan removes it, once the new
        container runs. Returns what moves the layer back; None, nothing done, when
        that container is gone, runs, or no longer holds what was saved (the caller
        copies the saved layer)."""
        old = next((c for c in self._docker.list_containers() if c.id == old_id), None)
        if old is None or old.running or old.status not in ("exited", "created"):
            return None
        source = overlay_layers.reachable(self._docker.writable_layer_dir(old_id))
        if source is None:
            return None
        try:
            with metrics.timed(metrics.DISK_SECONDS, "layer-hand-over"):
                overlay_layers.hand_over(source, Path(layer), upper)
        except overlay_layers.LayerCopyError as exc:
            logger.warning("%s: writable layer not handed over, the saved one is copied: "
                           "%s", old.name, exc)
            return None
        self._crash.reach("StartRevision.layerHandedOver")

        def hand_back() -> None:
            upper.rename(source)
            logger.info("%s: writable layer moved back (its next container did not start)",
                        old.name)
        return hand_back

    # ------------------------------------------------------------------------ remove
    def remove_layers(self, record: Revision) -> None:
        """A pruned revision's saved layers, unless another record still needs one:
        as its saved disk, or as the disk it started from while it has none of its
        own (its container may not have received it yet)."""
        others = {p for r in self._store.list(record.namespace, record.name)
                  if r.revision != record.revision
                  for p in (r.saved_layer,
                            None if r.saved_layer or r.preserved_image else r.layer)}
        self.remove_saved({record.saved_layer, record.layer} - others)

    def remove_saved(self, layers: Iterable[str | None]) -> None:
        """Remove saved layers (only ever under this node's layers home)."""
        home = self.layers_home()
        if home is None:
            return
        for saved in sorted(p for p in layers if p):
            overlay_layers.remove_saved(Path(saved), home)
