"""The chaos soak (`make soak`, `python -m tests.soak`): a seeded random mix of what
users do on a fleet of the local stack, interleaved with faults, with invariants
sampled throughout and figures printed at the end (docs/reliability.md#soak)."""
