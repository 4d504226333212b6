"""#26 item 12: the conditions GitOps tools read (core/kstatus.py) and the Argo CD
health checks shipped in gitops/argocd/ (run against the real stack's statuses in
tests/integration/test_gitops.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudock.core.kstatus import with_kstatus
from tests.stack.lua_health import health

REPO = Path(__file__).resolve().parents[2]
KINDS = ("GpuReplicaSet", "SizedVolume", "ExecRequest", "ImageCommit", "GpuNode",
         "GpuMigration")


def _found(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in with_kstatus(status)["conditions"]}


def _cond(kind: str, status: str, reason: str = "R", generation: int | None = 3,
          ) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": "m",
            "lastTransitionTime": "t", "observedGeneration": generation}


def test_26_12_a_replica_set_or_volume_reconciling_or_stalled_follows_its_own() -> None:
    found = _found({"observedGeneration": 3, "conditions": [
        _cond("Ready", "False", "CrashLoop"), _cond("Progressing", "False"),
        _cond("Degraded", "True", "CrashLoop")]})
    assert (found["Reconciling"]["status"], found["Stalled"]["status"]) == ("False", "True")
    assert found["Stalled"]["reason"] == "CrashLoop"
    assert {c["observedGeneration"] for c in found.values()} == {3}
    found = _found({"conditions": [_cond("Ready", "False"),
                                   _cond("Progressing", "True", "InsufficientGPUs"),
                                   _cond("Degraded", "False")]})
    assert found["Reconciling"]["reason"] == "InsufficientGPUs"
    assert found["Stalled"]["status"] == "False"
    again = with_kstatus(with_kstatus({"conditions": [_cond("Progressing", "True")]}))
    assert [c["type"] for c in again["conditions"]] == ["Progressing", "Reconciling",
                                                       "Stalled"]  # derived once


def test_26_12_a_request_is_ready_when_done_and_stalled_when_failed() -> None:
    complete = _cond("Complete", "False", "Running", None)
    for phase, expected in (("Pending", ("False", "True", "False")),
                            ("Running", ("False", "True", "False")),
                            ("Completed", ("True", "False", "False")),
                            ("Succeeded", ("True", "False", "False")),
                            ("Failed", ("False", "False", "True"))):
        found = _found({"phase": phase, "observedGeneration": 1, "conditions": [complete]})
        assert tuple(found[k]["status"] for k in ("Ready", "Reconciling", "Stalled")) \
            == expected, phase
        assert found["Ready"]["observedGeneration"] == 1


def test_26_12_a_gpu_node_is_stalled_only_when_not_ready() -> None:
    found = _found({"conditions": [_cond("Ready", "True", "AgentReady", None)]})
    assert (found["Reconciling"]["status"], found["Stalled"]["status"]) == ("False", "False")
    assert _found({"conditions": [_cond("Ready", "False")]})["Stalled"]["status"] == "True"
    assert with_kstatus({"phase": "x"}) == {"phase": "x"}  # nothing to derive from


def test_26_12_the_argocd_config_carries_the_health_script_for_every_kind() -> None:
    script = (REPO / "gitops" / "argocd" / "health.lua").read_text()
    data = yaml.safe_load((REPO / "gitops" / "argocd" / "argocd-cm-health.yaml").read_text())
    assert data["data"] == {f"resource.customizations.health.gpudock.dev_{kind}": script
                            for kind in KINDS}
    crds = {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]
            for p in (REPO / "crds").glob("*.yaml")}
    assert crds == set(KINDS)
    gitops = (REPO / "docs" / "gitops.md").read_text()
    assert "kind: Application" in gitops
    assert "kind: Kustomization" in gitops


@pytest.mark.skipif(shutil.which("lua5.1") is None, reason="lua5.1 not installed (make prereqs)")
def test_23_a_gpu_migration_is_healthy_once_it_succeeded() -> None:
    """GpuMigration writes no conditions: its phase is its health."""
    def of(phase: str) -> str:
        return health({"kind": "GpuMigration", "metadata": {"generation": 1},
                       "status": {"phase": phase, "reason": "Migrating", "message": "m"}})[0]
    assert [of(p) for p in ("Pending", "Transferring", "Succeeded", "Failed", "Cancelled")] \
        == ["Progressing", "Progressing", "Healthy", "Degraded", "Degraded"]
