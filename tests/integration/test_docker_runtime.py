"""The Docker adapter against the test dockerd: what removing a saved disk answers, and
the count of its requests (gpudock_docker_requests_total)."""

from __future__ import annotations

import docker.errors
import pytest

from gpudock.adapters.docker.runtime import DockerRuntime
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack


def test_remove_image_is_true_when_gone_false_while_used(stack: LocalStack) -> None:
    client = stack.docker_client()
    runtime = DockerRuntime(stack.docker_host)
    image = "gpudock-test/remove-probe:rev-1"
    source = client.containers.create(BUSYBOX_IMAGE, ["true"], name="remove-image-probe-0")
    source.commit("gpudock-test/remove-probe", "rev-1")  # an image of its own, one tag
    source.remove()
    user = client.containers.create(image, ["true"], name="remove-image-probe")
    try:
        assert runtime.remove_image(image) is False  # a container still uses it
        user.remove()
        assert runtime.remove_image(image) is True
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(image)
        # Already gone (an agent killed after removing it, before noting it): done.
        assert runtime.remove_image(image) is True
    finally:
        for container in client.containers.list(all=True, filters={"name": "remove-image-probe"}):
            container.remove(force=True)
        runtime.close()
        client.close()


def test_every_request_to_docker_is_told_with_its_method(stack: LocalStack) -> None:
    told: list[str] = []
    runtime = DockerRuntime(stack.docker_host, on_request=told.append)
    try:
        runtime.version()
        assert told == ["GET"]
        assert runtime.remove_image("gpudock-test/never-made:1") is True  # not found
        assert told[1:] == ["DELETE"]
        runtime.list_containers()
        assert len(told) > 2
        assert set(told[2:]) == {"GET"}
    finally:
        runtime.close()
