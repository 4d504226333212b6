"""The PATH lookup done before a container with Docker's init starts (runc's rules)."""

from __future__ import annotations

import posixpath
from typing import Any

from gpudock.adapters.command_lookup import FoundCommands, missing_command

FILE, DIR, LINK = 0o755, (1 << 31) | 0o755, (1 << 27) | 0o777


def _stat_of(tree: dict[str, dict[str, Any]]) -> Any:
    return tree.get


def _entry(mode: int, target: str = "") -> dict[str, Any]:
    return {"mode": mode, "linkTarget": target}


def test_a_name_is_looked_up_on_the_containers_path_in_order() -> None:
    stat = _stat_of({"/opt/conda/bin/jupyter": _entry(FILE)})
    assert missing_command(stat, "jupyter", ["PATH=/usr/bin:/opt/conda/bin"]) is None
    problem = missing_command(stat, "jupyter", ["PATH=/usr/bin:/bin"])
    assert problem == 'exec: "jupyter": executable file not found in $PATH (/usr/bin:/bin)'


def test_without_path_in_the_environment_runcs_default_applies() -> None:
    assert missing_command(_stat_of({"/bin/sleep": _entry(FILE)}), "sleep", []) is None


def test_a_path_with_a_slash_is_taken_relative_to_the_working_directory() -> None:
    stat = _stat_of({"/work/run.sh": _entry(FILE)})
    assert missing_command(stat, "./run.sh", [], "/work") is None
    assert missing_command(stat, "/run.sh", [], "/work") == \
        'exec: "/run.sh": stat /run.sh: no such file or directory'


def test_a_directory_or_a_file_without_execute_bits_is_not_a_command() -> None:
    stat = _stat_of({"/usr/bin/tool": _entry(DIR), "/bin/tool": _entry(0o644)})
    assert missing_command(stat, "tool", ["PATH=/usr/bin:/bin"]) is not None
    assert "permission denied" in str(missing_command(stat, "/bin/tool", []))


def test_a_symlink_is_followed_once_and_a_dangling_one_is_missing() -> None:
    stat = _stat_of({"/usr/bin/python3": _entry(LINK, "/usr/bin/python3.11"),
                     "/usr/bin/python3.11": _entry(FILE),
                     "/usr/bin/gone": _entry(LINK, "/usr/bin/nothing")})
    assert missing_command(stat, "python3", ["PATH=/usr/bin"]) is None
    assert missing_command(stat, "gone", ["PATH=/usr/bin"]) is not None


class _CountedStat:
    def __init__(self, tree: dict[str, dict[str, Any]]) -> None:
        self.tree, self.asked = tree, 0

    def __call__(self, path: str) -> dict[str, Any] | None:
        self.asked += 1
        return self.tree.get(posixpath.normpath(path))  # Docker resolves ".." too


def test_a_command_found_in_an_image_is_not_looked_up_again_in_the_same_image() -> None:
    found = FoundCommands()
    stat = _CountedStat({"/bin/sleep": _entry(FILE)})
    env = ["PATH=/usr/bin:/bin"]
    assert found.missing(stat, "sha256:a", "sleep", env, "", []) is None
    assert stat.asked == 2
    assert found.missing(stat, "sha256:a", "sleep", env, "", ["/data"]) is None
    assert stat.asked == 2  # remembered: /data covers neither path looked at
    assert found.missing(stat, "sha256:b", "sleep", env, "", []) is None
    assert stat.asked == 4  # another image is looked up


def test_a_mount_over_a_path_the_lookup_used_makes_it_look_again() -> None:
    found = FoundCommands()
    stat = _CountedStat({"/opt/conda/bin/jupyter": _entry(LINK, "../lib/jupyter"),
                         "/opt/conda/lib/jupyter": _entry(FILE)})
    env = ["PATH=/opt/conda/bin"]
    assert found.missing(stat, "sha256:a", "jupyter", env, "", []) is None
    asked = stat.asked
    # The link's target lies under the new mount: the image alone no longer decides.
    stat.tree.pop("/opt/conda/lib/jupyter")
    problem = found.missing(stat, "sha256:a", "jupyter", env, "", ["/opt/conda/lib/"])
    assert stat.asked > asked
    assert problem is not None
    assert "not found" in problem


def test_a_missing_command_is_never_remembered() -> None:
    found = FoundCommands()
    stat = _CountedStat({})
    assert found.missing(stat, "sha256:a", "jupyter", [], "", []) is not None
    stat.tree["/bin/jupyter"] = _entry(FILE)
    assert found.missing(stat, "sha256:a", "jupyter", [], "", []) is None


def test_what_a_mounted_path_found_is_not_remembered_for_the_image() -> None:
    found = FoundCommands()
    stat = _CountedStat({"/work/run.sh": _entry(FILE)})
    assert found.missing(stat, "sha256:a", "./run.sh", [], "/work", ["/work"]) is None
    stat.tree.clear()
    assert found.missing(stat, "sha256:a", "./run.sh", [], "/work", []) is not None
