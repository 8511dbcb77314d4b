/* lse_avx512.c - log-sum-exp and argmax of a row of logits, 16 floats per step
 * (the polynomial exponential of lse_exp.h, sums in double). Matches
 * spqr_logsumexp_ref within 1e-6 (tests/test_kernels.c); the argmax is the
 * same first index of the maximum. */
#include <math.h>

#include "cpu.h"

#define LSE_W 16
#include "lse_exp.h"

double spqr_logsumexp_avx512(const float *x, int64_t n, int *argmax) {
    /* the maximum, then its first index */
    int64_t i = 0;
    vf vm = lse_splat(x[0]);
    for (; i + LSE_W <= n; i += LSE_W) {
        vf v;
        memcpy(&v, x + i, sizeof v);
        vi gt = v > vm;
        vm = (vf)(((vi)v & gt) | ((vi)vm & ~gt));
    }
    float mx = vm[0];
    for (int l = 1; l < LSE_W; l++) mx = vm[l] > mx ? vm[l] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    int am = 0;
    while (x[am] != mx) am++;
    /* sum of exp(x - max) in double: four float lanes at a time widened */
    const vf vmx = lse_splat(mx);
    double s = 0.0;
    double acc[LSE_W];
    for (int l = 0; l < LSE_W; l++) acc[l] = 0.0;
    for (i = 0; i + LSE_W <= n; i += LSE_W) {
        vf v;
        memcpy(&v, x + i, sizeof v);
        vf e = lse_exp_nonpos(v - vmx);
        for (int l = 0; l < LSE_W; l++) acc[l] += (double)e[l];
    }
    for (; i < n; i++) s += (double)expf(x[i] - mx);
    for (int l = 0; l < LSE_W; l++) s += acc[l];
    if (argmax) *argmax = am;
    return log(s) + (double)mx;
}
