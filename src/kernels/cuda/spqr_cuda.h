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
 * ---------------------------------------------------------------------------
 * GPU layout (what spqr_cuda_qlinear_upload builds from an spqr_qlayer)
 * ---------------------------------------------------------------------------
 * Notation: rows_pad = rows rounded up to 16 ("tiles" of 16 rows),
 * cols_pad = cols rounded up to 256 ("chunks" of 16 k-tiles of 16 permuted
 * columns), ngroups_pad = ceil(cols_pad / beta1) rounded up to 32 ("stat
 * blocks" of 32 groups). Padding codes/stats are 0. Everything stays in the
 * permuted column order of qlayer.h; the permutation is applied to X.
 *
 * Lanes. The codes of one tile x k-tile (16 rows x 16 columns) are split over
 * the 32 lanes of a warp exactly as the A operand of the tensor-core
 * instruction mma.m16n8k16 wants them: lane L = 4*g + t (g = L/4, t = L%4)
 * holds 4 pairs ("registers" ri = 0..3, element e = 0..1):
 *     ri=0: (row g,   col 2t+e)      ri=1: (row g+8, col 2t+e)
 *     ri=2: (row g,   col 2t+8+e)    ri=3: (row g+8, col 2t+8+e)
 *
 * Codes. Container width B = wbits for wbits in {2,3,4}, B = 8 for 5..8
 * (one code per byte). For each (tile, chunk) lane L owns B 16-byte words,
 * stored at uint4 index ((tile*nchunks + chunk)*B + u)*32 + L (u = 0..B-1),
 * so one warp load of a u is 512 contiguous bytes. Inside the lane's 4*B
 * 32-bit words (word w = component w%4 of u = w/4) the code of (k-tile kc of
 * the chunk, ri, e) sits at:
 *   B=4: word kc,            bits 4*ri + 16*e
 *   B=2: word kc/2,          bits 2*s + 16*e,  s = 4*(kc%2) + ri
 *   B=3: k-tiles 4q..4q+3 share words 3q..3q+2; P = 4*(kc%4) + ri:
 *        P < 15: word 3q + P/5, bits 3*(P%5) + 16*e;
 *        P = 15: bit b (b=0..2) of the code is bit 15+16*e of word 3q+b
 *   B=8: word 2*kc + ri/2,   byte 2*(ri%2) + e
 * i.e. every 32-bit word holds pairs of codes 16 bits apart, which the kernel
 * turns into half2 values (1024 + c) with one LOP3 (the exponent of 1024 is
 * OR-ed in) and makes exact small integers with one HSUB2/HFMA2.
 *
 * First-level statistics. The (row, group) pairs of a tile are dealt to lanes
 * like the C operand of the mma: within stat block sb (groups 32*sb ..
 * 32*sb+31), lane L = 4*g + t holds 16 pairs j = 2*w + h (w = 0..7, h = 0..1)
 * for row 16*tile + g + 8*h and group 32*sb + 4*w + t. A pair is
 * pb = sbits + zbits bits (bilevel: scale code in the low sbits bits, zero
 * code above it) or pb = 32 bits (beta2 == 0: fp16 scale in the low half,
 * fp16 zero in the high half). The 16 pairs are one little-endian bit stream
 * of 16*pb bits (pair j at bit j*pb) held in wpl = ceil(16*pb/32) 32-bit
 * words, word i stored at u32 index ((tile*nsb + sb)*wpl + i)*32 + L.
 * For sbits = zbits = 3 that is 6 bits per (row, group): no padding.
 *
 * Second-level statistics (beta2 > 0): uint2 per (row block rb, group G) at
 * index rb*ngroups_pad + G: .x = s2_scale | s2_zero << 16,
 * .y = z2_scale | z2_zero << 16 (fp16 bits, as in qlayer.h).
 *
 * Outliers: bucketed per (tile, chunk). ol_off[ntiles*nchunks + 1] (u32) are
 * prefix offsets: the bucket of (tile, chunk) is entries ol_off[i] ..
 * ol_off[i+1]-1 with i = tile*nchunks + chunk. An entry is one u32:
 *   bits 0..7 permuted column within the chunk, bits 8..11 row within the
 *   tile, bits 16..31 the fp16 value;
 * inside a bucket entries are sorted by row, then column. (32 bits per
 * outlier plus 32 bits per 16x256 block.) Kernels add them from the X chunk
 * they already hold in shared memory.
 *
 * Permutation: perm[cols] (int32), as in qlayer.h.
 *
 * Storage per weight for wbits=3/4, beta1=beta2=16, sbits=zbits=3, 1%
 * outliers: wbits + 6/16 + 64/256 + 0.32 bits (+ padding of rows/cols).
 *
 * ---------------------------------------------------------------------------
 * Kernels
 * ---------------------------------------------------------------------------
 * A small "prep" kernel gathers X into permuted order and lays it out as mma
 * B fragments (fp16); the main kernel is launched with programmatic
 * dependent launch on sm_90 so that its weight loads overlap the prep. The
 * main kernels stream chunks of 256 columns through a 2-3 stage cp.async
 * pipeline in shared memory (codes, packed statistics, second-level
 * statistics, outlier bucket, X chunk), decode the statistics of each
 * window of 4 groups once per (row, group), decode codes to exact fp16
 * integers (LOP3 + HSUB2/HFMA2) and use mma.m16n8k16 (fp16 in, fp32 acc).
 *  - GEMV (one token, used for n_tok == 1): x is split into two fp16 terms
 *    x = hi + lo (hi = fp16(x), lo = fp16(x - hi), ~22 significant bits);
 *    the mma columns are (4 groups of a window) x {hi, lo}, so every lane's
 *    accumulators are useful; per (row, group) it applies
 *        y += scale * (sum_c code_c * x_c - zero * sum_c x_c)
 *    in fp32. Accuracy ~1e-6 relative to fp32 (tests: 2e-5).
 *  - GEMM (tokens in the mma columns, 8/16/32 per pass, used for n_tok > 1):
 *    w = fp16(scale) * code + fp16(-scale*zero) is formed in registers (one
 *    HFMA2 per two weights) and multiplied with fp16 X: fp16 weights and
 *    activations with fp32 accumulation, like a cuBLAS fp16 GEMM
 *    (~1e-3 relative). Use SPQR_CUDA_KERNEL_GEMV to get GEMV accuracy for
 *    any batch (one pass per token).
 * Outliers are added per (tile, chunk) from the staged X chunk. Split-K over
 * column ranges is reduced deterministically (the last block to finish a row
 * block sums the partial results in split order; batch-1 outlier sums use
 * shared-memory atomics, whose order inside one instruction is up to the
 * hardware). beta1 % 8 != 0 falls back
 * to a simple CUDA-core reference kernel that reads the same layout.
 * Inputs must be finite with |x| < 65504 (fp16 range of the hi term).
 */
#ifndef SPQR_CUDA_H
#define SPQR_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "spqr.h"

#ifdef __cplusplus
extern "C" {
#endif

struct spqr_qlayer; /* quant/qlayer.h */

typedef struct spqr_cuda_qlinear spqr_cuda_qlinear;

/* SPQR_OK if a CUDA device is usable; name (may be NULL) receives its name
 * and memory, e.g. "NVIDIA H100 80GB HBM3 (79.1 GiB, sm_90, 132 SMs)". */
spqr_status spqr_cuda_available(char *name, size_t n);

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
    SPQR_CUDA_KERNEL_GEMV = 1, /* batch-1 kernel (one token per pass)        */
    SPQR_CUDA_KERNEL_GEMM = 2, /* token-tile kernel (up to 32 per pass)      */
    SPQR_CUDA_KERNEL_REF = 3   /* simple CUDA-core kernel (any beta1), slow  */
};
typedef struct spqr_cuda_qgemm_opts {
    int kernel;      /* SPQR_CUDA_KERNEL_*                                  */
    int nsplit;      /* split-K factor; 0 = automatic                      */
    int max_tokens;  /* GEMM: tokens per pass (8, 16 or 32); 0 = automatic  */
    int no_pdl;      /* 1: launch the main kernel without programmatic
                        dependent launch                                   */
} spqr_cuda_qgemm_opts;
/* As spqr_cuda_qgemm with explicit choices (tests, benchmarks). GEMV/GEMM
 * need beta1 % 8 == 0 (else SPQR_ERR_UNSUPPORTED). */
spqr_status spqr_cuda_qgemm_ex(const spqr_cuda_qlinear *W, const float *dX,
                               int n_tok, float *dY,
                               const spqr_cuda_qgemm_opts *opts);
/* The split-K factor AUTO picks for this layer and batch (diagnostics). */
int spqr_cuda_qgemm_auto_split(const spqr_cuda_qlinear *W, int n_tok);

/* ---- runtime helpers (thin wrappers returning spqr_status) -------------- */
spqr_status spqr_cuda_malloc(void **dptr, size_t bytes);
void spqr_cuda_free(void *dptr); /* accepts NULL */
spqr_status spqr_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes);
spqr_status spqr_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes);
spqr_status spqr_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes);
spqr_status spqr_cuda_memset(void *dptr, int value, size_t bytes);
spqr_status spqr_cuda_synchronize(void); /* also reports asynchronous errors */
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
/* Fill n float32 values with a deterministic pseudo-random normal(0,1)
 * sequence (seeded) on the device. */
spqr_status spqr_cuda_fill_normal(float *dptr, size_t n, uint64_t seed);

/* Event timer on the default stream. */
typedef struct spqr_cuda_timer spqr_cuda_timer;
spqr_status spqr_cuda_timer_new(spqr_cuda_timer **t);
void spqr_cuda_timer_free(spqr_cuda_timer *t);
spqr_status spqr_cuda_timer_start(spqr_cuda_timer *t);
/* Records the stop event, waits for it, returns elapsed milliseconds. */
spqr_status spqr_cuda_timer_stop(spqr_cuda_timer *t, float *ms);

/* Device copy bandwidth in GB/s (bytes read + bytes written per second), the
 * median of reps copies of `bytes` with cudaMemcpy device-to-device and with
 * a 16-byte-per-thread copy kernel. */
spqr_status spqr_cuda_copy_bandwidth(size_t bytes, int reps,
                                     double *memcpy_gbs, double *kernel_gbs);

#ifdef __cplusplus
}
#endif
#endif /* SPQR_CUDA_H */
