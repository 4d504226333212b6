"""The GPU inventory read from NVML through pynvml (the nvidia-ml-py distribution)."""

from __future__ import annotations

import ctypes
import threading

import pynvml

from gpudock.core.gpus import GpuDevice
from gpudock.errors import TransientError

_lock = threading.Lock()  # NVML init/shutdown are process-wide


class NvmlUnavailableError(TransientError):
    """NVML could not be loaded or answered with an error."""


class NvmlGpuInventory:
    """Lists GPUs with NVML. ``library_path`` loads that libnvidia-ml.so.1 first.

    pynvml opens ``libnvidia-ml.so.1`` by soname; a library with that soname already
    loaded with RTLD_GLOBAL is the one it gets, which lets an unusual install (or the
    tests' fake library) stand in for the driver's.
    """

    def __init__(self, library_path: str | None = None) -> None:
        self._library_path = library_path
        self._preloaded: ctypes.CDLL | None = None

    def list_gpus(self) -> list[GpuDevice]:
        with _lock:
            self._preload()
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise NvmlUnavailableError(f"NVML could not start: {exc}") from exc
            try:
                return [self._device(i) for i in range(pynvml.nvmlDeviceGetCount())]
            except pynvml.NVMLError as exc:
                raise NvmlUnavailableError(f"NVML failed to list GPUs: {exc}") from exc
            finally:
                pynvml.nvmlShutdown()

    def _preload(self) -> None:
        if self._library_path and self._preloaded is None:
            try:
                self._preloaded = ctypes.CDLL(self._library_path, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise NvmlUnavailableError(
                    f"cannot load NVML library {self._library_path}: {exc}"
                ) from exc

    @staticmethod
    def _device(index: int) -> GpuDevice:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        try:
            return GpuDevice(
                index=index, uuid=uuid, name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total))
        except pynvml.NVMLError as exc:  # listed, but it does not answer
            lost = isinstance(exc, pynvml.NVMLError_GpuIsLost)
            return GpuDevice(index=index, uuid=uuid,
                             health="Lost" if lost else "Unhealthy")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
