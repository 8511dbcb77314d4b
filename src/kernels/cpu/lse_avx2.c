/* lse_avx2.c - log-sum-exp and argmax of a row of logits, 8 floats per step
 * (lse_exp.h: polynomial exponential, sums in double). Matches
 * spqr_logsumexp_ref within 1e-6 (tests/test_kernels.c); the argmax is the
 * same first index of the maximum. */
#include "cpu.h"

#define LSE_W 8
#include "lse_exp.h"

double spqr_logsumexp_avx2(const float *x, int64_t n, int *argmax) { return lse_simd(x, n, argmax); }
