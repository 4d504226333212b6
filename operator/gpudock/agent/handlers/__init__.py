"""kopf registration, one module per kind (plus ``node`` for what belongs to the node).

A kind is registered here and nowhere else: :data:`MODULES` is what the agent imports
before it starts kopf (kopf registers a handler when its module is imported).
"""

from __future__ import annotations

# The handler modules, in the order kopf should register them.
MODULES = (
    "gpudock.agent.handlers.node",
    "gpudock.agent.handlers.replica_sets",
    "gpudock.agent.handlers.volumes",
    "gpudock.agent.handlers.requests",
    "gpudock.agent.handlers.migrations",
)
