/* ccgemm.h - CPU kernels of the ClusComp codebook format: Y = X W^T with W
 * defined by cluscomp.h, never materializing W, at every batch size (the
 * alternative through dequantized row tiles and OpenBLAS sgemm is slower on
 * the machines measured, see ccgemm.c, and kept for comparison).
 *
 * X is [T][cols], Y is [T][rows] (row-major, no aliasing). Returns
 * SPQR_ERR_INVALID_ARG (NULL pointers, T < 0) or SPQR_ERR_NOMEM (scratch).
 * T == 0 does nothing. Thread-safe (scratch is per thread); uses
 * spqr_num_threads() OpenMP threads. The variant (ref / AVX2 / AVX-512) is
 * the one kernels/cpu/cpu.h selects; every variant accumulates in float32
 * in its own order, so results differ from the reference by rounding only. */
#ifndef SPQR_FORMATS_CLUSCOMP_CCGEMM_H
#define SPQR_FORMATS_CLUSCOMP_CCGEMM_H

#include "../cluscomp.h"

spqr_status spqr_cc_gemm(const spqr_cc_layer *L, const float *X, int T, float *Y);

/* The scalar reference (same contract), independent of the selected
 * variant: the definition's weights, double accumulation. */
spqr_status spqr_cc_gemm_ref(const spqr_cc_layer *L, const float *X, int T, float *Y);

/* The fused kernels (what spqr_cc_gemm runs) and the sgemm alternative
 * (rows dequantized in tiles of ~2 MiB, then cblas_sgemm), for tests and
 * benchmarks. */
spqr_status spqr_cc_gemm_fused(const spqr_cc_layer *L, const float *X, int T, float *Y);
spqr_status spqr_cc_gemm_sgemm(const spqr_cc_layer *L, const float *X, int T, float *Y);

#endif
