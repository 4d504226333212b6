"""In-memory fakes of the ports the reconcilers act through (gpudock.core.ports), and
a test node that runs the real reconcilers over them (node.py)."""
