"""A real etcd + kube-apiserver + dockerd on this machine, started and torn down as one.

Every stack has its own directory, free ports, Docker socket and bridge, so two stacks
never collide and the machine's own Docker (if any) is never touched. ``stop()`` leaves
no process, mount, loop device or bridge behind.

Prerequisites come from ``tests/stack/install-prereqs.sh`` (apt packages, and
kube-apiserver/kubectl built once and cached under $GPUDOCK_CACHE).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import docker

from tests.stack import reclaim
from tests.stack.docker_engine import BUSYBOX_IMAGE as BUSYBOX_IMAGE
from tests.stack.docker_engine import CUDA_LIKE_IMAGE as CUDA_LIKE_IMAGE
from tests.stack.docker_engine import IDLE_COMMAND as IDLE_COMMAND
from tests.stack.docker_engine import DockerEngine
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
        self.kubeconfig = self.base_dir / "kubeconfig"
        self.agent_kubeconfig = self.base_dir / "agent-kubeconfig"
        self._subnets: set[str] = set()  # the /24s this stack's engines gave out
        # The first node's engine; a fleet test adds one per node (add_engine).
        self.engine = DockerEngine(
            self.base_dir, self.bridge, self.spawn, self._subnets, bridge_prefix=bridge_prefix,
            root_fs=docker_root_fs or os.environ.get("GPUDOCK_DOCKER_ROOT_FS", "ext4"),
            kubelet_runtime=node)
        self.engines: list[DockerEngine] = [self.engine]
        self.with_node = node
        self.node: KubeNode | None = None
        self._shared: set[Path] = set()

    # ------------------------------------------------------------------ public API
    @property
    def docker_host(self) -> str:
        return self.engine.host

    @property
    def docker_socket(self) -> Path:
        return self.engine.socket

    @property
    def bridge_ip(self) -> str:
        return self.engine.bridge_ip

    @property
    def instance_subnet(self) -> str:
        return self.engine.instance_subnet

    @property
    def docker_root_fs(self) -> str:
        return self.engine.root_fs

    def add_engine(self, name: str) -> DockerEngine:
        """Another node's Docker engine (its own dockerd, bridge and root), stopped
        with the stack; ``name`` names its directory and its dockerd's log."""
        engine = DockerEngine(self.base_dir / name, f"{self.bridge}{len(self.engines)}",
                              self.spawn, self._subnets, process_name=f"dockerd-{name}",
                              root_fs=self.engine.root_fs)
        self.engines.append(engine)
        engine.start()
        # The test images under the first engine's IDs, as a registry's image would be
        # on every node (each engine's own import has IDs of its own; a migration
        # refuses to move a tag that names another image on its target).
        engine.take_test_images_from(self.engine)
        return engine

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
            self.engine.start()
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
        for engine in reversed(self.engines):
            engine.stop()
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
        # What no dockerd knows of any more (the soak's dockerd_restart SIGKILLs one
        # while it starts a container: the container ran on under its shim, holding
        # its engine's root mounted, and that root's loop device, after the stop).
        try:
            reclaim.kill_processes(self.base_dir)
        except RuntimeError as exc:  # the mounts still go, lazily
            print(f"stack stop: {exc}", file=sys.stderr)
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
        wait_for(self._crds_established, timeout=60, interval=0.3,
                 what="every gpudock.dev CRD Established")
        if self.with_node:  # the chart's release brings (and owns) the RBAC
            return
        for manifest in ("rbac.yaml", "user-roles.yaml"):
            self.kubectl("apply", "-f", str(REPO_ROOT / "manifests" / manifest))
        # The agent runs with the chart's ClusterRole, bound to its own user, so the
        # tests prove the RBAC rules are enough.
        self.kubectl("create", "clusterrolebinding", "gpudock-agent-local",
                     "--clusterrole=gpudock-agent", f"--user={AGENT_USER}")

    def _crds_established(self) -> list[str] | None:
        """The CRDs in crds/ when all are Established, else None.

        Polled rather than `kubectl wait --for=condition=Established`: that fails at
        once ("status.conditions accessor error: <nil>") when a CRD has no status yet,
        which a busy API server shows for a moment after the apply (#27 item 5).
        """
        wanted = {path.name.removeprefix("gpudock.dev_").removesuffix(".yaml")
                  + ".gpudock.dev" for path in (REPO_ROOT / "crds").glob("*.yaml")}
        listed = self.kubectl("get", "crd", "-o", "json", check=False)
        if listed.returncode != 0:
            return None
        return sorted(wanted) if wanted <= established_crds(json.loads(listed.stdout)) else None

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

    def restart_dockerd(self, *, kill: bool = False, nvidia_runtime: str | None = None,
                        ) -> None:
        """The first node's dockerd started again (DockerEngine.restart)."""
        self.engine.restart(kill=kill, nvidia_runtime=nvidia_runtime)

    def free_subnet(self, prefix: int = 24) -> str:
        """A subnet for an instance network (--instance-subnet) that no bridge of
        this machine nor another subnet of this stack is over."""
        return self.engine.free_subnet(prefix)

    @property
    def docker_root(self) -> Path:
        return self.engine.root

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


# ---------------------------------------------------------------------- helpers
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


def established_crds(crd_list: dict[str, Any]) -> set[str]:
    """The names of the Established CRDs in a `kubectl get crd -o json` list; a CRD
    the API server has not given a status yet is simply not Established."""
    return {item["metadata"]["name"] for item in crd_list.get("items", [])
            if any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in (item.get("status") or {}).get("conditions") or [])}
