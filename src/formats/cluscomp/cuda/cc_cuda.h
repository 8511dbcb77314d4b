/* cc_cuda.h - CUDA kernels for ClusComp codebook layers (plain C API, the
 * format table's CUDA entries). Builds without nvcc link cc_cuda_stub.c,
 * whose functions fail with SPQR_ERR_NO_DEVICE ("built without CUDA").
 * Pointers named d* are device pointers; work runs on the legacy default
 * stream on the current device. */
#ifndef SPQR_CC_CUDA_H
#define SPQR_CC_CUDA_H

#include <stddef.h>

#include "../../../util/common.h"

/* Upper bound of the device bytes spqr_cc_cuda_upload allocates. */
size_t spqr_cc_cuda_estimate(const void *payload);
/* Upload an spqr_cc_layer (cluscomp.h); *dev is an opaque device handle. */
spqr_status spqr_cc_cuda_upload(const void *payload, void **dev, size_t *dev_bytes);
/* dY[T][rows] = dX[T][cols] W^T (float32, device pointers). */
spqr_status spqr_cc_cuda_gemm(const void *dev, const float *dX, int T, float *dY);
void spqr_cc_cuda_free(void *dev); /* accepts NULL */

#endif
