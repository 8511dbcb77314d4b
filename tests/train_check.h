/* train_check.h - checks of a format's training hooks (qformat.h: train_count,
 * train_get, train_set, train_grad) shared by the format tests. Header-only
 * (static functions); include after testutil.h.
 *
 * Tolerances:
 *   - round trip: train_get then train_set leaves dequantize() bit-identical
 *     (and train_get returns the same theta again);
 *   - gradient: W is linear in each single theta component, so for a random
 *     G and L(theta) = sum G .* W(theta) the difference quotient
 *         fd_i = (L(theta+) - L(theta-)) / (theta+_i - theta-_i)
 *     over the values train_set actually stored (read back with train_get,
 *     so the fp16 rounding of the step does not matter) is the exact
 *     derivative up to the float32 rounding of W. Accepted:
 *         |g_i - fd_i| <= 1e-3 * A_i,  A_i = sum |G .* (W+ - W-)| / (theta+_i - theta-_i)
 *     (A_i = |dL/dtheta_i| when no term cancels; the bound does not tighten
 *     when the gradient cancels to ~0). The steps are large (a quarter of
 *     max(|theta_i|, 0.5)) so the float rounding of W is ~1e-6 of A_i;
 *   - kernels after train_set: gemm and gemm_ref vs X W^T in double,
 *     |y - yref| <= tol_rel * sum_c |w x| (the format tests' bounds).
 */
#ifndef SPQR_TEST_TRAIN_CHECK_H
#define SPQR_TEST_TRAIN_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qformat.h"
#include "kernels/cpu/cpu.h"

static void *tc_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static float *tc_deq(const spqr_qformat *f, const void *pl, int rows, int cols) {
    float *W = tc_malloc(sizeof(float) * (size_t)rows * cols);
    assert_int_equal(f->dequantize(pl, W), SPQR_OK);
    return W;
}

static void tc_set_ok(const spqr_qformat *f, void *pl, const float *theta) {
    spqr_status st = f->train_set(pl, theta);
    if (st) fprintf(stderr, "train_set: %s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
}

/* train_get -> train_set: the same theta and bit-identical weights. */
static void tc_roundtrip(const spqr_qformat *f, void *pl, int rows, int cols) {
    const size_t n = f->train_count(pl), RC = (size_t)rows * cols;
    float *W0 = tc_deq(f, pl, rows, cols);
    float *th = tc_malloc(sizeof(float) * n), *th2 = tc_malloc(sizeof(float) * n);
    f->train_get(pl, th);
    for (size_t i = 0; i < n; i++) assert_true(isfinite(th[i]));
    tc_set_ok(f, pl, th);
    f->train_get(pl, th2);
    assert_memory_equal(th, th2, sizeof(float) * n);
    float *W1 = tc_deq(f, pl, rows, cols);
    assert_memory_equal(W0, W1, sizeof(float) * RC);
    free(W0);
    free(W1);
    free(th);
    free(th2);
}

/* train_grad against difference quotients at up to ~nsample + 10 coordinates
 * (stratified over theta, plus its last 10 entries, where formats keep their
 * outlier values). Restores the layer's theta. */
static void tc_grad_fd(const spqr_qformat *f, void *pl, int rows, int cols, int nsample) {
    const size_t n = f->train_count(pl), RC = (size_t)rows * cols;
    assert_true(n > 0);
    float *G = tc_malloc(sizeof(float) * RC), *g = tc_malloc(sizeof(float) * n), *g2 = tc_malloc(sizeof(float) * n);
    float *th = tc_malloc(sizeof(float) * n), *tp = tc_malloc(sizeof(float) * n), *back = tc_malloc(sizeof(float) * n);
    for (size_t i = 0; i < RC; i++) G[i] = tu_rand_normal();
    memset(g, 0, sizeof(float) * n);
    f->train_grad(pl, G, g);
    /* deterministic, and it adds */
    for (size_t i = 0; i < n; i++) g2[i] = 1.0f;
    f->train_grad(pl, G, g2);
    for (size_t i = 0; i < n; i++) assert_true(g2[i] == 1.0f + g[i]);
    memset(g2, 0, sizeof(float) * n);
    f->train_grad(pl, G, g2);
    assert_memory_equal(g, g2, sizeof(float) * n);
    f->train_get(pl, th);
    size_t *idx = tc_malloc(sizeof(size_t) * ((size_t)nsample + 10));
    size_t ni = 0;
    if (n <= (size_t)nsample + 10) {
        for (size_t i = 0; i < n; i++) idx[ni++] = i;
    } else {
        for (int k = 0; k < nsample; k++) {
            const size_t a = n * (size_t)k / (size_t)nsample, b = n * (size_t)(k + 1) / (size_t)nsample;
            idx[ni++] = a + (size_t)(tu_rand_u64() % (b - a));
        }
        for (size_t k = 0; k < 10; k++) idx[ni++] = n - 1 - k;
    }
    int checked = 0;
    for (size_t s = 0; s < ni; s++) {
        const size_t i = idx[s];
        const float h = 0.25f * fmaxf(fabsf(th[i]), 0.5f);
        memcpy(tp, th, sizeof(float) * n);
        tp[i] = th[i] + h;
        tc_set_ok(f, pl, tp);
        f->train_get(pl, back);
        const double hp = back[i];
        float *Wp = tc_deq(f, pl, rows, cols);
        tp[i] = th[i] - h;
        tc_set_ok(f, pl, tp);
        f->train_get(pl, back);
        const double hm = back[i];
        float *Wm = tc_deq(f, pl, rows, cols);
        assert_true(hp > hm);
        double d = 0, a = 0;
        for (size_t k = 0; k < RC; k++) {
            const double t = (double)G[k] * ((double)Wp[k] - (double)Wm[k]);
            d += t;
            a += fabs(t);
        }
        d /= hp - hm;
        a /= hp - hm;
        if (!(fabs((double)g[i] - d) <= 1e-3 * a + 1e-30)) {
            fprintf(stderr, "%s: dL/dtheta[%zu] (of %zu) = %.9g, difference quotient %.9g (A = %.3g)\n", f->name, i,
                    n, (double)g[i], d, a);
            fail();
        }
        checked += a > 0;
        free(Wp);
        free(Wm);
    }
    assert_true(checked > 0);
    tc_set_ok(f, pl, th);
    free(G); free(g); free(g2); free(th); free(tp); free(back); free(idx);
}

/* Y = X W^T by gemm (every CPU variant this machine runs) and gemm_ref
 * against the double product of dequantize()'s W. */
static void tc_kernels(const spqr_qformat *f, const void *pl, int rows, int cols, double tol_rel) {
    const int Ts[] = {1, 3, 17};
    const int Tmax = 17;
    float *W = tc_deq(f, pl, rows, cols);
    float *X = tc_malloc(sizeof(float) * (size_t)Tmax * cols), *Y = tc_malloc(sizeof(float) * (size_t)Tmax * rows);
    for (size_t i = 0; i < (size_t)Tmax * cols; i++) X[i] = tu_rand_normal();
    const char *kinds[] = {"ref", "avx2", "avx512"};
    for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
        const int T = Ts[ti];
        for (int v = -1; v < 3; v++) { /* -1: gemm_ref */
            if (v >= 0) {
                if (!spqr_kernel_supported(kinds[v])) continue;
                assert_int_equal(spqr_kernel_force(kinds[v]), SPQR_OK);
            }
            for (size_t i = 0; i < (size_t)T * rows; i++) Y[i] = NAN;
            assert_int_equal(v < 0 ? f->gemm_ref(pl, X, T, Y) : f->gemm(pl, X, T, Y), SPQR_OK);
            for (int t = 0; t < T; t++)
                for (int r = 0; r < rows; r++) {
                    double e = 0, m = 0;
                    for (int c = 0; c < cols; c++) {
                        const double p = (double)W[(size_t)r * cols + c] * X[(size_t)t * cols + c];
                        e += p;
                        m += fabs(p);
                    }
                    const double y = Y[(size_t)t * rows + r];
                    if (!(fabs(y - e) <= tol_rel * m + 1e-30)) {
                        fprintf(stderr, "%s %s T=%d: y[%d][%d] = %.9g, X W^T = %.9g (bound %.3g)\n", f->name,
                                v < 0 ? "gemm_ref" : kinds[v], T, t, r, y, e, tol_rel * m);
                        fail();
                    }
                }
        }
        spqr_kernel_force(NULL);
    }
    free(W);
    free(X);
    free(Y);
}

