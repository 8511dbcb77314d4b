/* lse.c - log-sum-exp and argmax of a row of logits (the normaliser of a
 * log-softmax over the vocabulary): the scalar reference and the dispatch to
 * the SIMD variants (lse_avx2.c, lse_avx512.c). */
#include <math.h>

#include "cpu.h"

double spqr_logsumexp_ref(const float *x, int64_t n, int *argmax) {
    float mx = x[0];
    int am = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > mx) {
            mx = x[i];
            am = (int)i;
        }
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)expf(x[i] - mx);
    if (argmax) *argmax = am;
    return log(s) + (double)mx;
}

double spqr_logsumexp(const float *x, int64_t n, int *argmax) {
    switch (spqr_cpu_kind_active()) {
    case SPQR_CPU_AVX512:
        return spqr_logsumexp_avx512(x, n, argmax);
    case SPQR_CPU_AVX2:
        return spqr_logsumexp_avx2(x, n, argmax);
    default:
        return spqr_logsumexp_ref(x, n, argmax);
    }
}
