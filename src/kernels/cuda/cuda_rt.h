/* cuda_rt.h - the CUDA runtime helpers every GPU part of libspqr shares
 * (device discovery, memory, copies, the cuBLAS dense product), as plain C
 * functions returning spqr_status. Builds without nvcc link runtime_stub.c:
 * everything fails with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#ifndef SPQR_CUDA_RT_H
#define SPQR_CUDA_RT_H

#include <stddef.h>
#include <stdint.h>

#include "spqr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* SPQR_OK if a CUDA device is usable; name (may be NULL) receives its name
 * and memory, e.g. "NVIDIA H100 80GB HBM3 (79.1 GiB, sm_90, 132 SMs)". */
spqr_status spqr_cuda_available(char *name, size_t n);

spqr_status spqr_cuda_malloc(void **dptr, size_t bytes);
void spqr_cuda_free(void *dptr); /* accepts NULL */
spqr_status spqr_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes);
spqr_status spqr_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes);
spqr_status spqr_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes);
spqr_status spqr_cuda_memset(void *dptr, int value, size_t bytes);
spqr_status spqr_cuda_synchronize(void); /* also reports asynchronous errors */
/* Free and total device memory. The environment variable SPQR_GPU_MEMORY_MIB,
 * when set to a number, caps the free figure that uploads check against: it
 * lets tests (and users) try the too-little-memory paths on a large GPU, or
 * keep room for other work. */
spqr_status spqr_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);

/* Dense baseline through cuBLAS: Y[t][r] = sum_c W[r][c] X[t][c] with
 * W [rows][cols], X [n_tok][cols], Y [n_tok][rows] all float32
 * (dtype SPQR_CUDA_F32, SGEMM) or all fp16 (SPQR_CUDA_F16, GemmEx with fp32
 * accumulation). */
enum { SPQR_CUDA_F32 = 0, SPQR_CUDA_F16 = 1 };
spqr_status spqr_cuda_dense_gemm(int dtype, const void *dW, const void *dX,
                                 void *dY, int rows, int cols, int n_tok);
/* Convert n float32 values to fp16 (round to nearest) on the device. */
spqr_status spqr_cuda_f32_to_f16(const float *dsrc, uint16_t *ddst, size_t n);
#ifdef __cplusplus
}
#endif
#endif /* SPQR_CUDA_RT_H */
