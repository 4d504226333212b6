"""Finding a container's command in its filesystem before it starts, the way runc does.

Without an init process, runc looks the command up on the container's PATH when the
container starts, and Docker refuses the start with ``exec: "jupyter": executable
file not found in $PATH``: the agent reports that as CommandNotFound and removes the
container, which never ran. With Docker's init as PID 1 (``spec.init``, the default)
the start always succeeds: the init looks the command up inside the container, fails,
and the container exits with 127 and restarts forever, holding its GPUs. So with init
the agent does runc's lookup itself on the created container, through Docker's stat
of a path in a container (the API ``docker cp`` uses, which works before a start), and
refuses the start the same way.

The lookup is Go's ``exec.LookPath``: a name with a slash is looked at directly
(relative to the working directory), any other name in each directory of PATH in
turn; it is found when it is a file (not a directory) with an execute bit. A symlink
is followed once; where the lookup cannot tell, the command counts as found (a wrong
refusal would keep a working instance from starting; a miss shows as a CrashLoop).

An image never changes under its ID, so a command found in it is found again in every
container created from it: FoundCommands remembers the paths that found it and skips
the lookup (one stat of Docker's per PATH directory) unless a mount of the new
container covers one of them.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

# Go's os.FileMode bits, as Docker's stat reports them.
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_EXECUTABLE = 0o111
# runc's PATH when the container's environment has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Stat = Callable[[str], "dict[str, Any] | None"]  # None: no such path


def missing_command(stat: Stat, command: str, env: Sequence[str],
                    working_dir: str = "") -> str | None:
    """None when ``command`` can be run in the container; else why not, in runc's
    words."""
    cwd = working_dir or "/"
    if "/" in command:
        problem = _problem(stat, posixpath.normpath(posixpath.join(cwd, command)))
        return None if problem is None else f'exec: "{command}": stat {command}: {problem}'
    path = _path_of(env)
    for directory in path.split(":"):
        candidate = posixpath.normpath(posixpath.join(cwd, directory or ".", command))
        if _problem(stat, candidate) is None:
            return None
    return f'exec: "{command}": executable file not found in $PATH ({path})'


class FoundCommands:
    """Commands found in images, by image ID, with the paths each lookup looked at."""

    def __init__(self, capacity: int = 512) -> None:
        self._capacity = capacity
        self._found: OrderedDict[tuple[str, str, str, str], tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def missing(self, stat: Stat, image_id: str, command: str, env: Sequence[str],
                working_dir: str, mounted: Sequence[str]) -> str | None:
        """missing_command for a container of ``image_id`` whose mounts are at
        ``mounted``; a command found before in the same image, through paths none of
        these mounts covers, is not looked up again."""
        key = (image_id, command, _path_of(env), working_dir or "/")
        with self._lock:
            looked = self._found.get(key)
            if looked is not None:
                self._found.move_to_end(key)
        if looked is not None and not _covered(looked, mounted):
            return None
        seen: list[str] = []

        def recorded(path: str) -> dict[str, Any] | None:
            seen.append(posixpath.normpath(path))
            return stat(path)
        problem = missing_command(recorded, command, env, working_dir)
        if problem is None and not _covered(seen, mounted):  # found in the image itself
            with self._lock:
                self._found[key] = tuple(seen)
                while len(self._found) > self._capacity:
                    self._found.popitem(last=False)
        return problem


def _path_of(env: Sequence[str]) -> str:
    return next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), DEFAULT_PATH)


def _covered(paths: Sequence[str], mounted: Sequence[str]) -> bool:
    """Whether a mount at one of ``mounted`` hides or replaces one of ``paths``."""
    tops = [m.rstrip("/") or "/" for m in mounted]
    return any(top == "/" or path == top or path.startswith(top + "/")
               for top in tops for path in paths)


def _problem(stat: Stat, path: str) -> str | None:
    found = stat(path)
    if found is not None and int(found.get("mode", 0)) & _MODE_SYMLINK:
        target = str(found.get("linkTarget") or "")
        if not target:
            return None  # cannot tell where it points: count it as there
        found = stat(posixpath.join(posixpath.dirname(path), target))
        if found is not None and int(found.get("mode", 0)) & _MODE_SYMLINK:
            return None  # a chain of links: count it as there
    if found is None:
        return "no such file or directory"
    mode = int(found.get("mode", 0))
    if mode & _MODE_DIR or not mode & _EXECUTABLE:
        return "permission denied"
    return None
