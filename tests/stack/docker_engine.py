"""One node's Docker engine for a LocalStack: a dockerd of its own with its own bridge,
socket, exec root and Docker root (a loop-mounted filesystem), and the test images.

A stack has one engine for its first node and gets one more for each node a fleet
test adds (``LocalStack.add_engine``), so every node of a fleet has its own dockerd,
as on a real cluster. Everything an engine makes lives under its ``home`` (below the
stack's directory) or is its bridge, whose name starts with the stack's: the stack's
``stop()`` and a reclaim of a killed stack find both.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import docker

from tests.stack.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
# Test images, imported from a tarball of busybox (no registry is reachable here).
BUSYBOX_IMAGE = "gpudock-test/busybox:1"
# Their command exits on SIGTERM (PID 1 ignores it otherwise), so a stop is instant.
IDLE_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"]
# A stand-in under the name the examples use; like the real CUDA images it sets
# NVIDIA_VISIBLE_DEVICES=all, which a 0-GPU container must not inherit.
CUDA_LIKE_IMAGE = "nvidia/cuda:12.4.1-base-ubuntu22.04"

Spawn = Callable[[str, Sequence[str]], ManagedProcess]


class DockerEngine:
    """``spawn`` starts a process under the stack's bookkeeping (its log, its stop);
    ``subnets`` is the stack's set of /24s given out, shared by its engines so no two
    bridges or instance subnets overlap. ``kubelet_runtime``: dockerd runs containers
    through the runc wrapper a kubelet's privileged pods need (tests/stack/node.py)."""

    def __init__(self, home: Path, bridge: str, spawn: Spawn, subnets: set[str], *,
                 process_name: str = "dockerd", bridge_prefix: int = 24,
                 root_fs: str = "ext4", kubelet_runtime: bool = False) -> None:
        self.home = home
        self.bridge = bridge
        self.bridge_ip = ""
        self.bridge_prefix = bridge_prefix
        self.root_fs = root_fs
        self.instance_subnet = ""
        self.process_name = process_name
        self.socket = home / "docker.sock"
        self._spawn = spawn
        self._subnets = subnets
        self._kubelet_runtime = kubelet_runtime
        self._bridge_created = False
        self._argv: list[str] = []
        self.process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def root(self) -> Path:
        return self.home / "docker"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=60)

    def free_subnet(self, prefix: int = 24) -> str:
        """A subnet (for an instance network) that no bridge of this machine nor
        another subnet of the stack is over: a /``prefix`` at the start of a free
        10.200-250.x.0/``min(prefix, 24)``."""
        base = free_bridge_subnet(min(prefix, 24), avoid=frozenset(self._subnets))
        self._subnets |= slash_24s(base, min(prefix, 24))
        return f"{base}.0/{prefix}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DockerEngine:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        self._bridge_created = True
        subnet = free_bridge_subnet(self.bridge_prefix, avoid=frozenset(self._subnets))
        self.bridge_ip = f"{subnet}.1"
        self._subnets |= slash_24s(subnet, self.bridge_prefix)
        # The agents' instance network (--instance-subnet): a subnet of its own, as
        # large as the bridge's, so two stacks on one machine never make bridges over
        # one subnet.
        self.instance_subnet = self.free_subnet(self.bridge_prefix)
        subprocess.run(["ip", "addr", "add", f"{self.bridge_ip}/{self.bridge_prefix}", "dev",
                        self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self._mount_root()
        runtime = ["--add-runtime", "nvidia=/usr/sbin/runc"]
        if self._kubelet_runtime:  # the agent's pod is privileged: see runc_wrapper.py
            wrapper = self.home / "runc-wrapper"
            wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} "
                               f"{REPO_ROOT / 'tests/stack/runc_wrapper.py'} \"$@\"\n")
            wrapper.chmod(0o755)
            runtime = ["--add-runtime", f"nvidia={wrapper}", "--add-runtime",
                       f"gpudock-runc={wrapper}", "--default-runtime", "gpudock-runc"]
        self._argv = [
            "dockerd", "--data-root", str(self.root),
            "--exec-root", str(self.home / "docker-exec"),
            "-H", self.host, "--pidfile", str(self.home / "docker.pid"),
            *runtime, "--bridge", self.bridge,
            "--iptables=false", "--ip-masq=false", "--ip6tables=false",
        ]
        self.process = self._spawn(self.process_name, self._argv)
        self.process.wait_until(self.pings, 60, "API")
        self._import_test_images()
        return self

    def stop(self) -> None:
        """Remove the containers and networks, stop dockerd, delete the bridge; safe to
        call twice. The stack unmounts the root with everything under its directory."""
        if self.process is not None and self.process.alive():
            with contextlib.suppress(Exception):
                client = self.client()
                try:
                    for container in client.containers.list(all=True):
                        container.remove(force=True)
                    client.networks.prune()  # their bridges would outlive dockerd
                finally:
                    client.close()
        if self.process is not None:
            self.process.stop()
        if self._bridge_created:
            subprocess.run(["ip", "link", "delete", self.bridge], check=False,
                           capture_output=True)
            self._bridge_created = False

    def restart(self, *, kill: bool = False, nvidia_runtime: str | None = None) -> None:
        """Start dockerd again on the same root and exec root. ``kill``: SIGKILL it
        first, as a crash of the engine would (its containerd dies with it; the
        containers' shims live on, as on any node), else stop it as a service stop
        does. ``nvidia_runtime``: the program the `nvidia` runtime name runs from now
        on (the default's again when not given). A killed containerd can stay a
        zombie here (nothing reaps it), so its pid file goes first: dockerd would take
        the zombie for a live containerd and wait for it."""
        old = self.process
        assert old is not None
        argv = list(self._argv)
        if nvidia_runtime is not None:
            argv = [f"nvidia={nvidia_runtime}" if a.startswith("nvidia=") else a
                    for a in argv]
        if kill:
            old.signal(signal.SIGKILL)
            old.process.wait(30)
        old.stop()  # (dead already when killed: only its log is closed)
        self.socket.unlink(missing_ok=True)  # a killed dockerd leaves its socket
        (self.home / "docker-exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)
        self.process = self._spawn(self.process_name, argv)
        self.process.wait_until(self.pings, 60, "API")

    def pings(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = self.client()
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def _mount_root(self) -> None:
        """Docker's root on a filesystem of its own (a sparse image, loop-mounted;
        GPUDOCK_DOCKER_ROOT_GIB, default 20; ext4 or XFS with reflinks, as ``root_fs``
        says), so a test can fill it for real without touching the machine's disk; an
        ext4 one has an inode per 64 KiB (a quarter of mkfs's default), so a test can
        also use every inode in seconds."""
        image = self.home / "docker-root.img"
        with open(image, "wb") as handle:
            handle.truncate(int(os.environ.get("GPUDOCK_DOCKER_ROOT_GIB", "20")) * 2**30)
        mkfs = {"ext4": ["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "65536"],
                "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]}[self.root_fs]
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        self.root.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(self.root)],
                       check=True, capture_output=True)
        if self._kubelet_runtime:  # the agent's pod mounts it with HostToContainer
            subprocess.run(["mount", "--make-shared", str(self.root)], check=True)

    def take_test_images_from(self, other: DockerEngine) -> None:
        """The test images of ``other`` loaded here under their tags (saved by tag:
        docker-py saves by ID, untagged, unless ``named``), checked."""
        source, target = other.client(), self.client()
        try:
            for name in (BUSYBOX_IMAGE, CUDA_LIKE_IMAGE):
                image = source.images.get(name)
                target.images.load(b"".join(image.save(named=name)))
                if target.images.get(name).id != image.id:
                    raise RuntimeError(f"{name} on {self.home.name} is "
                                       f"{target.images.get(name).id}, not {image.id}")
        finally:
            source.close()
            target.close()

    def _import_test_images(self) -> None:
        tarball = self.home / "busybox-rootfs.tar"
        build_busybox_rootfs(tarball)
        client = self.client()
        try:
            api = client.api
            api.import_image(str(tarball), repository=BUSYBOX_IMAGE.split(":")[0],
                             tag=BUSYBOX_IMAGE.split(":")[1],
                             changes=[f"CMD {json.dumps(IDLE_COMMAND)}"])
            repo, tag = CUDA_LIKE_IMAGE.rsplit(":", 1)
            api.import_image(str(tarball), repository=repo, tag=tag, changes=[
                "ENV NVIDIA_VISIBLE_DEVICES=all", "ENV NVIDIA_DRIVER_CAPABILITIES=all",
                f"CMD {json.dumps(IDLE_COMMAND)}",
            ])
        finally:
            client.close()
            tarball.unlink(missing_ok=True)


def build_busybox_rootfs(tarball: Path) -> None:
    """A tiny root filesystem: static busybox with a symlink per applet, a few files."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "etc", "root", "tmp", "var", "proc", "sys", "dev"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        for applet in applets:
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        (root / "etc" / "os-release").write_text('NAME="gpudock test busybox"\n')
        with tarfile.open(tarball, "w") as tar:
            tar.add(root, arcname=".")


def slash_24s(base: str, prefix: int) -> set[str]:
    """The /24s (first three octets) of the subnet at ``base`` (first three octets)."""
    first, second, third = base.split(".")
    return {f"{first}.{second}.{int(third) + i}" for i in range(2 ** (24 - prefix))}


def free_bridge_subnet(prefix: int = 24, avoid: frozenset[str] = frozenset()) -> str:
    """The first three octets of a free 10.200-250.x.0/``prefix`` (16 <= prefix <= 24),
    none of whose /24s the machine routes already (nor ``avoid``'s)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    span = 2 ** (24 - prefix)
    for _ in range(100):
        second, third = random.randint(200, 250), random.randrange(0, 256, span)
        if not any(f"10.{second}.{third + i}." in routes or f"10.{second}.{third + i}" in avoid
                   for i in range(span)):
            return f"10.{second}.{third}"
    raise RuntimeError(f"no free /{prefix} for a Docker bridge")
