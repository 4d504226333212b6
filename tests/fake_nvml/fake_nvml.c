/*
 * A tiny stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on hosts with
 * no GPU. It implements just the NVML calls gpudock makes, so the real pynvml code
 * path runs unchanged. Compiled at test time with soname libnvidia-ml.so.1.
 *
 * GPUDOCK_FAKE_NVML_GPUS sets the number of GPUs (default 4); GPU i has the UUID
 * GPU-fa4e0000-0000-4000-8000-<i as 12 hex digits>.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct fake_device { unsigned int index; } *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
       NVML_ERROR_INSUFFICIENT_SIZE = 7 };
#define MAX_GPUS 64

static struct fake_device devices[MAX_GPUS];
static int initialized = 0;

static unsigned int gpu_count(void) {
    const char *text = getenv("GPUDOCK_FAKE_NVML_GPUS");
    long n = text ? strtol(text, NULL, 10) : 4;
    return n < 0 ? 0 : (n > MAX_GPUS ? MAX_GPUS : (unsigned int)n);
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; initialized = 1; return NVML_SUCCESS; }
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) { initialized = 0; return NVML_SUCCESS; }

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= gpu_count()) return NVML_ERROR_INVALID_ARGUMENT;
    devices[index].index = index;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!device || !uuid) return NVML_ERROR_INVALID_ARGUMENT;
    int n = snprintf(uuid, length, "GPU-fa4e0000-0000-4000-8000-%012x", device->index);
    return n < 0 || (unsigned int)n >= length ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!device || !name) return NVML_ERROR_INVALID_ARGUMENT;
    int n = snprintf(name, length, "Fake NVML GPU");
    return n < 0 || (unsigned int)n >= length ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!device || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = 24ULL << 30;
    memory->used = 0;
    memory->free = memory->total;
    return NVML_SUCCESS;
}
