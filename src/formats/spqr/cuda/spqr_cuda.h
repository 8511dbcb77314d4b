/* spqr_cuda.h - CUDA kernels for SpQR-compressed linear layers (plain C API).
 *
 * Usable from C whether or not the library was built with CUDA: builds
 * without nvcc link spqr_cuda_stub.c, whose functions all fail with
 * SPQR_ERR_NO_DEVICE ("built without CUDA"). All pointers named d* are device
 * pointers. Work is queued on the legacy default stream; the functions that
 * return results to the host synchronize. Device 0 (the current device) is
 * used. The qgemm scratch buffers are shared per process and guarded by a
 * mutex, so concurrent calls from several host threads are serialized.
 *
 * The GPU layout that spqr_cuda_qlinear_upload builds from an spqr_qlayer
 * (tiles of 16 rows, quads of 256 permuted columns, lane-owned column
 * quarters, the fast and the generic layout) is specified in gpu_layout.h,
 * beside the one definition of where each weight's code, statistics and
 * outliers live.
 *
 * ---------------------------------------------------------------------------
 * Files (src/formats/spqr/cuda/; design history and measurements in NOTES.md)
 * ---------------------------------------------------------------------------
 *  spqr_cuda.h        this public C API
 *  gpu_layout.h       the layout: geometry, index helpers and the decode of
 *                     one weight, host+device (SPQR_HD), plain C11
 *  gpu_layout.c       host-side packing of an spqr_qlayer into the layout
 *                     (plain C, in every build; tests/test_gpu_layout.c
 *                     round-trips it on the CPU)
 *  device_layout.cuh  the device view of a layer (DevLayer: geometry +
 *                     section pointers), statistic configurations, constants
 *  ptx.cuh            inline-PTX wrappers (LOP3, PRMT, f16x2, mma, PDL)
 *  fragment.cuh       decoding a lane's codes and statistics into mma operands
 *  pipeline.cuh       the cp.async copy pipeline (stages, per-lane sources)
 *  kernels.cuh        launch shape and arguments shared by the kernel files
 *                     and the dispatch, split-K reduction, per-file entry points
 *  gemv.cu            batch-1 kernel (k_gemv) and its input prep (k_prep1)
 *  gemm.cu            batch-T kernel (k_gemm), its prep (k_prep) and the
 *                     outlier kernel (k_outliers)
 *  ref.cu             CUDA-core reference kernel (k_ref), either layout
 *  spqr_cuda.cu       upload / clone / free / info and the qgemm dispatch
 *                     (kernel choice, split-K, scratch, launches)
 *  (src/kernels/cuda/runtime.cu, cuda_rt.h: device discovery, errors,
 *   memory and copy helpers, cuBLAS, shared by every GPU part)
 *  spqr_cuda_stub.c   this API for builds without CUDA
 *
 * ---------------------------------------------------------------------------
 * Kernels
 * ---------------------------------------------------------------------------
 * Both tensor-core kernels give each warp one 16-row tile and a range of
 * quads (split-K, reduced deterministically: the last block of a row block
 * sums the partials in split order), and stream the tile's data through a
 * cp.async pipeline in shared memory (2 stages; each lane copies exactly
 * the bytes it later reads). A prep kernel permutes the inputs first; the
 * main kernel is launched with programmatic dependent launch on sm_90, so its
 * first copies overlap the prep. Inputs must be finite with |x| < 65504.
 *  - batch 1 (k_gemv, also GEMV for any n_tok, one token per pass): the B
 *    column n = 2t + plane holds quarter t's inputs (plane 0: fp16(x/sigma),
 *    plane 1: the fp16 remainder), zero elsewhere, so C[row][2t + plane] is
 *    the raw dot product of the lane's own quarter; A holds the raw fields
 *    1024 + sigma*c (one LOP3 per two codes); per (row, group)
 *    y += s * (dot - 1024 * sum(b) - z * sum(sigma * b)) in float32 with the
 *    statistics decoded exactly in float32. Outliers are summed per lane in
 *    private shared-memory accumulators from the staged (tile, quad)
 *    buckets. About 1e-4 relative to the exact result (the fp32 sums carry
 *    the 1024 offset).
 *  - batch T (k_gemm, GEMM, 8/16/32/64 tokens per pass): statistics decoded
 *    per (lane, row, group) into half2 (s, s) and (-s*z, -s*z), codes turned
 *    into exact fp16 integers and dequantized with one HFMA2 per two weights
 *    (w = c*s - s*z, rounded to fp16), mma against fp16 inputs with fp32
 *    accumulation: the numerics of a cuBLAS fp16 GEMM (about 1e-3 relative).
 *    The outliers are added afterwards by a small kernel over a row-ordered
 *    copy (8 lanes per row, register sums, no atomics).
 * The reference kernel (one thread per row and token, float32 weights
 * exactly as qlayer.h defines them, double accumulation) reads either
 * layout.
 */
