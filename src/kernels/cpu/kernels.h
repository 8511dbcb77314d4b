/* kernels.h - CPU matrix kernels: fused dequantize + matrix product on packed
 * SpQR layers, and dense matrix-vector products for unquantized weights.
 *
 * Variants: "ref" (portable scalar C, bit-exact dequantization per
 * quant/qlayer.h, double accumulation), "avx2" (AVX2+FMA+F16C) and "avx512"
 * (AVX-512 F/BW/VL/DQ). The best variant the CPU supports is chosen at the
 * first call; the environment variable SPQR_KERNEL=ref|avx2|avx512|auto (read
 * once) or spqr_kernel_force() overrides the choice. All kernels use
 * spqr_num_threads() OpenMP threads.
 */
#ifndef SPQR_KERNELS_H
#define SPQR_KERNELS_H

#include "../../format/packed.h"
#include "../../util/common.h"

/* Y[t][r] = sum_c Wdeq[r][c] * X[t][c] for t < n_tok, where Wdeq is the
 * dequantized layer in ORIGINAL column order: X is [n_tok][cols], Y is
 * [n_tok][rows] (row-major, no aliasing). W is never materialized; the
 * permutation, statistics and outliers are applied on the fly. Returns
 * SPQR_ERR_INVALID_ARG (NULL pointers, n_tok < 0) or SPQR_ERR_NOMEM
 * (scratch). n_tok == 0 does nothing. Thread-safe (scratch is per thread). */
spqr_status spqr_qgemm(const spqr_packed *W, const float *X, int n_tok, float *Y);

/* The scalar reference (same contract), independent of the selected variant. */
spqr_status spqr_qgemm_ref(const spqr_packed *W, const float *X, int n_tok, float *Y);

/* y = W x for a dense row-major W [rows][cols] of dtype f32, f16 or bf16
 * (x: cols floats, y: rows floats). Returns SPQR_ERR_INVALID_ARG for other
 * dtypes or bad sizes. */
spqr_status spqr_dense_gemv(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y);

/* Force a variant ("ref", "avx2", "avx512"), or NULL / "auto" for automatic
 * selection. Fails with SPQR_ERR_UNSUPPORTED if the CPU lacks the features,
 * SPQR_ERR_INVALID_ARG for an unknown name. Process-wide. */
spqr_status spqr_kernel_force(const char *name);
/* Name of the variant the next call will use ("ref", "avx2", "avx512"). */
const char *spqr_kernel_name(void);
/* Whether this CPU (and build) can run the named variant. */
bool spqr_kernel_supported(const char *name);

/* Release the calling thread's cached scratch memory (optional). */
void spqr_kernel_scratch_release(void);

#endif
