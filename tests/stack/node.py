"""A real Kubernetes node for a LocalStack: kubelet (dockershim on the stack's own
dockerd), kube-controller-manager and kube-scheduler, built from the same Debian
source as kube-apiserver (tests/stack/install-prereqs.sh).

Machine-wide changes, each written to the node's journal before it is made
(tests/stack/machine_changes.py) and undone by ``stop()`` (also after a failed start),
or by the next stack's start when the process running this one was killed outright
(tests/stack/reclaim.py):
  - iptables: FORWARD from the stack's bridge to anything but itself is dropped, and
    the host's own packets to the service range (where nothing answers: no kube-proxy)
    too, so no packet leaves the machine. The rules carry a comment naming this stack
    and only rules with that comment are removed.
  - sysctls the kubelet sets (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops)
    are saved before it starts and written back.
  - a cgroup per v1 hierarchy (the kubelet's --cgroup-root), removed bottom-up.
  - /var/lib/kubelet/device-plugins, /var/log/pods and /var/log/containers, which the
    kubelet makes whatever its --root-dir: removed if this node made them. So only one
    node runs on a machine at a time: a node holds an exclusive flock(2) on the cached
    Kubernetes binaries' directory from its start until its changes are undone (a
    second node, e.g. on make test's other worker, waits for it; the kernel lets go of
    the lock of a killed process).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.stack.machine_changes import MachineChanges, cgroup_mount_points
from tests.stack.processes import free_port, wait_for

if TYPE_CHECKING:
    from tests.stack.localstack import LocalStack

PAUSE_IMAGE = "gpudock-test/pause:1"
SERVICE_RANGE = "10.96.0.0/24"
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
KUBELET_HOST_DIRS = (Path("/var/lib/kubelet"), Path("/var/log/pods"),
                     Path("/var/log/containers"))
NODE_LABEL = "gpudock.dev/gpu-node=true"
NODE_WAIT = 1800  # seconds a node waits for another on the machine to stop
JOURNAL = "machine-changes.json"  # under the node's directory


def journal_of(base_dir: Path) -> Path:
    """Where the node of the stack in ``base_dir`` records its machine-wide changes."""
    return base_dir / "node" / JOURNAL


class KubeNode:
    def __init__(self, stack: LocalStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.base = stack.base_dir / "node"
        self.cgroup_root = f"gpudock-{stack.bridge}"
        self.comment = f"gpudock-stack {stack.base_dir.name}"
        self.kubelet_port = 0
        self.bin_dir = stack.kubectl_path.parent  # the cached Kubernetes binaries
        self.changes = MachineChanges(journal_of(stack.base_dir))
        self._machine_lock: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> KubeNode:
        try:
            self._take_the_machine()
            self.base.mkdir()
            self._drop_traffic_leaving_the_machine()
            self._save_sysctls()
            self._make_cgroups()
            self._import_pause_image()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kubelet()
            self._wait_ready()
        except BaseException:
            self.stop_processes()
            self.undo_machine_changes()
            raise
        return self

    def stop_processes(self) -> None:
        """Stop the kubelet first, so nothing restarts the pods being removed."""
        for name in ("kubelet", "kube-scheduler", "kube-controller-manager"):
            process = self.stack.processes.pop(name, None)
            if process is not None:
                process.stop()

    def undo_machine_changes(self) -> None:
        """Once no container of the node is left: cgroups, sysctls, rules, host dirs;
        then another node may start on the machine."""
        try:
            self.changes.undo()
        finally:
            if self._machine_lock is not None:
                os.close(self._machine_lock)  # closing the descriptor lets go of the lock
                self._machine_lock = None

    def _take_the_machine(self) -> None:
        """Wait (at most NODE_WAIT seconds) until no other node runs on this machine."""
        descriptor = os.open(self.bin_dir, os.O_RDONLY)
        deadline = time.monotonic() + NODE_WAIT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(descriptor)
                    raise RuntimeError(f"another node held this machine for {NODE_WAIT}s "
                                       f"(flock on {self.bin_dir})") from None
                time.sleep(0.5)
        self._machine_lock = descriptor

    # ------------------------------------------------------------------ steps
    def _drop_traffic_leaving_the_machine(self) -> None:
        bridge = self.stack.bridge
        tag = ["-m", "comment", "--comment", self.comment]
        for rule in (["FORWARD", "-i", bridge, "!", "-o", bridge, *tag, "-j", "DROP"],
                     ["OUTPUT", "-d", SERVICE_RANGE, *tag, "-j", "DROP"]):
            self.changes.rules.append(rule)
            self.changes.write()
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)

    def _save_sysctls(self) -> None:
        """Before the kubelet starts: the sysctls it sets, and the host directories it
        makes (those that are not there yet)."""
        for key in KUBELET_SYSCTLS:
            self.changes.sysctls[key] = subprocess.run(
                ["sysctl", "-n", key], capture_output=True, text=True, check=True).stdout.strip()
        self.changes.made_dirs += [str(d) for d in KUBELET_HOST_DIRS if not d.exists()]
        self.changes.write()

    def _make_cgroups(self) -> None:
        """The kubelet's cgroupfs driver wants --cgroup-root in every v1 hierarchy; runc
        makes pods' cgroups in the unified (v2) one too, so all are removed at stop."""
        for point in cgroup_mount_points():
            cgroup = point / self.cgroup_root
            self.changes.cgroups.append(str(cgroup))
            self.changes.write()
            cgroup.mkdir(exist_ok=True)

    def _import_pause_image(self) -> None:
        """The pod sandbox's image: the pause binary the prerequisites built."""
        with tempfile.TemporaryDirectory() as tmp:
            tarball = Path(tmp) / "pause.tar"
            with tarfile.open(tarball, "w") as tar:
                tar.add(self.bin_dir / "pause", arcname="pause")
            client = self.stack.docker_client()
            try:
                repository, tag = PAUSE_IMAGE.split(":")
                client.api.import_image(str(tarball), repository=repository, tag=tag,
                                        changes=['ENTRYPOINT ["/pause"]'])
            finally:
                client.close()

    def _start_controller_manager(self) -> None:
        pki = self.stack.base_dir / "pki"
        self.stack.spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.stack.kubeconfig}", "--leader-elect=false",
            "--port=0", "--secure-port=0",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'apiserver.crt'}", "--v=1",
        ])

    def _start_scheduler(self) -> None:
        self.stack.spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={self.stack.kubeconfig}",
            "--leader-elect=false", "--port=0", "--secure-port=0", "--v=1",
        ])

    def _start_kubelet(self) -> None:
        self.kubelet_port = free_port()
        ip = self.stack.bridge_ip
        self.stack.spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--kubeconfig={self.stack.kubeconfig}",
            f"--hostname-override={self.name}", f"--node-ip={ip}", f"--address={ip}",
            f"--port={self.kubelet_port}", "--healthz-port=0", "--read-only-port=0",
            "--container-runtime=docker", f"--docker-endpoint={self.stack.docker_host}",
            f"--pod-infra-container-image={PAUSE_IMAGE}",
            "--cgroup-driver=cgroupfs", f"--cgroup-root=/{self.cgroup_root}",
            "--fail-swap-on=false", "--oom-score-adj=0",
            f"--root-dir={self.base / 'kubelet'}", f"--cert-dir={self.base / 'pki'}",
            f"--volume-plugin-dir={self.base / 'volume-plugins'}",
            f"--experimental-dockershim-root-directory={self.base / 'dockershim'}",
            "--make-iptables-util-chains=false", f"--node-labels={NODE_LABEL}",
            # The stack's dockerd also holds gpudock's saved disks (images no pod uses):
            # the kubelet's image garbage collection must never remove them.
            "--image-gc-high-threshold=100", "--image-gc-low-threshold=99",
            "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
            "--sync-frequency=10s", "--v=1",
        ])

    def _wait_ready(self) -> None:
        def ready() -> bool:
            found = self.stack.kubectl("get", "node", self.name, "-o", "json", check=False)
            if found.returncode != 0:
                return False
            conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in conditions)

        for name in ("kubelet", "kube-controller-manager", "kube-scheduler"):
            process = self.stack.processes[name]
            if not process.alive():
                raise RuntimeError(f"{name} exited:\n{process.log_tail()}")
        wait_for(ready, 90, 1, f"node {self.name} Ready")

