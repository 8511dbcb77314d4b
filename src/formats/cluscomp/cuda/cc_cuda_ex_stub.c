/* cc_cuda_ex_stub.c - cc_cuda_ex.h for builds without nvcc: everything
 * fails with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#include <string.h>

#include "formats/cluscomp/cuda/cc_cuda_ex.h"

spqr_status spqr_cc_cuda_gemm_ex(const void *dev, const float *dX, int T, float *dY,
                                 const spqr_cc_cuda_opts *opts) {
    (void)dev; (void)dX; (void)T; (void)dY; (void)opts;
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}
void spqr_cc_cuda_get_info(const void *dev, spqr_cc_cuda_info *info) {
    (void)dev;
    if (info) memset(info, 0, sizeof *info);
}
spqr_status spqr_cc_cuda_clone(const void *dev, void **out) {
    (void)dev;
    if (out) *out = NULL;
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}
spqr_status spqr_cc_cuda_plan_str(const void *dev, int T, const spqr_cc_cuda_opts *opts, char *buf,
                                  size_t n) {
    (void)dev; (void)T; (void)opts;
    if (buf && n) buf[0] = 0;
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}
