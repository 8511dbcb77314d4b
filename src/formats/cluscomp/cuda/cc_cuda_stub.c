/* cc_cuda_stub.c - the ClusComp CUDA API for builds without nvcc: everything
 * fails with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#include "formats/cluscomp/cuda/cc_cuda.h"

size_t spqr_cc_cuda_estimate(const void *payload) {
    (void)payload;
    return 0;
}
spqr_status spqr_cc_cuda_upload(const void *payload, void **dev, size_t *dev_bytes) {
    (void)payload;
    if (dev) *dev = NULL;
    if (dev_bytes) *dev_bytes = 0;
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}
spqr_status spqr_cc_cuda_gemm(const void *dev, const float *dX, int T, float *dY) {
    (void)dev; (void)dX; (void)T; (void)dY;
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}
void spqr_cc_cuda_free(void *dev) { (void)dev; }