/* theta' = theta * (1 + 0.2 N(0,1)) + 0.01 N(0,1), stored; returns the
 * stored theta (malloc'd) and checks something changed. */
static float *tc_perturb(const spqr_qformat *f, void *pl) {
    const size_t n = f->train_count(pl);
    float *th = tc_malloc(sizeof(float) * n), *t2 = tc_malloc(sizeof(float) * n);
    f->train_get(pl, th);
    for (size_t i = 0; i < n; i++) t2[i] = th[i] * (1.0f + 0.2f * tu_rand_normal()) + 0.01f * tu_rand_normal();
    tc_set_ok(f, pl, t2);
    f->train_get(pl, t2);
    size_t changed = 0;
    for (size_t i = 0; i < n; i++) changed += t2[i] != th[i];
    assert_true(changed > n / 2);
    free(th);
    return t2;
}

/* Non-finite values and values beyond the fp16 range (65520 and up round to
 * inf) are refused with SPQR_ERR_NUMERIC, leaving theta and W unchanged. */
static void tc_rejects(const spqr_qformat *f, void *pl, int rows, int cols) {
    const size_t n = f->train_count(pl), RC = (size_t)rows * cols;
    float *th = tc_malloc(sizeof(float) * n), *bad = tc_malloc(sizeof(float) * n), *back = tc_malloc(sizeof(float) * n);
    float *W0 = tc_deq(f, pl, rows, cols);
    f->train_get(pl, th);
    const float vals[] = {NAN, INFINITY, -INFINITY, 65520.0f, -65520.0f, 1e30f};
    const size_t where[] = {0, n / 2, n - 1};
    for (size_t v = 0; v < sizeof vals / sizeof *vals; v++)
        for (size_t w = 0; w < 3; w++) {
            for (size_t i = 0; i < n; i++) bad[i] = th[i] * 0.5f + 0.125f; /* valid changes elsewhere */
            bad[where[w]] = vals[v];
            assert_int_equal(f->train_set(pl, bad), SPQR_ERR_NUMERIC);
            assert_non_null(strstr(spqr_last_error(), "not finite"));
            f->train_get(pl, back);
            assert_memory_equal(th, back, sizeof(float) * n);
        }
    float *W1 = tc_deq(f, pl, rows, cols);
    assert_memory_equal(W0, W1, sizeof(float) * RC);
    /* the largest finite fp16 is accepted (65519 rounds to 65504) */
    memcpy(bad, th, sizeof(float) * n);
    bad[n - 1] = 65519.0f;
    tc_set_ok(f, pl, bad);
    f->train_get(pl, back);
    assert_true(back[n - 1] == 65504.0f);
    tc_set_ok(f, pl, th);
    free(th); free(bad); free(back); free(W0); free(W1);
}

#endif
