"""A real etcd + kube-apiserver + dockerd on this machine, started and torn down as one.

Every stack has its own directory, free ports, Docker socket and bridge, so two stacks
never collide and the machine's own Docker (if any) is never touched. ``stop()`` leaves
no process, mount, loop device or bridge behind.

Prerequisites come from ``tests/stack/install-prereqs.sh`` (apt packages, and
kube-apiserver/kubectl built once and cached under $GPUDOCK_CACHE).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import docker

from tests.stack import reclaim
from tests.stack.machine_changes import release_mounts_and_loops
from tests.stack.node import KubeNode
from tests.stack.processes import ManagedProcess, free_port
from tests.stack.processes import wait_for as wait_for  # tests import it from here

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("GPUDOCK_CACHE", "/var/cache/gpudock"))
KUBE_BIN_DIR = CACHE_DIR / "kubernetes-bin"
NODE_NAME = "gpu-node-1"  # the node the examples name; the agent's and the kubelet's
ADMIN_TOKEN = "gpudock-admin-token"
AGENT_TOKEN = "gpudock-agent-token"
AGENT_USER = "gpudock-agent"
PEOPLE = {"alice": "gpudock-alice-token", "mallory": "gpudock-mallory-token"}  # user: token

# Test images, imported from a tarball of busybox (no registry is reachable here).
BUSYBOX_IMAGE = "gpudock-test/busybox:1"
# Their command exits on SIGTERM (PID 1 ignores it otherwise), so a stop is instant.
IDLE_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"]
# A stand-in under the name the examples use; like the real CUDA images it sets
# NVIDIA_VISIBLE_DEVICES=all, which a 0-GPU container must not inherit.
CUDA_LIKE_IMAGE = "nvidia/cuda:12.4.1-base-ubuntu22.04"


class LocalStack:
    """``node=True`` adds a real node (tests/stack/node.py): kubelet, controller-manager
    and scheduler, so pods (the agent's DaemonSet) run on the stack's dockerd."""

    def __init__(self, base_dir: Path | None = None, *, node: bool = False,
                 bridge_prefix: int = 24, docker_root_fs: str | None = None) -> None:
        """``bridge_prefix``: the size of the Docker bridge's subnet (a /24 holds 253
        containers; the benchmark's 300 at once need a /22). ``docker_root_fs``: ext4
        or xfs (with reflinks) under Docker's root; default GPUDOCK_DOCKER_ROOT_FS,
        else ext4."""
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="gpudock-stack-", dir="/tmp"))
        self.processes: dict[str, ManagedProcess] = {}
        self.etcd_port = 0
        self.apiserver_port = 0
        self._apiserver_argv: list[str] = []
        self.bridge = f"gd{random.getrandbits(32):08x}"
        self._bridge_created = False
        self.kubeconfig = self.base_dir / "kubeconfig"
        self.agent_kubeconfig = self.base_dir / "agent-kubeconfig"
        self.docker_socket = self.base_dir / "docker.sock"
        self.bridge_ip = ""
        self.bridge_prefix = bridge_prefix
        # The agents' instance network (--instance-subnet): a subnet of its own, as
        # large as the bridge's, so two stacks on one machine never make bridges over
        # one subnet; free_subnet() gives a test another one (a small pool).
        self.instance_subnet = ""
        self._subnets: set[str] = set()  # the /24s this stack gave out
        self.with_node = node
        self.node: KubeNode | None = None
        self._shared: set[Path] = set()
        self.docker_root_fs = docker_root_fs or os.environ.get("GPUDOCK_DOCKER_ROOT_FS",
                                                               "ext4")

    # ------------------------------------------------------------------ public API
    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def kubectl_path(self) -> Path:
        return KUBE_BIN_DIR / "kubectl"

    def env(self) -> dict[str, str]:
        """The environment for kubectl, docker and the agent against this stack."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["DOCKER_HOST"] = self.docker_host
        # kubectl, and the package's own executables (the kubectl-gpudock plugin).
        env["PATH"] = f"{KUBE_BIN_DIR}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_path), *args], input=input, capture_output=True, text=True,
            env=self.env(), timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> dict[str, object]:
        out = self.kubectl(*args, "-o", "json").stdout
        value: dict[str, object] = json.loads(out)
        return value

    def docker_client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=60)

    def start(self) -> LocalStack:
        try:
            self._check_prerequisites()
            reclaim.reclaim_dead_stacks()  # what stacks killed outright left behind
            reclaim.claim(self.base_dir, self.bridge)
            (self.base_dir / "logs").mkdir(parents=True, exist_ok=True)
            self._start_etcd()
            self._start_apiserver()
            self._start_dockerd()
            self._import_test_images()
            self.apply_crds()
            if self.with_node:
                self.node = KubeNode(self, NODE_NAME).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        if self.node is not None:
            self.node.stop_processes()
        dockerd = self.processes.get("dockerd")
        if dockerd is not None and dockerd.alive():
            with contextlib.suppress(Exception):
                client = self.docker_client()
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.networks.prune()  # their bridges would outlive dockerd
                client.close()
        for name in ("dockerd", "kube-apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop()
        for process in self.processes.values():
            process.stop()
        self.processes.clear()
        if self.node is not None:
            self.node.undo_machine_changes()
            self.node = None
        if self._bridge_created:
            subprocess.run(["ip", "link", "delete", self.bridge], check=False,
                           capture_output=True)
            self._bridge_created = False
        release_mounts_and_loops(self.base_dir)
        keep = os.environ.get("GPUDOCK_KEEP_LOGS")  # a folder to keep the logs in
        if keep and (self.base_dir / "logs").is_dir():
            shutil.copytree(self.base_dir / "logs", Path(keep) / self.base_dir.name,
                            dirs_exist_ok=True)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def apply_crds(self) -> None:
        self.kubectl("apply", "-f", str(REPO_ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *(f"crd/{plural}.gpudock.dev" for plural in (
                         "gpureplicasets", "sizedvolumes", "gpunodes", "execrequests",
                         "imagecommits")))
        if self.with_node:  # the chart's release brings (and owns) the RBAC
            return
        for manifest in ("rbac.yaml", "user-roles.yaml"):
            self.kubectl("apply", "-f", str(REPO_ROOT / "manifests" / manifest))
        # The agent runs with the chart's ClusterRole, bound to its own user, so the
        # tests prove the RBAC rules are enough.
        self.kubectl("create", "clusterrolebinding", "gpudock-agent-local",
                     "--clusterrole=gpudock-agent", f"--user={AGENT_USER}")

    # ------------------------------------------------------------------ components
    def _check_prerequisites(self) -> None:
        needed = [KUBE_BIN_DIR / "kube-apiserver", KUBE_BIN_DIR / "kubectl"]
        if self.with_node:
            needed += [KUBE_BIN_DIR / name for name in (
                "kubelet", "kube-controller-manager", "kube-scheduler", "pause")]
        missing = [str(p) for p in needed if not p.exists()]
        missing += [tool for tool in ("etcd", "dockerd", "busybox", "openssl", "ip",
                                      "mkfs.ext4")
                    if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: run "
                               "tests/stack/install-prereqs.sh first")

    def spawn(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        log = self.base_dir / "logs" / f"{name}.log"
        if name in self.processes or log.exists():  # started again: keep the first log
            log = log.with_name(f"{name}-{time.monotonic_ns()}.log")
        process = ManagedProcess(name, argv, log)
        self.processes[name] = process
        return process

    def _start_etcd(self) -> None:
        self.etcd_port, peer_port = free_port(), free_port()
        peer = f"http://127.0.0.1:{peer_port}"
        etcd = self.spawn("etcd", [
            "etcd", "--name", "gpudock", "--data-dir", str(self.base_dir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"gpudock={peer}", "--log-level", "warn",
        ])
        etcd.wait_until(lambda: _http_ok(f"{self.etcd_url}/health"), 60, "health")

    def _start_apiserver(self) -> None:
        pki = self.base_dir / "pki"
        pki.mkdir()
        sa_key = pki / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True,
                       capture_output=True)
        tokens = pki / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},admin,1,"system:masters"\n'
                          f"{AGENT_TOKEN},{AGENT_USER},2\n"
                          # people with no role of their own (tests bind what they need)
                          + "".join(f"{token},{user},{3 + i}\n"
                                    for i, (user, token) in enumerate(PEOPLE.items())))
        self.apiserver_port = free_port()
        self._apiserver_argv = [
            str(KUBE_BIN_DIR / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}", "--etcd-prefix=/registry-gpudock",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}", f"--cert-dir={pki}",
            f"--token-auth-file={tokens}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--allow-privileged=true",  # the agent's DaemonSet is privileged
            "--v=1",
        ]
        if self.with_node:  # pods get service-account tokens
            # InternalIP: no DNS lookup of the node's name (nothing may leave the machine)
            self._apiserver_argv += ["--kubelet-preferred-address-types=InternalIP"]
        else:
            self._apiserver_argv.append("--disable-admission-plugins=ServiceAccount")
        self.start_apiserver_again()
        server = f"https://127.0.0.1:{self.apiserver_port}"
        self.kubeconfig.write_text(_kubeconfig(server, "admin", ADMIN_TOKEN))
        self.agent_kubeconfig.write_text(_kubeconfig(server, AGENT_USER, AGENT_TOKEN))

    def stop_apiserver(self) -> None:
        """Take the API server away (its etcd keeps the objects), as an outage does."""
        process = self.processes.pop("kube-apiserver", None)
        if process is not None:
            process.stop()

    def start_apiserver_again(self) -> None:
        """Start the API server (again) on the same port and certificates."""
        apiserver = self.spawn("kube-apiserver", self._apiserver_argv)
        server = f"https://127.0.0.1:{self.apiserver_port}"
        apiserver.wait_until(lambda: _http_ok(f"{server}/readyz", token=ADMIN_TOKEN), 120,
                             "readiness")

    def _start_dockerd(self) -> None:
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        self._bridge_created = True
        subnet = _free_bridge_subnet(self.bridge_prefix)
        self.bridge_ip = f"{subnet}.1"
        self._subnets |= _slash_24s(subnet, self.bridge_prefix)
        self.instance_subnet = self.free_subnet(self.bridge_prefix)
        subprocess.run(["ip", "addr", "add", f"{self.bridge_ip}/{self.bridge_prefix}", "dev",
                        self.bridge],
                       check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self._mount_docker_root()
        runtime = ["--add-runtime", "nvidia=/usr/sbin/runc"]
        if self.with_node:  # the agent's pod is privileged: see tests/stack/runc_wrapper.py
            wrapper = self.base_dir / "runc-wrapper"
            wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} "
                               f"{REPO_ROOT / 'tests/stack/runc_wrapper.py'} \"$@\"\n")
            wrapper.chmod(0o755)
            runtime = ["--add-runtime", f"nvidia={wrapper}", "--add-runtime",
                       f"gpudock-runc={wrapper}", "--default-runtime", "gpudock-runc"]
        self._dockerd_argv = [
            "dockerd", "--data-root", str(self.docker_root),
            "--exec-root", str(self.base_dir / "docker-exec"),
            "-H", self.docker_host, "--pidfile", str(self.base_dir / "docker.pid"),
            *runtime, "--bridge", self.bridge,
            "--iptables=false", "--ip-masq=false", "--ip6tables=false",
        ]
        dockerd = self.spawn("dockerd", self._dockerd_argv)
        dockerd.wait_until(self._docker_pings, 60, "API")

    def restart_dockerd(self, *, kill: bool = False, nvidia_runtime: str | None = None,
                        ) -> None:
        """Start dockerd again on the same root and exec root. ``kill``: SIGKILL it
        first, as a crash of the engine would (its containerd dies with it; the
        containers' shims live on, as on any node), else stop it as a service stop
        does. ``nvidia_runtime``: the program the `nvidia` runtime name runs from now
        on (the default's again when not given). A killed containerd can stay a
        zombie here (nothing reaps it), so its pid file goes first: dockerd would take
        the zombie for a live containerd and wait for it."""
        old = self.processes["dockerd"]
        argv = list(self._dockerd_argv)
        if nvidia_runtime is not None:
            argv = [f"nvidia={nvidia_runtime}" if a.startswith("nvidia=") else a
                    for a in argv]
        if kill:
            old.signal(signal.SIGKILL)
            old.process.wait(30)
        old.stop()  # (dead already when killed: only its log is closed)
        self.docker_socket.unlink(missing_ok=True)  # a killed dockerd leaves its socket
        (self.base_dir / "docker-exec" / "containerd" / "containerd.pid").unlink(
            missing_ok=True)
        self.spawn("dockerd", argv).wait_until(self._docker_pings, 60, "API")
    def free_subnet(self, prefix: int = 24) -> str:
        """A subnet for an instance network (--instance-subnet) that no bridge of
        this machine nor another subnet of this stack is over: a /``prefix`` at the
        start of a free 10.200-250.x.0/``min(prefix, 24)``."""
        base = _free_bridge_subnet(min(prefix, 24), avoid=frozenset(self._subnets))
        self._subnets |= _slash_24s(base, min(prefix, 24))
        return f"{base}.0/{prefix}"

    @property
    def docker_root(self) -> Path:
        return self.base_dir / "docker"

    def _mount_docker_root(self) -> None:
        """Docker's root on a filesystem of its own (a sparse image, loop-mounted;
        GPUDOCK_DOCKER_ROOT_GIB, default 20; ext4 or XFS with reflinks, as
        docker_root_fs says), so a test can fill it for real without touching the
        machine's disk; an ext4 one has an inode per 64 KiB (a quarter of mkfs's
        default), so a test can also use every inode in seconds. stop() unmounts it
        and detaches the loop device."""
        image = self.base_dir / "docker-root.img"
        with open(image, "wb") as handle:
            handle.truncate(int(os.environ.get("GPUDOCK_DOCKER_ROOT_GIB", "20")) * 2**30)
        mkfs = {"ext4": ["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "65536"],
                "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]}[self.docker_root_fs]
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        self.docker_root.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(self.docker_root)],
                       check=True, capture_output=True)
        if self.with_node:  # the agent's pod mounts it with HostToContainer propagation
            subprocess.run(["mount", "--make-shared", str(self.docker_root)], check=True)

    def shared_dir(self, name: str) -> Path:
        """A directory under the stack that is a shared mount of its own, so a pod can
        mount it with Bidirectional propagation (this machine's / is private)."""
        path = self.base_dir / name
        if path not in self._shared:
            path.mkdir(exist_ok=True)
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            subprocess.run(["mount", "--make-shared", str(path)], check=True)
            self._shared.add(path)
        return path

    def _docker_pings(self) -> bool:
        if not self.docker_socket.exists():
            return False
        try:
            client = self.docker_client()
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def _import_test_images(self) -> None:
        tarball = self.base_dir / "busybox-rootfs.tar"
        build_busybox_rootfs(tarball)
        client = self.docker_client()
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


# ---------------------------------------------------------------------- helpers
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


def _slash_24s(base: str, prefix: int) -> set[str]:
    """The /24s (first three octets) of the subnet at ``base`` (first three octets)."""
    first, second, third = base.split(".")
    return {f"{first}.{second}.{int(third) + i}" for i in range(2 ** (24 - prefix))}


def _free_bridge_subnet(prefix: int = 24, avoid: frozenset[str] = frozenset()) -> str:
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


def _http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def person_kubeconfig(stack: LocalStack, user: str, path: Path) -> Path:
    """A kubeconfig of one of PEOPLE (a token of the API server's token file)."""
    server = f"https://127.0.0.1:{stack.apiserver_port}"
    path.write_text(_kubeconfig(server, user, PEOPLE[user]))
    return path


def _kubeconfig(server: str, user: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {
            "server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {
            "cluster": "local", "user": user, "namespace": "default"}}],
    }, indent=2)
