"""The ports (core/ports.py) are what the adapters and the fakes both are: each
adapter and each fake is assigned to its port below (mypy --strict checks the
assignments, the suite runs mypy), the port's signatures are the adapter's, the
port names every call the reconcilers make, and the fake Docker's observation of a
container is the one the real adapter makes of the same inspect."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gpudock.adapters.docker import inspect as docker_inspect
from gpudock.adapters.docker.runtime import DockerRuntime
from gpudock.adapters.kube_api import KubeApi
from gpudock.adapters.simulated_gpus import SimulatedGpuInventory
from gpudock.adapters.sqlite_revisions import SqliteRevisionStore
from gpudock.core import ports
from gpudock.core.gpus import GpuInventory
from gpudock.core.revision import RevisionStore
from tests.unit.fakes.clock import FixedClock
from tests.unit.fakes.docker import InMemoryDocker
from tests.unit.fakes.kube import InMemoryKube
from tests.unit.fakes.node import NAMESPACE, Node

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "gpudock"
# Where the reconcilers (and the copy volume backend they hand the runtime to) call
# it, as globs: modules being moved are still found.
CALLERS = ("agent/replica_set_*.py", "agent/disk_saves.py", "agent/volume_reconciler.py",
           "adapters/**/copy*.py")
KUBE_CALLERS = ("agent/replica_set_*.py", "agent/volume_reconciler.py",
                "agent/disk_saves.py")
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _members(port: type) -> list[str]:
    return sorted(n for n, v in vars(port).items()
                  if callable(v) and not n.startswith("_"))


def _called(globs: tuple[str, ...], attribute: str) -> set[str]:
    """Method names called as ``<attribute>.<name>(`` or ``self._<attribute>.<name>(``."""
    pattern = re.compile(rf"\b_?{attribute}\.([a-z_]+)\(")
    files = [path for glob in globs for path in PACKAGE.glob(glob)]
    assert len(files) >= len(globs), files
    return {name for path in files for name in pattern.findall(path.read_text())}


def test_the_adapters_are_the_ports(tmp_path: Path) -> None:
    # Neither constructor does I/O: the client connects on first use.
    runtime: ports.ContainerRuntime = DockerRuntime("unix:///nonexistent")
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    kube: ports.KubeClient = KubeApi(str(config), in_cluster=False)
    store: RevisionStore = SqliteRevisionStore(tmp_path / "revisions.sqlite3")
    gpus: GpuInventory = SimulatedGpuInventory("node", 2)
    assert isinstance(runtime, DockerRuntime)
    assert isinstance(kube, KubeApi)
    assert len(gpus.list_gpus()) == 2
    store.close()


def test_the_fakes_are_the_ports(tmp_path: Path) -> None:
    runtime: ports.ContainerRuntime = InMemoryDocker(tmp_path, FixedClock().now)
    kube: ports.KubeClient = InMemoryKube()
    assert runtime.list_containers() == []
    assert isinstance(kube, InMemoryKube)


@pytest.mark.parametrize(("port", "adapter", "fake"), [
    (ports.ContainerRuntime, DockerRuntime, InMemoryDocker),
    (ports.KubeClient, KubeApi, InMemoryKube),
], ids=["ContainerRuntime", "KubeClient"])
def test_each_port_method_has_the_adapters_signature(port: type, adapter: type,
                                                     fake: type) -> None:
    for name in _members(port):
        wanted = inspect.signature(getattr(adapter, name))
        assert inspect.signature(getattr(port, name)) == wanted, name
        assert inspect.signature(getattr(fake, name)) == wanted, name


def test_the_ports_name_every_call_of_the_reconcilers() -> None:
    docker_calls = _called(CALLERS, "docker")
    assert {"create_and_start", "commit", "list_containers", "volume_info"} <= docker_calls
    assert docker_calls <= set(_members(ports.ContainerRuntime))
    kube_calls = _called(KUBE_CALLERS, "kube")
    assert {"get", "patch_spec"} <= kube_calls
    assert kube_calls <= set(_members(ports.KubeClient))


def test_the_fake_observes_containers_as_the_adapter_does(node: Node) -> None:
    node.apply("box", gpus=2, ports=[{"containerPort": 22}, {"containerPort": 53,
                                                             "protocol": "UDP"}])
    node.apply("cpu", gpus=0)
    node.settle("box")
    node.settle("cpu")
    node.docker.crash(node.only_container("box").id, exit_code=3)
    node.docker.kill_outside(node.only_container("cpu").id, oom=True)
    observed = {c.id: c for c in node.docker.list_containers()}
    assert len(observed) == 2
    for container_id, fake in observed.items():
        assert fake == docker_inspect._observed(node.docker.inspect(container_id))
    box = observed[node.only_container("box").id]
    assert box.owner is not None
    assert (box.owner.namespace, box.revision, len(box.gpus)) == (NAMESPACE, 1, 2)
    assert len(box.host_ports) == 2
    assert (box.restart_count, box.exit_code) == (1, 3)
