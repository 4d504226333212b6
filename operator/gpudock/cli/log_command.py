"""``kubectl gpudock logs NAME``: the container output of a GpuReplicaSet, from the
agent of its node (agent/log_stream.py). The agent's address and certificate are read
from its GpuNode; the connection is verified against that certificate and carries the
caller's own bearer token (the kubeconfig's), which the agent has the API server
check, with the caller's permission to get gpureplicasets/log."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from gpudock.adapters.kube_api import KubeApi
from gpudock.api.gpu_replica_set import PLURAL

GPU_NODES = "gpunodes"
CHUNK = 64 * 1024


def endpoint(kube: KubeApi, namespace: str, name: str, what: str,
             err: TextIO) -> tuple[str, dict[str, Any], str] | None:
    """(node, its GpuNode's status.stream, the caller's token) for a stream of the
    GpuReplicaSet; None (said on ``err``) when there is none."""
    body = kube.get(PLURAL, namespace, name)
    node = (body.get("status") or {}).get("node") or (body.get("spec") or {}).get("nodeName")
    stream = (kube.get_cluster(GPU_NODES, str(node)).get("status") or {}).get("stream")
    if not stream:
        print(f"error: the agent of node {node} serves no {what} (its --stream-port is off)",
              file=err)
        return None
    token = kube.bearer_token()
    if not token:
        print(f"error: {what} needs a bearer token in the kubeconfig (the agent has the API "
              "server check it)", file=err)
        return None
    return str(node), dict(stream), token


def logs(kube: KubeApi, namespace: str, name: str, follow: bool, tail: int | None,
         previous: bool, out: TextIO, err: TextIO) -> int:
    found = endpoint(kube, namespace, name, "logs", err)
    if found is None:
        return 1
    node, stream, token = found
    query = urllib.parse.urlencode({k: v for k, v in (
        ("follow", "1" if follow else ""), ("tail", "" if tail is None else str(tail)),
        ("previous", "1" if previous else "")) if v})
    url = f"{stream['url']}/logs/{namespace}/{name}?{query}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cadata=str(stream["caBundle"]))
    try:
        with urllib.request.urlopen(request, context=context) as answer:
            while chunk := answer.read1(CHUNK):
                out.write(chunk.decode(errors="replace"))
                out.flush()
    except urllib.error.HTTPError as exc:
        print(f"error: {exc.code}: {exc.read().decode(errors='replace').strip()}", file=err)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the agent of node {node} at {stream['url']}: {exc}",
              file=err)
        return 1
    return 0
