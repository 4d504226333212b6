"""A container's writable layer on overlay2, carried to another container as files.

On Docker's overlay2 driver a container's filesystem is its image's layers (read
only) under one writable directory, the "upper dir": every file the user created or
changed is there, every file the user deleted from the image is a whiteout there (a
character device 0/0), and every image directory the user replaced is an opaque
directory there (the xattr ``trusted.overlay.opaque``). So two containers of the same
image whose upper dirs hold the same entries have the same filesystem, and a
container's disk can be carried into a new one by copying that directory while both
are stopped: no ``docker commit`` (which archives the changes into a new image layer
at about a tenth of a file copy's speed). The copy keeps owners, modes, times,
xattrs, hard links, holes and device nodes, and shares blocks where the filesystem
can (a reflink on XFS or btrfs; see tree_copy).

A copy lands in the new container's upper dir all at once: it is made beside it,
checked entry by entry (without reading the files' bytes again), and renamed over the
empty directory Docker created, so a crash leaves the new container either untouched
(and the copy is made again) or complete. The source is never changed.

An update carries the disk forward with one copy, most of it made while the instance
still serves: ``pre_copy_layer`` copies the running container's upper dir beside
where its save goes; once it is stopped, ``save_layer`` copies only what changed
since (a file whose inode, size, mtime and ctime are those the pre-copy read is
linked from there); then ``hand_over`` gives the stopped container's upper dir itself
to the new container by rename (one filesystem), and the copy stays as the saved
revision. The saved copy never becomes a running container's layer: its files may
be shared with earlier saved copies.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from gpudock.adapters import file_data, tree_copy
from gpudock.adapters.docker.inspect import upper_dir_of
from gpudock.adapters.host_tools import VolumeToolError
from gpudock.adapters.user_trees import remove_tree

STAGING_SUFFIX = ".gpudock-incoming"
PRE_COPY_SUFFIX = ".gpudock-pre-copy"


class LayerCopyError(VolumeToolError):
    """The writable layer could not be carried over; the source was kept."""


class LayerSpaceError(LayerCopyError):
    """The copy ran out of room where it was made (the kernel said "No space left on
    device"); the source was kept."""


_NO_SPACE_TEXT = "No space left"  # ENOSPC, as strerror words it


def writable_layer(inspect: dict[str, Any]) -> Path | None:
    """The upper dir of an inspected container when it is on overlay2 and this
    process can reach it; None otherwise (the caller falls back to docker commit)."""
    return reachable(upper_dir_of(inspect))


def reachable(upper: str | None) -> Path | None:
    """A writable layer directory Docker named, when this process can reach it."""
    if upper is None:
        return None
    path = Path(upper)
    return path if path.is_dir() else None


def layer_home(driver: str, docker_root: str) -> Path | None:
    """Where saved writable layers live: in Docker's root directory, beside overlay2's
    own (one filesystem, so a copy can share blocks and a save can share files), when
    Docker uses overlay2 and this process can write there; None otherwise."""
    if driver != "overlay2" or not docker_root:
        return None
    if not os.access(Path(docker_root, "overlay2"), os.W_OK):
        return None
    return Path(docker_root, "gpudock", "layers")


def copy_layer(source: Path, target: Path) -> None:
    """Give the never-started container whose upper dir is ``target`` (empty) the
    entries of ``source``: a stopped container's upper dir, or a saved copy of one."""
    if filled(target):
        raise LayerCopyError(f"{target} is not empty: its container has run; nothing "
                             "was copied")
    _staged_copy(source, target, "copying the writable layer")


def hand_over(source: Path, saved: Path, target: Path) -> None:
    """Give the never-started container whose upper dir is ``target`` (empty) the
    upper dir ``source`` of a stopped container, by rename, once it is checked to hold
    what ``saved`` (the copy saved from it) holds, entry by entry (no file's bytes
    are read). The stopped container is left without a writable layer (Docker
    refuses to start it) until the layer is moved back or it is removed.
    LayerCopyError (nothing moved) when the two differ, or live on two filesystems."""
    if filled(target):
        raise LayerCopyError(f"{target} is not empty: its container has run; nothing "
                             "was moved")
    try:
        tree_copy.verify_copy(saved, source, content=False)
        source.rename(target)
    except (OSError, VolumeToolError) as exc:
        raise LayerCopyError(f"handing {source} over to {target}: {exc}") from exc


def pre_copy_layer(source: Path, saved: Path,
                   previous: Path | None = None) -> tree_copy.PreCopy:
    """While its container runs: copy an upper dir beside ``saved`` (where its save
    goes), noting the state of each file read whole and unchanged, for save_layer.
    LayerCopyError (nothing left) when it cannot be made."""
    staging = saved.with_name(saved.name + PRE_COPY_SUFFIX)
    remove_tree(staging, ignore_errors=True)  # one a crash left
    made = tree_copy.PreCopy(staging)
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        tree_copy.copy_tree(source, staging, previous, noting=made)
        # Its data on disk now, while the container still serves: else the writeback
        # of the whole copy falls in the downtime (Docker's create and start of the
        # next container wait for it on this filesystem).
        file_data.sync_filesystem(staging)
    except (OSError, VolumeToolError) as exc:
        remove_tree(staging, ignore_errors=True)
        raise LayerCopyError(f"copying {source} while it is in use: {exc}") from exc
    return made


def save_layer(source: Path, saved: Path, previous: Path | None = None,
               pre_copy: tree_copy.PreCopy | None = None) -> None:
    """Keep a copy of a stopped container's upper dir at ``saved`` (which must not
    exist yet), for a later rollback or start; it appears only once complete.

    With ``previous`` (an earlier saved copy of the same resource's disk) every file
    unchanged since then is a hard link to it instead of a copy (tree_copy's
    ``share_with``: same bytes, mode, owner and xattrs), so history costs what changed
    between revisions, as image layers do. Saved copies are never written again,
    which is what makes sharing their files safe; a running container never gets a
    linked file (copy_layer copies, hand_over moves the container's own layer).

    With ``pre_copy`` (pre_copy_layer's, of this source) a file unchanged since it was
    read there is linked from it, not copied; the pre-copy is removed after."""
    try:
        if saved.exists():
            raise LayerCopyError(f"{saved} exists already; nothing was copied")
        saved.parent.mkdir(parents=True, exist_ok=True)
        _staged_copy(source, saved, "saving the writable layer", share_with=previous,
                     pre_copy=pre_copy)
    finally:
        remove_tree(saved.with_name(saved.name + PRE_COPY_SUFFIX), ignore_errors=True)


def _staged_copy(source: Path, destination: Path, what: str,
                 share_with: Path | None = None,
                 pre_copy: tree_copy.PreCopy | None = None) -> None:
    """Copy beside ``destination``, check, then rename onto it (rename(2) replaces
    an empty directory atomically, or creates the name)."""
    staging = destination.with_name(destination.name + STAGING_SUFFIX)
    remove_tree(staging, ignore_errors=True)  # an attempt a crash cut short
    staging.mkdir()
    try:
        tree_copy.copy_tree(source, staging, share_with, pre_copy)
        tree_copy.verify_copy(source, staging, content=False)
        staging.rename(destination)
    except (OSError, VolumeToolError) as exc:
        remove_tree(staging, ignore_errors=True)
        # The system's words (or the kernel's ENOSPC) is read here, once, into a type.
        error = LayerSpaceError if _NO_SPACE_TEXT in str(exc) else LayerCopyError
        raise error(f"{what} {source} to {destination}: {exc}; the source "
                    "was kept") from exc


def remove_saved(saved: Path, home: Path) -> bool:
    """Remove a saved layer (and what a save cut short left beside it), and its
    resource's directory once empty; only ever under ``home`` (False, nothing removed,
    for a path elsewhere). Files it shares with other saved layers stay theirs (a hard
    link is one name of many)."""
    saved = Path(os.path.normpath(saved))
    if not saved.is_relative_to(home) or saved == home:
        return False
    for path in (saved, saved.with_name(saved.name + STAGING_SUFFIX),
                 saved.with_name(saved.name + PRE_COPY_SUFFIX)):
        remove_tree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        saved.parent.rmdir()  # only when empty
    return True


def remove_pre_copies(home: Path) -> None:
    """Every pre-copy under ``home`` (what a file's state was when read lives in the
    memory of the agent that made it: after a restart they are of no use)."""
    for staging in home.glob(f"*/*{PRE_COPY_SUFFIX}"):
        remove_tree(staging, ignore_errors=True)


def filled(directory: Path) -> bool:
    """True when the directory holds anything."""
    with os.scandir(directory) as entries:
        return any(True for _ in entries)
