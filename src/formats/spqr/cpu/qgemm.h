/* qgemm.h - CPU kernels of the SpQR packed format: fused dequantize + matrix
 * product, never materializing W.
 *
 * Y[t][r] = sum_c Wdeq[r][c] * X[t][c] for t < n_tok, where Wdeq is the
 * dequantized layer (qlayer.h) in ORIGINAL column order: X is [n_tok][cols],
 * Y is [n_tok][rows] (row-major, no aliasing). The permutation, statistics
 * and outliers are applied on the fly. Returns SPQR_ERR_INVALID_ARG (NULL
 * pointers, n_tok < 0) or SPQR_ERR_NOMEM (scratch). n_tok == 0 does nothing.
 * Thread-safe (scratch is per thread). The variant (ref / AVX2 / AVX-512)
 * is the one kernels/cpu/cpu.h selects. */
#ifndef SPQR_FORMATS_SPQR_QGEMM_H
#define SPQR_FORMATS_SPQR_QGEMM_H

#include "../packed.h"

spqr_status spqr_qgemm(const spqr_packed *W, const float *X, int n_tok, float *Y);

/* The scalar reference (same contract), independent of the selected variant:
 * bit-exact dequantization per qlayer.h, double accumulation. */
spqr_status spqr_qgemm_ref(const spqr_packed *W, const float *X, int n_tok, float *Y);

#endif
