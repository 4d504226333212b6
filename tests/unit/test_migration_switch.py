"""#23: after the switch, the GpuMigration says why the target does not run the
instance yet (its Ready condition there), not only that it waits."""
from gpudock.agent.migration_switch import _not_ready


def test_23_the_wait_for_the_target_names_what_the_target_says() -> None:
    waiting = {"conditions": [{"type": "Ready", "status": "False",
                               "reason": "InsufficientGPUs",
                               "message": "needs 2 GPUs; 0 of 1 on node b are free"}]}
    assert _not_ready(waiting) == \
        "InsufficientGPUs: needs 2 GPUs; 0 of 1 on node b are free"
    # The source's own Migrating condition, or nothing yet: the target said nothing.
    assert _not_ready({"conditions": [{"type": "Ready", "status": "False",
                                       "reason": "Migrating", "message": "moving"}]}) == ""
    assert _not_ready({}) == ""
    assert _not_ready({"conditions": [{"type": "Ready", "status": "True",
                                       "reason": "Running"}]}) == ""
