/* lse_exp.h - the SIMD log-sum-exp body and its exponential, written once
 * for any vector width (GCC vector extensions; included by lse_avx2.c and
 * lse_avx512.c, each compiled for its ISA).
 *
 * exp(r) for r <= 0: r = k ln2 + f with k = round(r / ln2), |f| <= ln2/2,
 * ln2 split in two parts (Cody-Waite) so f is exact to float rounding;
 * e^f by its Taylor polynomial of degree 7 (truncation below 3e-9 relative
 * on |f| <= 0.347); 2^k put into the exponent bits. Inputs below -87 (where
 * 2^k would leave the normal range) give 0: relative to the maximum term 1
 * they are below 2^-125 and cannot change a float32-sized sum. */
#ifndef SPQR_LSE_EXP_H
#define SPQR_LSE_EXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef LSE_W
#error "define LSE_W (floats per vector) before including lse_exp.h"
#endif

typedef float vf __attribute__((vector_size(LSE_W * 4)));
typedef int32_t vi __attribute__((vector_size(LSE_W * 4)));

static inline vf lse_splat(float v) {
    vf r;
    for (int i = 0; i < LSE_W; i++) r[i] = v;
    return r;
}

static inline vf lse_exp_nonpos(vf r) {
    const vf log2e = lse_splat(1.44269504088896341f), ln2_hi = lse_splat(0.693145751953125f),
             ln2_lo = lse_splat(1.42860682030941723212e-6f);
    vi under = r < lse_splat(-87.0f);
    vf rc = (vf)(((vi)r & ~under) | ((vi)lse_splat(-87.0f) & under));
    vf kf = rc * log2e;
    /* round to nearest: add and subtract 1.5 * 2^23 */
    const vf magic = lse_splat(12582912.0f);
    kf = (kf + magic) - magic;
    vf f = (rc - kf * ln2_hi) - kf * ln2_lo;
    vf p = lse_splat(1.0f / 5040.0f);
    p = p * f + lse_splat(1.0f / 720.0f);
    p = p * f + lse_splat(1.0f / 120.0f);
    p = p * f + lse_splat(1.0f / 24.0f);
    p = p * f + lse_splat(1.0f / 6.0f);
    p = p * f + lse_splat(0.5f);
    p = p * f + lse_splat(1.0f);
    p = p * f + lse_splat(1.0f);
    vi k = __builtin_convertvector(kf, vi);
    vf e = (vf)((vi)p + (k << 23));
    return (vf)((vi)e & ~under);
}

/* The maximum, its first index, then the sum of exp(x - max) in double. */
static inline double lse_simd(const float *x, int64_t n, int *argmax) {
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

#endif