#ifndef SPQR_CUDA_H
#define SPQR_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "spqr.h"
#include "kernels/cuda/cuda_rt.h" /* device, memory, cuBLAS */

#ifdef __cplusplus
extern "C" {
#endif

struct spqr_qlayer; /* formats/spqr/qlayer.h */

typedef struct spqr_cuda_qlinear spqr_cuda_qlinear;

/* Repack q into the GPU layout above and upload it. Fails with
 * SPQR_ERR_INVALID_ARG for inconsistent layers and SPQR_ERR_NO_DEVICE when
 * no device is present or the layer does not fit into free GPU memory. */
spqr_status spqr_cuda_qlinear_upload(const struct spqr_qlayer *q,
                                     spqr_cuda_qlinear **out);
/* A device-side copy of W (same contents, new buffers). */
spqr_status spqr_cuda_qlinear_clone(const spqr_cuda_qlinear *w,
                                    spqr_cuda_qlinear **out);
void spqr_cuda_qlinear_free(spqr_cuda_qlinear *w); /* accepts NULL */

typedef struct spqr_cuda_qlinear_info {
    int rows, cols, wbits, beta1, beta2;
    size_t bytes_codes, bytes_stats, bytes_stats2, bytes_outliers, bytes_perm;
    size_t bytes_total;       /* device bytes of the layer (what a gemv reads) */
    int64_t n_outliers;
    int fast;                 /* 1: tensor-core kernels apply (beta1 = 8 or 16k) */
    int exact_stats;          /* 1: the device holds the statistics exactly;
                                 0: rounded to fp16 (bilevel minmax / uniform
                                 layers with sbits or zbits > 4, or beta2 not
                                 a multiple of 16; kmeans layers are exact) */
} spqr_cuda_qlinear_info;
void spqr_cuda_qlinear_get_info(const spqr_cuda_qlinear *w,
                                spqr_cuda_qlinear_info *info);

/* Y[t][r] = sum_c Wdeq[r][c] * X[t][c] for t < n_tok (n_tok >= 0, any size).
 * dX: [n_tok][cols] float32 in ORIGINAL column order; dY: [n_tok][rows]
 * float32. Device pointers; asynchronous on the default stream. */
spqr_status spqr_cuda_qgemm(const spqr_cuda_qlinear *W, const float *dX,
                            int n_tok, float *dY);

enum {
    SPQR_CUDA_KERNEL_AUTO = 0,
    SPQR_CUDA_KERNEL_GEMV = 1, /* main kernel, one n-tile (<= 8 tokens/pass) */
    SPQR_CUDA_KERNEL_GEMM = 2, /* main kernel, up to 64 tokens per pass      */
    SPQR_CUDA_KERNEL_REF = 3   /* simple CUDA-core kernel (any beta1), slow  */
};
typedef struct spqr_cuda_qgemm_opts {
    int kernel;      /* SPQR_CUDA_KERNEL_*                                  */
    int nsplit;      /* split-K factor; 0 = automatic                      */
    int max_tokens;  /* GEMM: tokens per pass (8, 16, 32 or 64); 0 = 64      */
    int no_pdl;      /* 1: launch the main kernel without programmatic
                        dependent launch                                   */
} spqr_cuda_qgemm_opts;
/* As spqr_cuda_qgemm with explicit choices (tests, benchmarks). GEMV/GEMM
 * need the fast layout (else SPQR_ERR_UNSUPPORTED). */
spqr_status spqr_cuda_qgemm_ex(const spqr_cuda_qlinear *W, const float *dX,
                               int n_tok, float *dY,
                               const spqr_cuda_qgemm_opts *opts);
/* The split-K factor AUTO picks for this layer and batch (diagnostics). */
int spqr_cuda_qgemm_auto_split(const spqr_cuda_qlinear *W, int n_tok);

#ifdef __cplusplus
}
#endif
#endif /* SPQR_CUDA_H */
