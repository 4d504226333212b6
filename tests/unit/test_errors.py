"""The error tree (gpudock/errors.py): every exception class the project defines sits
under one of its branches, and the branches do not overlap."""

from __future__ import annotations

import importlib
import pkgutil

import gpudock
from gpudock.adapters.kube_api import ObjectNotFoundError
from gpudock.api.reasons import Reason
from gpudock.errors import (
    GpudockError,
    InternalError,
    NotFoundError,
    SpecError,
    TransientError,
    UserError,
)

BRANCHES = (TransientError, UserError, NotFoundError, InternalError)
# Start-up argument errors, reported by argparse: ValueErrors on purpose.
START_UP_ERRORS = {"gpudock.settings_values.SettingsError",
                   "gpudock.crash_points.UnknownCrashPointError"}


def _project_exceptions() -> set[type[BaseException]]:
    for info in pkgutil.walk_packages(gpudock.__path__, "gpudock."):
        # The agent's handler modules register with kopf when imported, and define
        # no exception; __main__ runs the command line.
        if not info.name.startswith("gpudock.agent.handlers") and \
                info.name != "gpudock.__main__":
            importlib.import_module(info.name)
    found: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [Exception]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return {c for c in found if c.__module__.startswith("gpudock.")}


def test_every_project_error_is_in_one_branch_of_the_tree() -> None:
    misplaced = []
    for cls in _project_exceptions():
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in START_UP_ERRORS:
            assert issubclass(cls, ValueError)
            assert not issubclass(cls, GpudockError)
            continue
        branches = [b for b in BRANCHES if issubclass(cls, b)]
        if cls not in (GpudockError, *BRANCHES) and len(branches) != 1:
            misplaced.append(f"{name}: {[b.__name__ for b in branches]}")
    assert misplaced == []


def test_not_found_is_not_the_users_error() -> None:
    assert issubclass(ObjectNotFoundError, NotFoundError)
    assert not issubclass(NotFoundError, UserError)
    assert not issubclass(NotFoundError, TransientError)


def test_a_user_error_carries_reason_and_message_as_fields() -> None:
    error = UserError(Reason.HOST_PATH_MISSING, "hostPath /x does not exist")
    assert (error.reason, error.message) == (Reason.HOST_PATH_MISSING,
                                             "hostPath /x does not exist")
    assert str(error) == "HostPathMissing: hostPath /x does not exist"
    assert SpecError("bad").reason is Reason.INVALID_SPEC


def test_transient_errors_name_what_is_awaited() -> None:
    for cls in _project_exceptions():
        if issubclass(cls, TransientError):
            assert isinstance(cls.reason, Reason), cls
    assert TransientError("x").delay == 10.0
