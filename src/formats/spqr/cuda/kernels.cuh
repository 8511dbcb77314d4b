/* kernels.cuh - what the kernel files (gemv.cu, gemm.cu, ref.cu) and the
 * dispatch (spqr_cuda.cu) share: the main kernels' launch shape and
 * arguments, the split-K reduction both main kernels end with, and each
 * kernel file's host-side entry points (kernel selection and the launches of
 * its auxiliary kernels, all on the legacy default stream). */
#ifndef SPQR_CUDA_KERNELS_CUH
#define SPQR_CUDA_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "formats/spqr/cuda/device_layout.cuh"

#define WPB 4 /* warps (row tiles) per block of the main kernels */
constexpr int BLOCK_ROWS = WPB * TILE_ROWS; /* rows per block of the main kernels */

struct MainArgs {
    DevLayer L;
    const __half *xp;  /* batch T: [8*NT][cols_pad] permuted fp16 inputs      */
    const uint4 *xg;   /* batch 1: [nwin + 1][8][16 halves] B planes          */
    const float2 *ox;  /* batch 1: [nwin][4][NG] (1024 * sum b, sum sigma*b)  */
    const float *xf;   /* batch 1: [cols_pad] float32 permuted x (outliers)   */
    int T;             /* tokens of this pass                                  */
    int qper;          /* quads per split                                      */
    float *Y;          /* [T][rows]                                            */
    float *ws;         /* split-K partials [nsplit][T][rows_pad]               */
    unsigned *cnt;     /* split-K arrival counters [gridDim.x]                 */
};

typedef void (*main_fn)(MainArgs);
struct MainK {
    main_fn fn;
    int smem; /* dynamic shared memory per block */
};

/* ---- device: shared by both main kernels ---------------------------------- */

/* split-K: partial results are in ws; the last block of a row block sums
 * them in split order (deterministic) */
static __device__ void split_finish(const MainArgs &A, int row0) {
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned old = atomicAdd(&A.cnt[blockIdx.x], 1u);
        s_last = (old == gridDim.y - 1);
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const DevLayer &L = A.L;
    const int nrow = min(BLOCK_ROWS, L.rows - row0);
    const int ns = gridDim.y;
    for (int idx = threadIdx.x; idx < A.T * nrow; idx += blockDim.x) {
        const int t = idx / nrow, r = row0 + idx % nrow;
        float s = 0.f;
        for (int sp = 0; sp < ns; sp++) s += __ldcg(&A.ws[((size_t)sp * A.T + t) * L.rows_pad + r]);
        A.Y[(size_t)t * L.rows + r] = s;
    }
    if (threadIdx.x == 0) A.cnt[blockIdx.x] = 0;
}

/* ---- host: per kernel file -------------------------------------------------- */

/* gemv.cu, batch 1: the main kernel for L's code width and statistics mode */
MainK gemv_main_kernel(const DevLayer &L);
/* prep for the batch-1 kernel: X (one token, original column order) into
 * the B planes xg, the per-quarter sums ox and the permuted float32 inputs
 * xf (layouts in gemv.cu) */
void gemv_prep_launch(const DevLayer &L, const float *X, __half *xg, float2 *ox, float *xf);

/* gemm.cu, batch T: the main kernel with nt (1, 2, 4, 8) n-tiles of 8 tokens */
MainK gemm_main_kernel(const DevLayer &L, int nt);
/* prep for the batch-T kernel: T tokens of X into fp16 permuted xp
 * [8 nt][cols_pad] and its transpose xpT, zero-padded */
void gemm_prep_launch(const DevLayer &L, const float *X, int T, int nt, __half *xp, __half *xpT);
/* Y[t][r] += the outliers' products, from the row-ordered copy */
void gemm_outliers_launch(const DevLayer &L, int nt, const __half *xpT, int T, float *Y);

/* ref.cu: the CUDA-core reference kernel over T <= 65535 tokens */
void ref_launch(const DevLayer &L, const float *X, int T, float *Y);

#endif /* SPQR_CUDA_KERNELS_CUH */
