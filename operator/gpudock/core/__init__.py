"""The pure core: decisions from (desired, observed) with no I/O and no framework."""
