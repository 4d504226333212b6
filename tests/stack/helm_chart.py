"""The Helm chart in Chart/, through helm-python-sdk (Helm's engine as a library; no
helm binary), and the plain manifests/ rendered from it.

``python -m tests.stack.helm_chart lint|manifests|check-manifests|install|upgrade|uninstall``
(``make chart-lint``, ``make manifests``, ``make helm-install`` ...); install, upgrade
and uninstall act on the cluster that $KUBECONFIG names.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from helm_python import chart as helm_chart
from helm_python.config import Config

if TYPE_CHECKING:
    from tests.stack.localstack import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "Chart"
MANIFESTS_DIR = REPO_ROOT / "manifests"
RELEASE = "gpudock"
NAMESPACE = "gpudock-system"

# manifests/<file>: the chart templates it holds, in order (with default values).
MANIFEST_FILES = {
    "agent.yaml": ("serviceaccount.yaml", "clusterrolebinding.yaml", "daemonset.yaml",
                   "service.yaml"),
    "rbac.yaml": ("clusterrole.yaml",),
    "user-roles.yaml": ("user-roles.yaml",),
}
GENERATED = ("# Generated from Chart/ with its default values by `make manifests`; edit the\n"
             "# chart, not this file (a test checks the two agree).\n")
NAMESPACE_OBJECT = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"


def lint(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Helm's lint report; ``errors`` and severity-3 messages are failures."""
    return helm_chart.lint(str(CHART_DIR), dict(values or {}), strict=True)


def lint_failures(report: Mapping[str, Any]) -> list[str]:
    return [*report.get("errors", []),
            *(m["error"] for m in report.get("messages", []) if m.get("severity", 0) >= 2)]


def render(values: Mapping[str, Any] | None = None, *, release: str = RELEASE,
           namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path (``gpudock/templates/x.yaml``) -> rendered text, NOTES.txt left out."""
    rendered = helm_chart.Chart.load(str(CHART_DIR)).render(
        dict(values or {}), name=release, namespace=namespace)
    return {path: text for path, text in rendered.items() if not path.endswith("NOTES.txt")}


def objects(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in rendered templates, in template order."""
    found: list[dict[str, Any]] = []
    for path in sorted(rendered):
        found += [doc for doc in yaml.safe_load_all(rendered[path]) if doc]
    return found


def manifests() -> dict[str, str]:
    """manifests/<file> -> the text it must have: the default render, commented."""
    rendered = render()
    texts: dict[str, str] = {}
    for filename, templates in MANIFEST_FILES.items():
        parts = [NAMESPACE_OBJECT] if filename == "agent.yaml" else []
        parts += [rendered[f"gpudock/templates/{template}"].strip("\n") + "\n"
                  for template in templates
                  if rendered[f"gpudock/templates/{template}"].strip()]
        texts[filename] = GENERATED + "---\n".join(parts)
    return texts


def stale_manifests() -> list[str]:
    """The manifests/ files that differ from the chart's default render."""
    return [name for name, text in manifests().items()
            if not (MANIFESTS_DIR / name).is_file()
            or (MANIFESTS_DIR / name).read_text() != text]


def helm(kubeconfig: str | Path | None = None, namespace: str = NAMESPACE) -> Config:
    """A Helm client for the cluster the kubeconfig names (None: $KUBECONFIG)."""
    return Config(kubeconfig_path=str(kubeconfig) if kubeconfig else None,
                  namespace=namespace)


def local_stack_values(stack: LocalStack, **agent: Any) -> dict[str, Any]:
    """Values that run the chart's agent on a LocalStack's node: the image built into
    its dockerd (never pulled), that dockerd's socket and root, a state dir the pod can
    mount with Bidirectional propagation, simulated GPUs, and the API server where the
    host network reaches it (there is no kube-proxy)."""
    state_dir = stack.shared_dir("agent-pod-state")
    return {
        "image": {"pullPolicy": "Never"},
        "docker": {"socket": str(stack.docker_socket), "dataRoot": str(stack.docker_root)},
        "agent": {"gpuBackend": "simulated", "stateDir": str(state_dir),
                  "stopTimeout": 5, "instanceSubnet": stack.instance_subnet, **agent},
        "apiServer": {"host": "127.0.0.1", "port": str(stack.apiserver_port)},
    }


def build_image(stack: LocalStack) -> None:
    """``image/build.sh`` into the stack's dockerd (cached: seconds after the first)."""
    subprocess.run(["bash", str(REPO_ROOT / "image" / "build.sh")], env=stack.env(),
                   check=True)


def release_status(release: Mapping[str, Any]) -> str:
    """A release's status ("deployed", ...): the SDK returns a summary or a release."""
    summary = release.get("summary", release)
    return str(summary.get("status") or summary.get("info", {}).get("status"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack.helm_chart")
    parser.add_argument("command", choices=["lint", "manifests", "check-manifests", "install",
                                            "upgrade", "uninstall"])
    parser.add_argument("--values", type=Path, help="a values file (install/upgrade)")
    args = parser.parse_args(argv)
    values = yaml.safe_load(args.values.read_text()) if args.values else {}
    if args.command == "lint":
        failures = lint_failures(lint(values))
        print("\n".join(failures) or "Chart/: lint passed")
        return 1 if failures else 0
    if args.command == "manifests":
        for name, text in manifests().items():
            (MANIFESTS_DIR / name).write_text(text)
            print(f"wrote manifests/{name}")
        return 0
    if args.command == "check-manifests":
        stale = stale_manifests()
        print(f"stale: {', '.join(stale)} (run `make manifests`)" if stale
              else "manifests/ equals the chart's default render")
        return 1 if stale else 0
    client = helm()
    if args.command == "install":
        release = client.install(str(CHART_DIR), RELEASE, values, namespace=NAMESPACE,
                                 create_namespace=True, wait="watcher", timeout=300)
    elif args.command == "upgrade":
        release = client.upgrade(str(CHART_DIR), RELEASE, values, namespace=NAMESPACE,
                                 wait="watcher", timeout=300)
    else:
        client.uninstall(RELEASE)
        print(f"release {RELEASE} uninstalled (CRDs and resources kept)")
        return 0
    print(f"release {RELEASE}: {release_status(release)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
