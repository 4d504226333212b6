"""#28 item 8 against the real stack: a saved disk is put back only over the image
ID its revision ran on. After the image's name was pointed at another image, a
resume is refused with ImageChanged (nothing started, the saved disk kept); with the
name back on the original it resumes with the user's files. Test names carry the
item."""

from __future__ import annotations

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.revisions import (
    apply_spec,
    assert_disk_kept,
    only_container,
    sh,
    touch_the_disk,
    wait_settled,
)
from tests.integration.test_security import _wait_reason
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack
from tests.stack.resources import containers, grs

pytestmark = pytest.mark.timeout(240)


def test_28_8_a_saved_disk_goes_back_only_over_the_image_it_ran_on(
    stack: LocalStack, namespace: str, start_agent: AgentFactory,
) -> None:
    client = stack.docker_client()
    base = f"t28-8/{namespace}"
    original = client.images.get(BUSYBOX_IMAGE)
    assert original.id is not None
    original.tag(base, "1")
    image = f"{base}:1"
    box = client.containers.run(BUSYBOX_IMAGE, ["sh", "-c", "echo other > /poison"],
                                detach=True)
    box.wait()
    other = box.commit(repository=f"{base}-other", tag="1")
    box.remove()
    try:
        start_agent(extra_args=["--resync-seconds", "2"])
        apply_spec(stack, namespace, "moved", "v1", gpus=0, image=image)
        wait_settled(stack, namespace, "moved", revision=1)
        touch_the_disk(stack, namespace, "before-move", name="moved")
        apply_spec(stack, namespace, "moved", "stop", gpus=0, image=image, state="Stopped")
        wait_settled(stack, namespace, "moved", phase="Stopped", revision=1)
        other.tag(base, "1")  # the name now points to another image
        apply_spec(stack, namespace, "moved", "start", gpus=0, image=image)
        message = _wait_reason(stack, namespace, "moved", "ImageChanged")
        assert str(original.id).removeprefix("sha256:")[:12] in message
        assert containers(stack, namespace) == []  # nothing started over the other
        assert grs(stack, namespace, "moved")["status"]["phase"] != "Running"
        original.tag(base, "1")  # back on the image the disk was saved over
        wait_settled(stack, namespace, "moved", revision=1)
        assert_disk_kept(stack, namespace, "before-move", name="moved")
        container = only_container(stack, namespace, "moved")
        assert sh(container, "test -e /poison && echo yes || echo no").strip() == "no"
        container.reload()
        assert container.attrs["Image"] == original.id
    finally:
        for name in (image, f"{base}-other:1"):
            client.images.remove(name, force=True, noprune=True)
        client.close()
