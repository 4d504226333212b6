"""The node's Docker engine, through the Docker SDK (docker-py).

Split along docker-py's own seams: ``runtime.py`` is the :class:`DockerRuntime` the
rest of gpudock uses, made of one mixin per kind of object (``containers.py``,
``images.py``, ``volumes.py``, ``exec.py``) on one connection (``connection.py``).
``errors.py`` is the one place Docker's exceptions are translated; ``inspect.py``
reads Docker's inspect answers.
"""
