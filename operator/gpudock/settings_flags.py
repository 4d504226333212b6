"""The flags of the agent and the scheduler, each with its GPUDOCK_* variable: what
``settings_from`` (settings.py) reads into the one Settings object."""

from __future__ import annotations

import argparse

from gpudock.adapters.volumes.registry import BACKENDS as VOLUME_BACKENDS
from gpudock.api.image_commit import DEFAULT_REPOSITORY_TEMPLATE
from gpudock.api.paths import NAMESPACE_PLACEHOLDER
from gpudock.core.gpu_attach import DEFAULT_GPU_ATTACH, GPU_ATTACHMENTS
from gpudock.settings import (
    DEFAULT_INSTANCE_SUBNET,
    DISK_SAVES,
    POLICIES,
    SCHEDULER_MODES,
    GpuBackend,
)


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the agent's flags; every default comes from the environment."""
    parser.add_argument("--node-name", help="this node's name (default: the hostname)")
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, "
                        "then $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--docker-host", help="Docker endpoint, e.g. unix:///run/docker.sock")
    parser.add_argument("--gpu-backend", choices=[b.value for b in GpuBackend],
                        help="where the GPU inventory comes from (default: nvml)")
    parser.add_argument("--simulated-gpus", type=int,
                        help="number of GPUs of the simulated backend (default: 8)")
    parser.add_argument("--nvml-library", help="path of a libnvidia-ml.so.1 to load first")
    parser.add_argument("--gpu-attach", choices=list(GPU_ATTACHMENTS),
                        help="how containers get their GPUs (default: "
                             f"{DEFAULT_GPU_ATTACH}; the ways are in core/gpu_attach.py)")
    parser.add_argument("--store", help="revision store: sqlite:PATH (default: "
                        "<state-dir>/revisions.sqlite3) or etcd://HOST:PORT")
    parser.add_argument("--port-range", help="host ports to allocate (default: 40000-65535)")
    parser.add_argument("--allowed-host-path", action="append", default=None,
                        help="a root under which hostPath mounts are allowed (repeatable; "
                             f"default: none); with {NAMESPACE_PLACEHOLDER} in it, e.g. "
                             f"/mynfs/{NAMESPACE_PLACEHOLDER}, a root per namespace, the "
                             "placeholder replaced by the resource's namespace; without "
                             "it, a root shared by every namespace")
    parser.add_argument("--read-only-host-path", action="append", default=None,
                        help="a root under which hostPath mounts are allowed read-only "
                             f"(repeatable; default: none; {NAMESPACE_PLACEHOLDER} as for "
                             "--allowed-host-path)")
    parser.add_argument("--allowed-host-ports",
                        help="where an explicit spec hostPort may lie, e.g. 1024-65535 "
                             "(default: the --port-range)")
    parser.add_argument("--state-dir", help="agent state directory (default: /var/lib/gpudock)")
    parser.add_argument("--resync-seconds", type=float,
                        help="period of the drift check (default: 30)")
    parser.add_argument("--heartbeat-seconds", type=float,
                        help="period of this node's GpuNode heartbeat; a node silent for "
                             "3 periods is NodeNotReady on its resources (default: 30)")
    parser.add_argument("--volume-backend", choices=list(VOLUME_BACKENDS),
                        help="SizedVolume backend of this node for new volumes "
                             "(default: loopfile)")
    parser.add_argument("--volume-root",
                        help="where SizedVolumes live (default: <state-dir>/volumes)")
    parser.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics "
                             "(default: 0, off)")
    parser.add_argument("--hide-holder-names", action="store_true", default=None,
                        help="the GpuNode (readable cluster-wide) says only that a GPU or "
                             "host port is held, not by which namespace and name "
                             "(default: off; metrics never carry names)")
    parser.add_argument("--liveness-endpoint",
                        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--stop-timeout", type=float,
                        help="seconds a container gets to exit after SIGTERM before it is "
                             "killed, when stopped for a revision, Paused or Stopped "
                             "(default: 30)")
    parser.add_argument("--max-image-layers", type=int,
                        help="flatten a saved disk (export + import) when its image has "
                             "more layers than this (default: 100; overlay2 allows 125)")
    parser.add_argument("--disk-saves", choices=list(DISK_SAVES),
                        help="how a stopped container's disk is saved for the next "
                             "revision, a rollback or a restart: layer (copy its overlay2 "
                             "writable layer, mostly while it still runs, and move the "
                             "layer itself into the next container; docker commit where "
                             "that cannot be done; default), layer-stopped (the same "
                             "copy, all of it after the stop, and a second copy into the "
                             "next container) or commit (always docker commit)")
    parser.add_argument("--max-running-requests", type=int,
                        help="ExecRequests and ImageCommits that run at once on this node, "
                             "each on a thread of their own pool, apart from the "
                             "reconciles'; more wait Pending (default: 32)")
    parser.add_argument("--max-running-execs-per-namespace", type=int,
                        help="ExecRequests of one namespace that run at once on this node; "
                             "more wait Pending, ExecLimitReached (default: 8)")
    parser.add_argument("--commit-repository-template",
                        help="where the ImageCommits of a namespace may write images, "
                             "{namespace} replaced by theirs; it must start with a "
                             "registry host, so no commit can mean a registry's image "
                             f"(default: {DEFAULT_REPOSITORY_TEMPLATE}, a host that never "
                             "resolves)")
    parser.add_argument("--instance-network",
                        help="the Docker bridge network the agent makes for its instances "
                             "(default: gpudock); each instance has a fixed address there, "
                             "the same in every revision")
    parser.add_argument("--instance-subnet",
                        help="the instance network's IPv4 subnet; it caps the node's "
                             "instances at its size less 3 (network, gateway, broadcast); "
                             f"more wait Pending, AddressesExhausted (default: "
                             f"{DEFAULT_INSTANCE_SUBNET}, 1021 instances)")
    parser.add_argument("--cpus-per-gpu",
                        help="CPU limit per GPU of an instance that sets no "
                             "spec.resources.limits.cpu, a Kubernetes quantity such as 4 "
                             "or 1500m (default: 0, none)")
    parser.add_argument("--memory-per-gpu",
                        help="memory limit per GPU of an instance that sets no "
                             "spec.resources.limits.memory, e.g. 64Gi (default: 0, none)")
    parser.add_argument("--shm-per-gpu",
                        help="/dev/shm size per GPU of an instance that sets no "
                             "spec.shmSize, e.g. 16Gi (default: 0, Docker's 64Mi)")
    parser.add_argument("--stream-port", type=int,
                        help="serve `kubectl gpudock logs` and `exec -i/-t` over TLS on this "
                             "port (default: 0, off; docs/day2.md)")
    parser.add_argument("--stream-address",
                        help="the node's address the plugin connects to, in the serving "
                             "certificate and the GpuNode (default: 127.0.0.1)")
    parser.add_argument("--stream-idle-seconds", type=float,
                        help="close a followed stream after this long without output, a "
                             "shell without a byte either way (default: 300)")
    parser.add_argument("--namespace", action="append", default=None,
                        help="watch only this namespace (repeatable; default: all)")
    add_scheduler_arguments(parser)
    parser.add_argument("--scheduler", choices=SCHEDULER_MODES,
                        help="auto: this agent is a candidate to lead the cluster "
                             "scheduler (one leads, by a Lease); off: it schedules nothing "
                             "(default: auto)")
    parser.add_argument("--transfer-address",
                        help="address this agent receives migrated instances on, and "
                             "tells other agents in its GpuNode (default: every address; "
                             "advertised: the node's first address)")
    parser.add_argument("--transfer-port", type=int,
                        help="TCP port of the migration endpoint (default: 9465)")
    parser.add_argument("--migration-bandwidth", type=int,
                        help="bytes/s a migration out of this node may send (default: 0, "
                             "unlimited)")
    parser.add_argument("--max-outbound-migrations", type=int,
                        help="migrations out of this node at once; more wait Pending "
                             "(default: 2)")
    parser.add_argument("--migration-target-wait", type=float,
                        help="seconds a migration waits Pending for a node with room "
                             "before it fails TargetUnschedulable (default: 300)")
    parser.add_argument("--migration-hold-seconds", type=float,
                        help="seconds the target must have run a moved instance, Ready, "
                             "before the source removes its stopped copy; also how long "
                             "the target may fail to run it (at least 20) before it goes "
                             "back to the source (default: 10)")
    parser.add_argument("--crash-at", action="append", default=None, metavar="POINT",
                        help="for crash tests: SIGKILL the agent the first time it reaches "
                             "POINT, e.g. PreserveDisk.committed (repeatable; default: "
                             "none; see docs/revisions.md)")
    # GPU health (docs/gpu-health.md)
    parser.add_argument("--simulated-faults", metavar="FILE",
                        help="simulated backend: a file of JSON lines {\"gpu\": 2, "
                             "\"xid\": 79}, read as it grows (default: none)")
    parser.add_argument("--simulated-usage", metavar="FILE",
                        help="simulated backend: a JSON file of each GPU's usage, "
                             "{\"0\": {\"utilization\": 40, \"memoryUsedMiB\": 1024, "
                             "\"processes\": 1}}, read at each listing (default: idle)")
    parser.add_argument("--instance-metrics", action="store_true", default=None,
                        help="also serve the usage metrics labelled with each holder's "
                             "namespace and name, and GPU-seconds per instance (default: "
                             "off; whoever can scrape the node reads them)")
    parser.add_argument("--gpu-readmit-seconds", type=float,
                        help="a GPU out of service for a transient XID comes back after "
                             "this long without another error (default: 600)")
    parser.add_argument("--gpu-access-probe-seconds", type=float,
                        help="run the GPU access probe in each running GPU container this "
                             "often; one that fails is recreated, disk kept (default: 0, "
                             "off)")
    parser.add_argument("--gpu-access-probe-command",
                        help="the probe, split like a shell's words (default: "
                             "nvidia-smi -L)")


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags the scheduler reads (in the agent and in `gpudock scheduler`)."""
    parser.add_argument("--scheduling-policy", choices=POLICIES,
                        help="placement of resources that name no spec.schedulingPolicy: "
                             "Binpack (the fullest node that fits) or Spread (the emptiest) "
                             "(default: Binpack)")
    parser.add_argument("--release-namespace",
                        help="namespace of the scheduler's Lease gpudock-scheduler "
                             "(default: $POD_NAMESPACE, else default)")
