"""#13: the disk handoff on a dockerd whose root is a loop-mounted XFS with reflinks
(a stack of its own for this module): the same changes carried exactly through an
update, a rollback and a Stopped -> Running cycle as on ext4 (test_disk_handoff.py),
and the update's copies are reflinks: a 256 MiB file of the user's costs the
filesystem almost nothing across the save and the handoff (on ext4 the handoff is
a real copy of it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.test_disk_handoff import carry_through_rollouts
from tests.stack.localstack import LocalStack

MiB = 2**20
BIG_MIB = 256


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """Overrides the session's stack for this module: Docker's root on XFS."""
    with LocalStack(docker_root_fs="xfs") as running:
        yield running


@pytest.mark.timeout(600)
def test_the_disk_survives_rollouts_on_xfs_with_reflinked_copies(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    gained = carry_through_rollouts(stack, namespace, start_agent, "layer",
                                    big_file_mib=BIG_MIB)
    print(f"XFS: the update (save + handoff of a {BIG_MIB} MiB file) grew Docker's root "
          f"by {gained / MiB:.1f} MiB")
    assert gained < BIG_MIB * MiB // 4
