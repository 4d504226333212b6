"""Condition and Event reasons are one enumeration (gpudock/api/reasons.py): each
member is documented in docs/api.md, and the code writes members where a reason goes,
never a string literal (mypy enforces it where the parameter is typed ``Reason``; the
scans here cover what mypy cannot see: status dicts, keyword arguments, class
attributes, and the same word spelled out elsewhere)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from gpudock.api.reasons import Reason

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "gpudock"
API_DOC = REPO / "docs" / "api.md"
REASONS_MODULE = PACKAGE / "api" / "reasons.py"

# Where a call takes a reason: the callee's name and the reason's position.
REASON_ARGUMENT = {
    "UserError": 0, "DockerRefusedError": 0, "failed": 0,  # exec_requests.failed
    "Event": 1, "refused": 1, "unusable": 1, "unreachable_status": 1, "waiting_on": 1,
    "RecordRevision": 1,
    "condition": 2, "progressing": 2, "StartContainer": 2, "StopContainer": 2,
    "RemoveContainer": 2,
    "_steps": 3, "StartRevision": 3, "MoveHistory": 3,
    "_progress": 4, "retire": 4, "retire_all": 4,
}
# Reason values that are also phases or spec.state values, and are written as such.
ALSO_PHASES = {"Running", "Paused", "Stopped", "Creating", "Stopping", "Reconciling",
               "CrashLoop", "Completed", "Succeeded"}


def _sources() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != REASONS_MODULE:
            yield str(path.relative_to(REPO)), ast.parse(path.read_text(), str(path))


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_text(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _documented() -> set[str]:
    text = API_DOC.read_text()
    section = text.split("\n## Reasons\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z]+)` \|", section, flags=re.MULTILINE))


def test_every_reason_is_documented_in_the_api_reference() -> None:
    members = {str(r) for r in Reason}
    documented = _documented()
    assert sorted(members - documented) == [], "add them to docs/api.md#reasons"
    assert sorted(documented - members) == [], "documented, but no Reason member"


def test_reasons_are_unique_camel_case_words() -> None:
    values = [str(r) for r in Reason]
    assert len(values) == len(set(values)) == len(Reason.__members__)  # no aliases
    for value in values:
        assert re.fullmatch(r"[A-Z]+[a-z]+(?:[A-Z]+[a-z]*)*", value), value


def test_a_reason_serialises_as_its_string() -> None:
    import json

    assert json.dumps({"reason": Reason.DISK_FULL}) == '{"reason": "DiskFull"}'
    assert f"{Reason.DISK_FULL}: x" == "DiskFull: x"
    assert str.__eq__(Reason.DISK_FULL, "DiskFull")
    assert {"DiskFull": 1}[Reason.DISK_FULL] == 1


def test_no_string_literal_is_passed_where_a_reason_goes() -> None:
    """condition(...), Event(...), UserError(...), kopf.event(reason=...), the status
    builders and the steps take a Reason member, never a str literal; nor does a
    status dict's "reason" key or a class's ``reason`` attribute."""
    found = []
    for where, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _callee(node)
                index = REASON_ARGUMENT.get(name or "")
                if index is not None and len(node.args) > index and not any(
                        isinstance(a, ast.Starred) for a in node.args[:index + 1]) and \
                        _is_text(node.args[index]):
                    found.append(f"{where}:{node.lineno} {name}(...) reason argument")
                found += [f"{where}:{node.lineno} {name}(reason=...)"
                          for k in node.keywords if k.arg == "reason" and _is_text(k.value)]
            elif isinstance(node, ast.Dict):
                found += [f"{where}:{node.lineno} {{'reason': ...}}"
                          for k, v in zip(node.keys, node.values, strict=True)
                          if _is_text(k) and getattr(k, "value", None) == "reason"
                          and _is_text(v)]
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    target = item.targets[0] if isinstance(item, ast.Assign) else \
                        item.target if isinstance(item, ast.AnnAssign) else None
                    if isinstance(target, ast.Name) and target.id == "reason" and \
                            _is_text(getattr(item, "value", None)):
                        found.append(f"{where}:{item.lineno} class {node.name}.reason")
    assert found == []


def test_a_reason_is_never_spelled_out_outside_the_enumeration() -> None:
    """A str literal equal to a reason (written, or compared with one read back) is
    the member instead; only words that are phases as well may appear as phases."""
    values = {str(r) for r in Reason} - ALSO_PHASES
    found = [f"{where}:{node.lineno} {node.value!r}"
             for where, tree in _sources() for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in values]
    assert found == []


def test_the_words_allowed_as_phases_are_reasons() -> None:
    assert ALSO_PHASES - {str(r) for r in Reason} == set()
