"""#26: the command lines people type (kubectl gpudock, gpudock), parsed as kubectl's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpudock.adapters.volumes.registry import BACKENDS
from gpudock.cli import kubectl_plugin

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("words", [
    ["exec", "ex", "-n", "ns", "--context", "c", "--kubeconfig", "k", "--", "cmd", "-n"],
    ["-n", "ns", "exec", "ex", "--context=c", "--kubeconfig", "k", "--", "cmd", "-n"],
    ["--namespace", "ns", "--context", "c", "exec", "--kubeconfig=k", "ex", "--", "cmd", "-n"],
    ["exec", "-nns", "ex", "--context", "c", "--kubeconfig", "k", "--", "cmd", "-n"],
])
def test_26_2_kubectl_flags_work_after_the_subcommand(words: list[str]) -> None:
    args = kubectl_plugin.parse(words)
    assert (args.namespace, args.context, args.kubeconfig) == ("ns", "c", "k")
    assert args.name == "ex"
    assert args.argv == ["cmd", "-n"]  # after --: the command's, never the plugin's


@pytest.mark.parametrize("command", [["history", "x"], ["rollback", "x", "--to-revision", "1"],
                                     ["nodes"], ["ports", "node-1"],
                                     ["commit", "x", "gpudock.invalid/ns/x:1"]])
def test_26_2_every_subcommand_takes_kubectls_flags(command: list[str]) -> None:
    args = kubectl_plugin.parse([*command, "-n", "ns", "--context", "c"])
    assert (args.namespace, args.context, args.kubeconfig) == ("ns", "c", None)
    assert kubectl_plugin.parse(command).namespace is None


@pytest.mark.parametrize("target", ["chart-lint", "manifests", "helm-install",
                                    "helm-upgrade", "helm-uninstall"])
def test_26_11_admin_targets_need_only_the_venv(target: str) -> None:
    """What `make TARGET` would run (make -n): the venv, never the apt packages or the
    Kubernetes build of the full prerequisites."""
    planned = subprocess.run(["make", "-n", "-C", str(REPO), target, "VENV=/nonexistent"],
                             capture_output=True, text=True, check=True).stdout
    installs = [line for line in planned.splitlines() if "install-prereqs.sh" in line]
    assert installs == ["GPUDOCK_ONLY_VENV=1 bash tests/stack/install-prereqs.sh"]
    heavy = subprocess.run(["make", "-n", "-C", str(REPO), "test", "VENV=/nonexistent"],
                           capture_output=True, text=True, check=True).stdout
    assert "\nbash tests/stack/install-prereqs.sh" in f"\n{heavy}"  # the full path stays


def _columns(kind_file: str) -> tuple[list[str], list[str]]:
    """A CRD's printer columns: (shown by default, -o wide only)."""
    crd = yaml.safe_load((REPO / "crds" / kind_file).read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    return ([c["name"].upper() for c in columns if not c.get("priority")],
            [c["name"].upper() for c in columns if c.get("priority")])


@pytest.mark.parametrize(("command", "kind_file"), [
    ("grs", "gpudock.dev_gpureplicasets.yaml"), ("svol", "gpudock.dev_sizedvolumes.yaml"),
    ("gpunodes", "gpudock.dev_gpunodes.yaml"), ("execrequests", "gpudock.dev_execrequests.yaml"),
    ("imagecommits", "gpudock.dev_imagecommits.yaml")])
def test_26_6_the_documented_printer_columns_are_the_crds(command: str, kind_file: str) -> None:
    api = (REPO / "docs" / "api.md").read_text()
    paragraph = api.split(f"`kubectl get {command}`:", 1)[1].split("\n\n", 1)[0]
    shown = re.sub(r"\([^)]*\)", "", paragraph.replace("\n", " "))  # the wide ones are in (...)
    listed = [c.strip(" .").upper() for c in shown.split(",")]
    default, wide = _columns(kind_file)
    assert listed == ["NAME", *default]
    for column in wide:
        assert column in paragraph.replace("\n", " "), f"{column} (-o wide) not documented"


def test_26_6_the_docs_say_what_the_product_has() -> None:
    helped = subprocess.run([sys.executable, "-m", "gpudock", "agent", "--help"],
                            capture_output=True, text=True, check=True).stdout
    agent_doc = (REPO / "docs" / "agent.md").read_text()
    row = next(line for line in agent_doc.splitlines() if line.startswith("| `--volume-backend`"))
    for backend in BACKENDS:
        assert backend in helped
        assert f"`{backend}`" in row
    install = (REPO / "docs" / "install.md").read_text()
    assert "## Supported versions" in install
    assert "Kubernetes 1.20 or later" in install
    chart = yaml.safe_load((REPO / "Chart" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.20.0-0"  # what the docs state
    assert "make dist" in install
    assert "kubectl-gpudock" in install
    planned = subprocess.run(["make", "-n", "-C", str(REPO), "dist", "VENV=/v"],
                             capture_output=True, text=True, check=True).stdout
    assert "/v/bin/python -m pip wheel" in planned
