"""The GPU inventory read from NVML through pynvml (the nvidia-ml-py distribution)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import pynvml

from gpudock.core.gpu_health import ECC_UNCORRECTABLE, LOST, UNHEALTHY, Fault
from gpudock.core.gpus import GpuDevice
from gpudock.errors import TransientError

_lock = threading.Lock()  # NVML init/shutdown are process-wide
log = logging.getLogger(__name__)
# The events the health loop waits for (docs/gpu-health.md).
WATCHED_EVENTS = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
EVENT_WAIT_MS = 1000  # then the loop looks at ``stop`` and calls ``tick``


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
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            device = GpuDevice(
                index=index, uuid=uuid, name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_bytes=int(memory.total), memory_used_bytes=int(memory.used))
        except pynvml.NVMLError as exc:  # listed, but it does not answer
            lost = isinstance(exc, pynvml.NVMLError_GpuIsLost)
            return GpuDevice(index=index, uuid=uuid, health=UNHEALTHY,
                             health_reason=LOST if lost else f"NVML: {exc}")
        problem = _ecc_problem(handle)
        utilization, processes = _usage(handle)
        device = dataclasses.replace(device, utilization=utilization, processes=processes)
        if problem:
            return dataclasses.replace(device, health=UNHEALTHY, health_reason=problem)
        return device

    def watch_events(self, report: Callable[[Fault], None], stop: threading.Event,
                     tick: Callable[[], None]) -> None:
        """NVML's event loop, until ``stop`` is set: each XID and double-bit ECC event
        of any GPU is reported as a Fault (by UUID); ``tick`` is called about every
        second. Raises NvmlUnavailableError when NVML cannot start; a GPU that cannot
        register its events is logged and skipped (the periodic check still sees it)."""
        with _lock:
            self._preload()
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise NvmlUnavailableError(f"NVML could not start: {exc}") from exc
        try:
            events = pynvml.nvmlEventSetCreate()
            uuids: dict[int, str] = {}
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                try:
                    pynvml.nvmlDeviceRegisterEvents(handle, WATCHED_EVENTS, events)
                except pynvml.NVMLError as exc:
                    log.warning("GPU %d (%s): its XID/ECC events cannot be watched: %s",
                                i, uuid, exc)
                    continue
                uuids[_address(handle)] = uuid
            self._wait_loop(events, uuids, report, stop, tick)
        except pynvml.NVMLError as exc:
            raise NvmlUnavailableError(f"NVML's event loop failed: {exc}") from exc
        finally:
            with _lock:
                pynvml.nvmlShutdown()

    @staticmethod
    def _wait_loop(events: object, uuids: dict[int, str], report: Callable[[Fault], None],
                   stop: threading.Event, tick: Callable[[], None]) -> None:
        try:
            while not stop.is_set():
                try:
                    data = pynvml.nvmlEventSetWait(events, EVENT_WAIT_MS)
                except pynvml.NVMLError_Timeout:
                    tick()
                    continue
                except pynvml.NVMLError_GpuIsLost:
                    # Which one is not said: the periodic check (list_gpus) finds it.
                    tick()
                    continue
                uuid = uuids.get(_address(data.device), "")
                if not uuid:
                    continue
                if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                    report(Fault(uuid, xid=int(data.eventData)))
                elif data.eventType & pynvml.nvmlEventTypeDoubleBitEccError:
                    report(Fault(uuid, kind=ECC_UNCORRECTABLE))
                tick()
        finally:
            pynvml.nvmlEventSetFree(events)


def _usage(handle: Any) -> tuple[int | None, int | None]:
    """Utilization and processes, where the GPU tells them (None where not)."""
    found: dict[str, int | None] = {"utilization": None, "processes": None}
    with contextlib.suppress(pynvml.NVMLError, pynvml.NVMLLibraryMismatchError):
        found["utilization"] = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    # Unversioned calls refuse a library of another version (NVMLLibraryMismatchError).
    with contextlib.suppress(pynvml.NVMLError, pynvml.NVMLLibraryMismatchError):
        found["processes"] = len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) + \
            len(pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
    return found["utilization"], found["processes"]


def _ecc_problem(handle: Any) -> str:
    """The periodic check's ECC part: uncorrected errors since the last reset, or
    retired pages waiting for a reset (ECCUncorrectable); "" where neither, or where
    the GPU cannot tell (no ECC, an older driver)."""
    try:
        if pynvml.nvmlDeviceGetTotalEccErrors(handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                              pynvml.NVML_VOLATILE_ECC) > 0:
            return ECC_UNCORRECTABLE
    except pynvml.NVMLError:
        pass
    try:
        if pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle) == \
                pynvml.NVML_FEATURE_ENABLED:
            return ECC_UNCORRECTABLE
    except pynvml.NVMLError:
        pass
    return ""


def _address(handle: Any) -> int:
    """A device handle's pointer value: the same device gives the same handle."""
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
