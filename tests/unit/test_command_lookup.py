"""The PATH lookup done before a container with Docker's init starts (runc's rules)."""

from __future__ import annotations

from typing import Any

from gpudock.adapters.command_lookup import missing_command

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
