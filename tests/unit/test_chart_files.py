"""Chart/ against the sources it must agree with: lint, CRDs, manifests/, RBAC and the
package version. Rendered with Helm's own engine (helm-python-sdk), no cluster."""

from __future__ import annotations

import tomllib
from typing import Any

import yaml

from gpudock.adapters.kube_api import in_cluster_server
from tests.stack.helm_chart import (
    CHART_DIR,
    MANIFESTS_DIR,
    lint,
    lint_failures,
    manifests,
    objects,
    render,
)
from tests.stack.localstack import REPO_ROOT


def by_kind(rendered: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects(rendered) if o["kind"] == kind]


def test_lint_passes_with_default_and_with_every_optional_part_on() -> None:
    assert lint_failures(lint()) == []
    assert lint_failures(lint({
        "agent": {"allowedHostPaths": ["/data"], "readOnlyHostPaths": ["/models"],
                  "volumeRoot": "/mnt/btrfs", "volumeBackend": "btrfs",
                  "store": "etcd://10.0.0.5:2379", "extraArgs": ["--resync-seconds", "60"]},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "priorityClassName": "system-node-critical",
        "apiServer": {"host": "10.0.0.1", "port": "6443"},
    })) == []


def test_chart_crds_are_the_repository_crds() -> None:
    ours = {p.name: p.read_bytes() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert chart == ours


def test_manifests_are_the_charts_default_render() -> None:
    for name, text in manifests().items():
        assert (MANIFESTS_DIR / name).read_text() == text, f"run `make manifests` ({name})"


def test_rendered_rbac_rules_equal_manifests_rbac() -> None:
    rendered = by_kind(render(), "ClusterRole")
    plain = [d for d in yaml.safe_load_all((MANIFESTS_DIR / "rbac.yaml").read_text()) if d]
    agent_role = next(r for r in rendered if r["metadata"]["name"] == "gpudock-agent")
    assert agent_role["rules"] == plain[0]["rules"]
    assert len(agent_role["rules"]) >= 10


def test_chart_versions_follow_the_package() -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == \
        ("v2", "gpudock", version, version)


def test_values_become_agent_settings_and_host_mounts() -> None:
    rendered = render({"agent": {"allowedHostPaths": ["/data"], "readOnlyHostPaths": ["/models"],
                                 "volumeRoot": "/mnt/vol", "portRange": "41000-41999",
                                 "maxRunningExecsPerNamespace": 3,
                                 "extraArgs": ["--resync-seconds", "60"]},
                       "image": {"tag": "dev"}})
    daemonset = by_kind(rendered, "DaemonSet")[0]
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPUDOCK_ALLOWED_HOST_PATHS"] == "/data"
    assert env["GPUDOCK_READ_ONLY_HOST_PATHS"] == "/models"
    assert env["GPUDOCK_PORT_RANGE"] == "41000-41999"
    assert env["GPUDOCK_VOLUME_ROOT"] == "/mnt/vol"
    assert env["GPUDOCK_MAX_RUNNING_EXECS_PER_NAMESPACE"] == "3"
    assert env["GPUDOCK_MAX_RUNNING_REQUESTS"] == "32"
    assert env["GPUDOCK_COMMIT_REPOSITORY_TEMPLATE"] == "gpudock.invalid/{namespace}/"
    assert container["args"] == ["agent", "--resync-seconds", "60"]
    assert container["image"] == "gpudock/agent:dev"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"]
    assert mounts["/models"]["readOnly"]
    assert mounts["/mnt/vol"]["mountPropagation"] == "Bidirectional"
    assert mounts["/var/lib/gpudock"]["mountPropagation"] == "Bidirectional"
    assert pod["hostNetwork"]
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "spec.nodeName"


def test_service_monitor_only_when_asked() -> None:
    assert by_kind(render(), "ServiceMonitor") == []
    monitors = by_kind(render({"metrics": {"serviceMonitor": {"enabled": True}}}),
                       "ServiceMonitor")
    assert monitors[0]["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind(render({"metrics": {"port": 0}}), "Service") == []


def test_in_cluster_server_comes_from_the_kubelets_variables() -> None:
    assert in_cluster_server({}) is None
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is None
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                              "KUBERNETES_SERVICE_PORT": "443"}) == "https://10.96.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1",
                              "KUBERNETES_SERVICE_PORT": "443"}) == "https://[fd00::1]:443"
