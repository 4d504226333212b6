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
"""

from __future__ import annotations

import posixpath
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
    path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
    for directory in path.split(":"):
        candidate = posixpath.normpath(posixpath.join(cwd, directory or ".", command))
        if _problem(stat, candidate) is None:
            return None
    return f'exec: "{command}": executable file not found in $PATH ({path})'


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
