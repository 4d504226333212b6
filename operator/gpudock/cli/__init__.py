"""The command lines: ``gpudock`` (the node agent, history, rollback, purge) and the
``kubectl gpudock`` plugin. Each command is a thin layer over ``core``, ``api`` and
``adapters``; the agent itself lives in ``gpudock.agent``."""
