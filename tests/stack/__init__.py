"""The local stack: real etcd, kube-apiserver and dockerd on this machine, for the tests
and for ``make run``. ``python -m tests.stack up`` brings it up in the foreground."""

from tests.stack.docker_sockets import close_failed_connects

close_failed_connects()
