"""The real pynvml code path, against a fake libnvidia-ml.so.1 compiled here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpudock.adapters.gpu_inventory import inventory_from_settings
from gpudock.adapters.nvml_gpus import NvmlGpuInventory, NvmlUnavailableError
from gpudock.settings import GpuBackend, Settings
from tests.stack.fake_nvml import build_fake_nvml

FAKE_UUID = "GPU-fa4e0000-0000-4000-8000-{:012x}"


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_nvml(tmp_path_factory.mktemp("nvml"))


def _in_subprocess(code: str, library: Path, gpus: int) -> str:
    """NVML state is process-wide, so each probe gets a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code, str(library)], capture_output=True, text=True,
        env={"GPUDOCK_FAKE_NVML_GPUS": str(gpus), "PATH": "/usr/bin:/bin"}, check=True,
    )
    return result.stdout


def test_pynvml_lists_the_fake_gpus(fake_nvml: Path) -> None:
    code = (
        "import ctypes, sys, pynvml\n"
        "ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)\n"
        "pynvml.nvmlInit()\n"
        "for i in range(pynvml.nvmlDeviceGetCount()):\n"
        "    print(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))\n"
        "pynvml.nvmlShutdown()\n"
    )
    assert _in_subprocess(code, fake_nvml, 3).split() == [FAKE_UUID.format(i) for i in range(3)]


def test_agent_nvml_adapter_reports_the_fake_gpus(fake_nvml: Path) -> None:
    code = (
        "import sys\n"
        "from gpudock.adapters.nvml_gpus import NvmlGpuInventory\n"
        "for gpu in NvmlGpuInventory(sys.argv[1]).list_gpus():\n"
        "    print(gpu.index, gpu.uuid, gpu.memory_bytes)\n"
    )
    lines = _in_subprocess(code, fake_nvml, 5).splitlines()
    assert lines == [f"{i} {FAKE_UUID.format(i)} {24 * 1024**3}" for i in range(5)]


def test_nvml_adapter_fails_clearly_without_a_library(tmp_path: Path) -> None:
    inventory = NvmlGpuInventory(str(tmp_path / "missing" / "libnvidia-ml.so.1"))
    with pytest.raises(NvmlUnavailableError, match="cannot load NVML library"):
        inventory.list_gpus()


def test_settings_pick_the_backend() -> None:
    simulated = inventory_from_settings(
        Settings(node_name="n1", gpu_backend=GpuBackend.SIMULATED, simulated_gpus=6))
    assert len(simulated.list_gpus()) == 6
    assert isinstance(inventory_from_settings(Settings(node_name="n1")), NvmlGpuInventory)
