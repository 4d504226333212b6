"""The Docker adapter against the test dockerd: what removing a saved disk answers."""

from __future__ import annotations

import docker.errors
import pytest

from gpudock.adapters.docker_runtime import DockerRuntime
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
