/*
 * A tiny stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on hosts with
 * no GPU. It implements just the NVML calls gpudock makes, so the real pynvml code
 * path runs unchanged. Compiled at test time with soname libnvidia-ml.so.1.
 *
 * GPUDOCK_FAKE_NVML_GPUS sets the number of GPUs (default 4); GPU i has the UUID
 * GPU-fa4e0000-0000-4000-8000-<i as 12 hex digits>.
 *
 * Events: GPUDOCK_FAKE_NVML_EVENTS names a file of lines "<gpu index> <xid>", read as
 * it grows; each line is one XID event (nvmlEventTypeXidCriticalError) of that GPU,
 * handed out by nvmlEventSetWait_v2 to an event set the GPU registered with; an xid of
 * 0 is a double-bit ECC event instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef struct fake_device { unsigned int index; } *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
       NVML_ERROR_INSUFFICIENT_SIZE = 7, NVML_ERROR_TIMEOUT = 10 };
#define MAX_GPUS 64

static struct fake_device devices[MAX_GPUS];
static int initialized = 0;  /* a count: NVML's init and shutdown nest */

static unsigned int gpu_count(void) {
    const char *text = getenv("GPUDOCK_FAKE_NVML_GPUS");
    long n = text ? strtol(text, NULL, 10) : 4;
    return n < 0 ? 0 : (n > MAX_GPUS ? MAX_GPUS : (unsigned int)n);
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; initialized++; return NVML_SUCCESS; }
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_TIMEOUT: return "Timeout";
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

/* ------------------------------------------------------------------ events */
typedef struct fake_event_set { unsigned long long registered[MAX_GPUS]; long offset; } *nvmlEventSet_t;
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;
#define XID_EVENT 0x8ULL
#define DBE_EVENT 0x2ULL

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    *set = calloc(1, sizeof(struct fake_event_set));
    /* Events written before the set was made are not its own. */
    const char *path = getenv("GPUDOCK_FAKE_NVML_EVENTS");
    FILE *file = path ? fopen(path, "r") : NULL;
    if (file) { fseek(file, 0, SEEK_END); (*set)->offset = ftell(file); fclose(file); }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) { free(set); return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!device || !set) return NVML_ERROR_INVALID_ARGUMENT;
    set->registered[device->index] |= types;
    return NVML_SUCCESS;
}

/* The next complete line after the set's offset: 1 when one was read. */
static int next_line(nvmlEventSet_t set, unsigned int *gpu, unsigned long long *xid) {
    const char *path = getenv("GPUDOCK_FAKE_NVML_EVENTS");
    FILE *file = path ? fopen(path, "r") : NULL;
    char line[128];
    int found = 0;
    if (!file) return 0;
    if (fseek(file, set->offset, SEEK_SET) == 0 && fgets(line, sizeof line, file) &&
            strchr(line, '\n')) {
        set->offset = ftell(file);
        found = sscanf(line, "%u %llu", gpu, xid) == 2 ? 1 : -1;
    }
    fclose(file);
    return found;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeoutms) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec step = {0, 50 * 1000 * 1000};
    for (unsigned int waited = 0;; waited += 50) {
        unsigned int gpu;
        unsigned long long xid;
        int read = next_line(set, &gpu, &xid);
        if (read == 1 && gpu < gpu_count()) {
            unsigned long long type = xid ? XID_EVENT : DBE_EVENT;
            if (set->registered[gpu] & type) {
                devices[gpu].index = gpu;
                memset(data, 0, sizeof *data);
                data->device = &devices[gpu];
                data->eventType = type;
                data->eventData = xid;
                return NVML_SUCCESS;
            }
        }
        if (read != 0) continue;  /* a line not for this set, or not readable */
        if (waited >= timeoutms) return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL);
    }
}
