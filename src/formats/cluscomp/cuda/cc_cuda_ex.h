/* cc_cuda_ex.h - explicit choices and diagnostics for the ClusComp CUDA
 * kernels (tests, benchmarks); the format table uses cc_cuda.h only.
 * Builds without nvcc link cc_cuda_ex_stub.c (SPQR_ERR_NO_DEVICE). */
#ifndef SPQR_CC_CUDA_EX_H
#define SPQR_CC_CUDA_EX_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "cc_cuda.h" /* has no C++ guard of its own */

/* AUTO runs batches of at least this many tokens through DEQ */
#define SPQR_CC_CUDA_DEQ_MIN_T 17

enum {
    SPQR_CC_KERNEL_AUTO = 0,   /* LOOKUP below SPQR_CC_CUDA_DEQ_MIN_T, else DEQ */
    SPQR_CC_KERNEL_LOOKUP = 1, /* codebook-lookup kernel, any T (passes)   */
    SPQR_CC_KERNEL_DEQ = 2,    /* dequantize rows to fp16 + cuBLAS GemmEx  */
    SPQR_CC_KERNEL_REF = 3     /* one thread per output, double sums       */
};

typedef struct spqr_cc_cuda_opts {
    int kernel;    /* SPQR_CC_KERNEL_*                                     */
    int cb_global; /* 1: lookup kernel reads the codebook from global
                      memory (no shared-memory copy, no pieces)           */
    int nwarps;    /* lookup kernel: warps per block (4, 8, 16 or 32; 32
                      only for tt * dv <= 16); 0 = automatic              */
    int ks;        /* warps per row block inside a block (a power of two
                      <= nwarps); 0 = automatic                           */
    int kg;        /* column slices across blocks; 0 = automatic (the
                      fewest that let the slice's inputs fit)             */
    int max_tt;    /* tokens per pass cap (1, 2, 4 or 8); 0 = automatic   */
    int piece;     /* > 0: codebook pieces of this many entries (rounded
                      down to a multiple of 8) in shared memory, even when
                      the whole codebook fits; -1: never pieces; 0: auto  */
    int no_pdl;    /* 1: launch without programmatic dependent launch     */
} spqr_cc_cuda_opts;

/* As spqr_cc_cuda_gemm with explicit choices (NULL opts = automatic). */
spqr_status spqr_cc_cuda_gemm_ex(const void *dev, const float *dX, int T, float *dY,
                                 const spqr_cc_cuda_opts *opts);

typedef struct spqr_cc_cuda_info {
    int rows, cols, d, n, ibits, nb, nchunks;
    size_t bytes_cb;    /* fp16 codebook on the device (padded to 16 B)   */
    size_t bytes_idx;   /* index stream on the device (rows of 128-field
                           chunks, see cc_kernels.cuh)                    */
    size_t bytes_total; /* what spqr_cc_cuda_upload reported              */
    int mode;           /* batch-1 lookup kernel: 0 codebook in shared
                           memory, 1 read from global memory, 2 pieces    */
    int pieces;         /* batch 1: codebook pieces (mode 2), else 1       */
} spqr_cc_cuda_info;
void spqr_cc_cuda_get_info(const void *dev, spqr_cc_cuda_info *info);

/* A device-side copy (new buffers, same contents). */
spqr_status spqr_cc_cuda_clone(const void *dev, void **out);

/* The launch plan of the lookup kernel's first pass for T tokens, as text
 * ("mode=smem tt=1 nw=32 ks=8 kg=1 pieces=1 grid=128x1 smem=... occ=1"). */
spqr_status spqr_cc_cuda_plan_str(const void *dev, int T, const spqr_cc_cuda_opts *opts, char *buf,
                                  size_t n);

#ifdef __cplusplus
}
#endif
#endif
