/* runtime_stub.c - the CUDA runtime helpers (cuda_rt.h) for builds without
 * nvcc: everything fails with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#include "kernels/cuda/cuda_rt.h"

#include <string.h>

#include "util/common.h"

static spqr_status no_cuda(void) { return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA"); }

spqr_status spqr_cuda_available(char *name, size_t n) {
    if (name && n) name[0] = 0;
    return no_cuda();
}
spqr_status spqr_cuda_malloc(void **dptr, size_t bytes) {
    (void)bytes;
    if (dptr) *dptr = NULL;
    return no_cuda();
}
void spqr_cuda_free(void *dptr) { (void)dptr; }
spqr_status spqr_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes) {
    (void)dst; (void)src; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes) {
    (void)dst; (void)src; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes) {
    (void)dst; (void)src; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_memset(void *dptr, int value, size_t bytes) {
    (void)dptr; (void)value; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_synchronize(void) { return no_cuda(); }
spqr_status spqr_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return no_cuda();
}
spqr_status spqr_cuda_dense_gemm(int dtype, const void *dW, const void *dX, void *dY, int rows,
                                 int cols, int n_tok) {
    (void)dtype; (void)dW; (void)dX; (void)dY; (void)rows; (void)cols; (void)n_tok;
    return no_cuda();
}
spqr_status spqr_cuda_f32_to_f16(const float *dsrc, uint16_t *ddst, size_t n) {
    (void)dsrc; (void)ddst; (void)n;
    return no_cuda();
}
