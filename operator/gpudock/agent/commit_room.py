"""The room an ImageCommit needs in Docker's root directory, checked before it starts,
so a commit that cannot fit is refused (DiskFull) with nothing written, instead of
filling the disk every tenant's containers and saves share.

What a commit writes there (Docker 20.10 to 28, its own image store):

- ``docker commit``: the container's writable layer as a new layer, every file dense
  (Docker's archive keeps no holes, so a sparse file takes its apparent size; Docker's
  SizeRw counts exactly that);
- ``docker save`` (image_rewrite.py): the whole image, every layer, into a temporary
  directory under the root before it streams it;
- ``docker load``: the whole stream again, into a temporary directory, before it
  registers the image (its layers exist already, so they are then dropped).

So at the peak: the layer, plus twice the image (the container's image with the
layer on top), plus a margin; and an inode per file of the layer in each copy.
"""

from __future__ import annotations

from gpudock.adapters import overlay_layers
from gpudock.adapters.docker.errors import DiskFullError
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.user_trees import tree_entries
from gpudock.core.observed import ObservedContainer
from gpudock.errors import TransientError

IMAGE_COPIES = 2  # docker save's and docker load's temporary copies of the image
LAYER_COPIES = 1 + IMAGE_COPIES
MARGIN = 64 * 2**20
INODE_MARGIN = 1000


def _mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def needed_bytes(layer_bytes: int, image_bytes: int) -> int:
    """What a commit of a ``layer_bytes`` writable layer (apparent size) over an
    ``image_bytes`` image writes at its peak."""
    return layer_bytes + IMAGE_COPIES * (image_bytes + layer_bytes) + MARGIN


def check_room(docker: DockerRuntime, container: ObservedContainer) -> None:
    """Raise DiskFullError when the commit of ``container`` cannot fit in Docker's
    root (bytes, or inodes where the writable layer can be walked)."""
    layer = docker.writable_layer_bytes(container.id)
    image = container.image or container.base_image
    image_bytes = docker.image_config(image)[1] if image else 0
    needed = needed_bytes(layer, image_bytes)
    free = docker.free_bytes()
    if free is not None and free < needed:
        raise DiskFullError(
            f"committing {container.name} needs about {_mib(needed)} in Docker's root "
            f"directory ({_mib(layer)} of files in its writable layer, sparse ones "
            f"counted whole as the commit writes them, then the {_mib(image_bytes + layer)}"
            f" image twice while it is rewritten); {_mib(free)} are free. Nothing was "
            "written; free space on the node or remove files from the instance")
    upper = overlay_layers.reachable(docker.writable_layer_dir(container.id))
    free_files = docker.free_inodes()
    if upper is None or free_files is None:
        return
    try:
        files = tree_entries(upper)
    except OSError as exc:  # a tree the running container keeps changing
        raise TransientError(f"counting the files of {container.name}: {exc}") from exc
    if free_files < LAYER_COPIES * files + INODE_MARGIN:
        raise DiskFullError(
            f"committing {container.name} needs about {LAYER_COPIES * files} inodes in "
            f"Docker's root directory ({files} files, {LAYER_COPIES} copies); "
            f"{free_files} are free. Nothing was written; free inodes on the node")
