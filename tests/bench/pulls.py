"""Image pull benchmark (#22 item 9): the agent's apply -> Ready of an instance whose
image is not on the node (pulled with an imagePullSecret) against `docker pull` of the
same image from the same registry, with the same credentials.

    python -m tests.bench.pulls [--layers 4] [--layer-mib 16] [--rounds 3]

The image is busybox plus ``--layers`` layers of random data (incompressible), pushed
to a real registry (Debian's docker-registry, htpasswd auth, on 127.0.0.1; see
tests/stack/registry.py). Between runs the image and its layers leave the node, so
every run downloads them. Prints a table and the ratio (target at most 1.1x); asserts
nothing about speed. Needs root (the local stack).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import docker.errors
import yaml

from gpudock.cli.retained_commands import table
from tests.bench.watches import Watch, ready
from tests.stack.agent_process import AgentProcess
from tests.stack.localstack import BUSYBOX_IMAGE, LocalStack, wait_for
from tests.stack.registry import Registry
from tests.stack.resources import gpu_replica_set

NAMESPACE = "bench-pulls"


def _drop(client: docker.DockerClient, reference: str) -> None:
    """The image and its own layers leave the node (a later pull downloads them)."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(reference, force=True)
    wait_for(lambda: not client.images.list(name=reference.rsplit(":", 1)[0]), 60,
             interval=0.1, what=f"{reference} gone")


def _docker_pull(stack: LocalStack, reference: str, config: Path) -> float:
    env = {**stack.env(), "DOCKER_CONFIG": str(config)}
    start = time.perf_counter()
    subprocess.run(["docker", "pull", "-q", reference], check=True, env=env,
                   capture_output=True)
    return time.perf_counter() - start


def _library_pull(client: docker.DockerClient, reference: str, auth: dict[str, str],
                  ) -> float:
    """The agent's own Docker call (docker-py's streamed pull, each progress message
    decoded, then an inspect) from this process: what the library costs, no agent."""
    repository, tag = reference.rsplit(":", 1)
    start = time.perf_counter()
    for _ in client.api.pull(repository, tag, stream=True, decode=True, auth_config=auth):
        pass
    client.images.get(reference)
    return time.perf_counter() - start


def _agent_pull(stack: LocalStack, watch: Watch, reference: str, name: str) -> float:
    """apply -> Ready, as the watch saw it (waiting costs no CPU: a ``kubectl get``
    every 50 ms took a share of the 2 CPUs from dockerd while it pulled)."""
    body = gpu_replica_set(name, gpus=0, image=reference,
                           imagePullSecrets=[{"name": "pull"}], historyPolicy="Purge")
    start = time.time()
    stack.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(body))
    elapsed = watch.wait(name, ready, start, 600) - start
    stack.kubectl("delete", "grs", name, "-n", NAMESPACE, "--timeout=120s")
    return elapsed


def _gone(client: docker.DockerClient) -> None:
    wait_for(lambda: not client.containers.list(all=True, filters={
        "label": f"gpudock.dev/namespace={NAMESPACE}"}), 120, what="containers removed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pulls",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    password = secrets.token_hex(12)
    with LocalStack() as stack, Registry(stack.base_dir / "registry",
                                         {"bench": password}) as registry:
        client = stack.docker_client()
        reference = registry.push_new(client, BUSYBOX_IMAGE, "bench/big", "1", "bench",
                                      layers=args.layers,
                                      layer_bytes=args.layer_mib * 2**20)
        stack.kubectl("create", "namespace", NAMESPACE)
        stack.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": registry.dockerconfigjson("bench")}))
        watch = Watch(stack, NAMESPACE, "gpureplicasets")
        agent = AgentProcess(stack, name="bench-pulls-agent", gpus=1,
                             extra_args=["--namespace", NAMESPACE]).start()
        config = Path(tempfile.mkdtemp(prefix="docker-config-"))
        subprocess.run(["docker", "login", "-u", "bench", "--password-stdin", registry.host],
                       input=password, text=True, check=True, capture_output=True,
                       env={**stack.env(), "DOCKER_CONFIG": str(config)})
        plain: list[float] = []
        library: list[float] = []
        auth = {"username": "bench", "password": password, "serveraddress": registry.host}
        through_agent: list[float] = []
        present: list[float] = []  # the same apply -> Ready with the image on the node
        try:
            for round_ in range(args.rounds):
                kinds = ("docker", "library", "agent")
                # Each round in another order: a slower moment of the shared machine
                # falls on each kind of pull in turn.
                for kind in kinds[round_ % 3:] + kinds[:round_ % 3]:
                    _drop(client, reference)
                    if kind == "docker":
                        plain.append(_docker_pull(stack, reference, config))
                    elif kind == "library":
                        library.append(_library_pull(client, reference, auth))
                    else:
                        through_agent.append(_agent_pull(stack, watch, reference,
                                                              f"pull-{round_}"))
                        _gone(client)   # (its container holds the layers until removed)
                present.append(_agent_pull(stack, watch, reference, f"present-{round_}"))
                _gone(client)
        finally:
            agent.stop()
            watch.stop()
            client.close()
            subprocess.run(["rm", "-rf", str(config)], check=False)
        size = args.layers * args.layer_mib
        events = json.loads(stack.kubectl("get", "events", "-n", NAMESPACE, "-o",
                                          "json").stdout)["items"]
        by_round = {int(e["involvedObject"]["name"].split("-")[1]): float(m.group(1))
                    for e in events if e.get("reason") == "Pulled"
                    and (m := re.search(r" in ([0-9.]+)s", e.get("message") or ""))}
        steps = [by_round[r] for r in sorted(by_round)]
        rows = [("what", "median s", "runs s"),
                ("docker pull", f"{statistics.median(plain):.2f}",
                 " ".join(f"{t:.2f}" for t in plain)),
                ("docker-py pull + inspect (the agent's call, no agent)",
                 f"{statistics.median(library):.2f}", " ".join(f"{t:.2f}" for t in library)),
                ("agent apply -> Ready", f"{statistics.median(through_agent):.2f}",
                 " ".join(f"{t:.2f}" for t in through_agent)),
                ("the agent's pull step (Pulled event)",
                 f"{statistics.median(steps):.2f}" if steps else "-",
                 " ".join(f"{t:.2f}" for t in steps)),
                ("agent apply -> Ready, image present", f"{statistics.median(present):.2f}",
                 " ".join(f"{t:.2f}" for t in present))]
        print(f"image: busybox + {args.layers} x {args.layer_mib} MiB random layers "
              f"({size} MiB), {args.rounds} rounds, registry {registry.host}")
        table(rows, sys.stdout)
        ratio = statistics.median(through_agent) / statistics.median(plain)
        pull_part = statistics.median(a - p for a, p in zip(through_agent, present,
                                                             strict=True))
        print(f"ratio agent apply -> Ready / docker pull: {ratio:.2f}x (with the container's "
              "create and start: not the pull alone)")
        if len(steps) == args.rounds:
            own = [step / docker for step, docker in zip(steps, plain, strict=True)]
            medians = statistics.median(steps) / statistics.median(plain)
            print(f"ratio the agent's pull step / docker pull: {medians:.2f}x of the medians, "
                  f"{statistics.median(own):.2f}x the median of each round's own "
                  f"(min {min(own):.2f}, max {max(own):.2f}) (target <= 1.1x)")
        print(f"ratio of the pull's own part (apply -> Ready less the same with the image "
              f"present) / docker pull: {pull_part / statistics.median(plain):.2f}x "
              f"(target <= 1.1x); cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
