"""REST API benchmark (#25): `gpudock api` (uvicorn, --auth none) against the local
stack with an agent.

    python -m tests.bench.rest_api [--clients 50] [--requests 20] [--rounds 3]

Prints GET /api/v1/replicaSet/:name latency (p50, p99) with ``--clients`` concurrent
clients over loopback, and POST /api/v1/replicaSet (answered when Ready) against
`kubectl apply` of the same spec plus waiting for Ready; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from gpudock.cli.retained_commands import table
from tests.stack.agent_process import AgentProcess
from tests.stack.api_process import ApiProcess
from tests.stack.localstack import NODE_NAME, LocalStack
from tests.stack.resources import apply, condition, gpu_replica_set

IMAGE = "gpudock-test/busybox:1"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def get_latency(api: ApiProcess, clients: int, requests: int) -> list[float]:
    def one_client(_: int) -> list[float]:
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            assert api.call("GET", "/replicaSet/probe").code == 200
            times.append(time.perf_counter() - start)
        return times
    with ThreadPoolExecutor(clients) as pool:
        return [t for batch in pool.map(one_client, range(clients)) for t in batch]


def post_to_ready(api: ApiProcess, name: str) -> float:
    start = time.perf_counter()
    answer = api.call("POST", "/replicaSet", {"imageName": IMAGE, "replicaSetName": name,
                                              "cmd": ["sleep", "infinity"]})
    assert answer.code == 200, answer.raw
    return time.perf_counter() - start


def apply_to_ready(stack: LocalStack, namespace: str, name: str) -> float:
    start = time.perf_counter()
    apply(stack, namespace, gpu_replica_set(name, gpus=0, command=["sleep", "infinity"]))
    while condition(stack, namespace, name, "Ready").get("status") != "True":
        time.sleep(0.05)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.rest_api")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with LocalStack() as stack:
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        stack.kubectl("create", "namespace", namespace)
        agent = AgentProcess(stack, node_name=NODE_NAME,
                             extra_args=["--namespace", namespace]).start()
        api = ApiProcess(stack, namespace).start()
        try:
            post_to_ready(api, "probe")
            latencies = get_latency(api, args.clients, args.requests)
            posts, applies = [], []
            for round_ in range(args.rounds):
                posts.append(post_to_ready(api, f"api{round_}"))
                applies.append(apply_to_ready(stack, namespace, f"kubectl{round_}"))
            post, applied = statistics.median(posts), statistics.median(applies)
            rows = [
                ("measure", "value"),
                ("GET /replicaSet/:name p50", f"{_percentile(latencies, 0.5) * 1000:.1f} ms"),
                ("GET /replicaSet/:name p99", f"{_percentile(latencies, 0.99) * 1000:.1f} ms"),
                ("POST /replicaSet to Ready (median)", f"{post:.2f} s"),
                ("kubectl apply to Ready (median)", f"{applied:.2f} s"),
                ("ratio POST / apply", f"{post / applied:.2f}"),
            ]
            print(f"{args.clients} clients x {args.requests} GETs; {args.rounds} creates each")
            table(rows, sys.stdout)
        finally:
            api.stop()
            stack.kubectl("delete", "grs", "--all", "-n", namespace, "--timeout=120s",
                          check=False)
            agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
