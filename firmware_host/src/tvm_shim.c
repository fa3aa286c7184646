/* The three symbols TVM's C kernels need from a runtime, and nothing else: no libtvm on the device. */
#include <stddef.h>
#include <stdint.h>
#include "lcs_model.h"
#include "tvm/ffi/c_api.h"
#include "tvm/runtime/c_backend_api.h"

#ifndef LCS_WORKSPACE_BYTES
#define LCS_WORKSPACE_BYTES 64
#endif
/* Workspace requests nest within one kernel and are freed in reverse order: a stack is enough. */
static uint8_t workspace[LCS_WORKSPACE_BYTES] __attribute__((aligned(16)));
static size_t workspace_top;
const char *lcs_last_error = "";

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code, int dtype_bits) {
    (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
    size_t size = (size_t)((nbytes + 15u) & ~(uint64_t)15u);
    if (workspace_top + size > sizeof workspace) { lcs_last_error = "workspace exhausted"; return NULL; }
    void *p = workspace + workspace_top;
    workspace_top += size;
    return p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
    (void)device_type; (void)device_id;
    if (ptr) workspace_top = (size_t)((uint8_t *)ptr - workspace);
    return 0;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
    (void)parts; (void)n;
    lcs_last_error = kind; /* kernels only raise on argument mismatches: a bug of the generated executor */
}
