"""#24: the pure rules of GPU health (classes, marks, re-admission), the simulated
fault file, and the marks kept across agent restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpudock.adapters.simulated_gpus import SimulatedFaults, SimulatedGpuInventory
from gpudock.agent.gpu_health import GpuHealth
from gpudock.api.reasons import Reason
from gpudock.core.gpu_health import (
    Fault,
    FaultClass,
    expired,
    marked,
    unhealthy,
    with_health,
)
from gpudock.core.gpus import GpuDevice

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:20:00Z"


@pytest.mark.parametrize(("xid", "kind"), [
    (13, FaultClass.IGNORED), (31, FaultClass.IGNORED), (43, FaultClass.IGNORED),
    (45, FaultClass.IGNORED), (68, FaultClass.IGNORED), (109, FaultClass.IGNORED),
    (48, FaultClass.FATAL), (79, FaultClass.FATAL), (95, FaultClass.FATAL),
    (74, FaultClass.FATAL), (94, FaultClass.TRANSIENT), (63, FaultClass.TRANSIENT),
    (92, FaultClass.TRANSIENT), (8, FaultClass.TRANSIENT),
])
def test_xid_classes(xid: int, kind: FaultClass) -> None:
    assert Fault(0, xid=xid).fault_class is kind


def test_ecc_and_lost_are_fatal_with_their_reason() -> None:
    assert Fault(0, kind="ECCUncorrectable").fault_class is FaultClass.FATAL
    assert Fault(0, kind="ECCUncorrectable").mark_reason == "ECCUncorrectable"
    assert Fault(0, xid=79).mark_reason == "XID79"


def test_a_transient_mark_waits_again_after_each_error_and_a_fatal_one_never_lifts() -> None:
    first = marked({}, Fault(0, xid=94), "G0", T0)
    assert first is not None
    assert not first.fatal
    again = marked({"G0": first}, Fault(0, xid=94), "G0", T1)
    assert again is not None
    assert (again.since, again.last) == (T0, T1)
    assert expired({"G0": again}, T1, 600) == []
    assert expired({"G0": again}, T2, 600) == [again]
    worse = marked({"G0": again}, Fault(0, xid=79), "G0", T1)
    assert worse is not None
    assert worse.fatal
    assert worse.reason == "XID79"
    assert expired({"G0": worse}, T2, 1) == []
    assert marked({}, Fault(0, xid=13), "G0", T0) is None


def test_marks_lie_over_the_inventory() -> None:
    devices = [GpuDevice(0, "G0"), GpuDevice(1, "G1")]
    mark = marked({}, Fault(1, xid=79), "G1", T0)
    assert mark is not None
    seen = with_health(devices, {"G1": mark})
    assert [(d.health, d.health_reason, d.since) for d in seen] == [
        ("Healthy", "", ""), ("Unhealthy", "XID79", T0)]
    assert list(unhealthy(seen)) == ["G1"]
    assert "GPU 1 (G1) is Unhealthy: XID79" in unhealthy(seen)["G1"]


def test_the_fault_file_is_read_as_it_grows_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "faults"
    faults = SimulatedFaults(str(path))
    assert faults.read_new() == []  # no file yet
    path.write_text('{"gpu": 2, "xid": 79}\nnot json\n{"gpu": "GPU-x", "kind": "Lost"}\n{"gpu"')
    assert faults.read_new() == [Fault(2, xid=79), Fault("GPU-x", kind="Lost")]
    with path.open("a") as file:
        file.write(': 1, "xid": 13}\n')
    assert faults.read_new() == [Fault(1, xid=13)]
    assert faults.read_new() == []


def test_marks_survive_a_restart_and_readmit_lifts_them(tmp_path: Path) -> None:
    inventory = SimulatedGpuInventory("n1", 2)
    uuid = inventory.list_gpus()[1].uuid
    events: list[Reason] = []
    health = GpuHealth(inventory, tmp_path, 600, lambda: T0, "n1")
    health.start(None, lambda type_, reason, message: events.append(reason), lambda: None)
    health.report(Fault(1, xid=79))
    health.report(Fault(0, xid=13))
    health.stop()
    assert events == [Reason.GPU_UNHEALTHY, Reason.GPU_FAULT_IGNORED]

    again = GpuHealth(inventory, tmp_path, 600, lambda: T2, "n1")
    assert [d.health for d in again.list_gpus()] == ["Healthy", "Unhealthy"]
    assert again.readmit("1") == [f"GPU 1 ({uuid}) readmitted"]
    assert [d.health for d in GpuHealth(inventory, tmp_path, 600, lambda: T2,
                                        "n1").list_gpus()] == ["Healthy", "Healthy"]


def test_a_transient_mark_is_lifted_by_the_clock(tmp_path: Path) -> None:
    now = [T0]
    health = GpuHealth(SimulatedGpuInventory("n1", 1), tmp_path, 60, lambda: now[0])
    events: list[Reason] = []
    health.start(None, lambda type_, reason, message: events.append(reason), lambda: None)
    health.stop()
    health.report(Fault(0, xid=94))
    health.tick()
    assert health.marks()
    now[0] = T1
    health.tick()
    assert health.marks() == {}
    assert events == [Reason.GPU_UNHEALTHY, Reason.GPU_READMITTED]
