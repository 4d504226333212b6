"""The test dockerd knows the `nvidia` runtime name (mapped to runc): a container created
with it and NVIDIA_VISIBLE_DEVICES runs, and inspect shows both."""

from __future__ import annotations

from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack


def test_container_with_nvidia_runtime_runs(stack: LocalStack) -> None:
    client = stack.docker_client()
    container = client.containers.run(
        BUSYBOX_IMAGE, ["sleep", "infinity"], detach=True, name="nvidia-runtime-probe",
        runtime="nvidia", environment={"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"},
    )
    try:
        container.reload()
        assert container.status == "running"
        assert container.attrs["HostConfig"]["Runtime"] == "nvidia"
        assert "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b" in container.attrs["Config"]["Env"]
        code, output = container.exec_run(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"])
        assert isinstance(output, bytes)
        assert (code, output.decode().strip()) == (0, "GPU-a,GPU-b")
    finally:
        container.remove(force=True)
        client.close()
