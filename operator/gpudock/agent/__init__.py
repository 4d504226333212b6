"""The node agent: one process per GPU node that reconciles the resources bound to
that node against its Docker engine.

- ``main``: starts kopf with the agent's handlers (``handlers/``).
- ``wiring``: the composition root, built once at start-up and handed to every handler
  typed (:class:`~gpudock.agent.wiring.NodeAgent`).
- ``handlers/``: kopf registration only; each module wires one kind's events to its
  reconciler and writes what the reconciler returns.

Other processes (a cluster scheduler, a REST service) live next to this package and
share ``core``, ``api`` and ``adapters`` with it, never its handlers.
"""
