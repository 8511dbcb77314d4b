/* test_quant.c - per-layer quantization: RTN, GPTQ, SpQR (src/quant/). */
#include "testutil.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/gptq_driver.h"
#include "quant/spqr/quant_internal.h"
#include "quant/spqr/quantize.h"

/* ---- synthetic layers --------------------------------------------------- */

/* Calibration inputs X [cols][n] with correlated channels and a few
 * high-variance ones; H = 2/n X X^T. */
typedef struct calib {
    int cols, n;
    double *X; /* [cols][n] */
    double *H; /* [cols][cols] */
} calib;

static calib make_calib(int cols, int n, uint64_t seed) {
    calib c = {cols, n, malloc(sizeof(double) * cols * n), malloc(sizeof(double) * cols * cols)};
    tu_seed(seed);
    double *common = malloc(sizeof(double) * n);
    for (int t = 0; t < n; t++) common[t] = tu_rand_normal();
    double *prev = calloc((size_t)n, sizeof(double));
    for (int i = 0; i < cols; i++) {
        double sc = (i % 23 == 5) ? 6.0 : 0.5 + tu_rand_uniform();
        double a = 0.8 * tu_rand_normal();
        for (int t = 0; t < n; t++) {
            double z = tu_rand_normal();
            double x = sc * (z + 0.6 * prev[t]) + a * common[t];
            prev[t] = z;
            c.X[(size_t)i * n + t] = x;
        }
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, cols, n, 2.0 / n, c.X, n, 0.0, c.H, cols);
    for (int i = 0; i < cols; i++)
        for (int j = 0; j < i; j++) c.H[(size_t)i * cols + j] = c.H[(size_t)j * cols + i];
    free(common);
    free(prev);
    return c;
}

static void free_calib(calib *c) {
    free(c->X);
    free(c->H);
}

/* Gaussian weights; with heavy > 0, that share of weights is multiplied by 8. */
static float *make_weights(int rows, int cols, double heavy, uint64_t seed) {
    float *W = malloc(sizeof(float) * rows * cols);
    tu_seed(seed);
    for (int i = 0; i < rows * cols; i++) {
        float w = tu_rand_normal();
        if (heavy > 0 && tu_rand_uniform() < heavy) w *= 8.0f;
        W[i] = w;
    }
    return W;
}

/* ||W X - Q X||_F / ||W X||_F */
static double output_rel_err(const float *W, const float *Q, int rows, const calib *c) {
    double *D = malloc(sizeof(double) * rows * c->cols);
    double *Wd = malloc(sizeof(double) * rows * c->cols);
    double *Y = malloc(sizeof(double) * rows * c->n);
    for (int i = 0; i < rows * c->cols; i++) {
        D[i] = (double)W[i] - (double)Q[i];
        Wd[i] = W[i];
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, c->n, c->cols, 1.0, D, c->cols,
                c->X, c->n, 0.0, Y, c->n);
    double num = 0, den = 0;
    for (int i = 0; i < rows * c->n; i++) num += Y[i] * Y[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, c->n, c->cols, 1.0, Wd, c->cols,
                c->X, c->n, 0.0, Y, c->n);
    for (int i = 0; i < rows * c->n; i++) den += Y[i] * Y[i];
    free(D);
    free(Wd);
    free(Y);
    return sqrt(num / den);
}

/* tr(D H D^T), computed naively */
static double hess_err_naive(const float *W, const float *Q, int rows, int cols, const double *H) {
    double acc = 0;
    double *d = malloc(sizeof(double) * cols);
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < cols; j++) d[j] = (double)W[(size_t)r * cols + j] - Q[(size_t)r * cols + j];
        for (int a = 0; a < cols; a++) {
            double s = 0;
            for (int b = 0; b < cols; b++) s += H[(size_t)a * cols + b] * d[b];
            acc += d[a] * s;
        }
    }
    free(d);
    return acc;
}

static spqr_qparams params(spqr_qmethod m, int wbits, int beta1, int beta2, double tau) {
    spqr_qparams p;
    spqr_qparams_default(&p, m);
    p.wbits = wbits;
    p.beta1 = beta1;
    p.beta2 = beta2;
    p.tau = tau;
    return p;
}

/* Quantize, then check the stored layer is valid and reproduces, bit for bit,
 * the values the algorithm committed to. Returns the dequantized weights. */
static float *quantize_checked(const float *W, int rows, int cols, const double *H,
                               const spqr_qparams *p, spqr_qlayer *q, spqr_qlayer_report *rep) {
    float *committed = malloc(sizeof(float) * rows * cols);
    float *deq = malloc(sizeof(float) * rows * cols);
    spqr_status st = spqr_quantize_layer_ex(W, rows, cols, H, p, q, rep, committed);
    if (st != SPQR_OK) printf("quantize failed: %s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    assert_int_equal(spqr_qlayer_validate(q), SPQR_OK);
    spqr_qlayer_dequantize(q, deq);
    assert_memory_equal(deq, committed, sizeof(float) * rows * cols);
    if (rep) {
        assert_int_equal(rep->n_outliers, q->n_outliers);
        assert_true(fabs(rep->formula_bits - spqr_qlayer_formula_bits(q)) < 1e-12);
    }
    free(committed);
    return deq;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_params(void **state) {
    (void)state;
    spqr_qparams p;
    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    assert_int_equal(p.wbits, 4);
    assert_int_equal(p.beta1, 16);
    assert_int_equal(p.beta2, 16);
    assert_int_equal(p.sbits, 3);
    assert_int_equal(p.zbits, 3);
    assert_true(p.act_order);
    assert_true(fabs(p.tau - 0.2) < 1e-12);
    assert_true(fabs(p.percdamp - 0.01) < 1e-12);
    assert_int_equal(p.blocksize, 128);
    assert_int_equal(spqr_qparams_validate(&p, 512), SPQR_OK);
    for (int m = 0; m < 3; m++) {
        spqr_qparams_default(&p, (spqr_qmethod)m);
        assert_int_equal(spqr_qparams_validate(&p, 4096), SPQR_OK);
    }

    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    p.wbits = 1;
    assert_int_equal(spqr_qparams_validate(&p, 512), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "weight bits 1"));
    p.wbits = 9;
    assert_int_equal(spqr_qparams_validate(&p, 512), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "weight bits 9"));

    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    p.beta1 = 128;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "group size (beta1) 128 does not fit a layer with 64"));
    p.beta1 = 64;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_OK);
    p.beta1 = 0;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_OK);
    p.beta1 = -1;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);

    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    p.sbits = 0;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "scale bits 0"));
    p.beta2 = 0; /* fp16 statistics: sbits unused */
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_OK);

    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    p.zbits = 9;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "zero bits 9"));

    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    p.beta2 = -2;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);

    spqr_qparams_default(&p, SPQR_METHOD_GPTQ);
    p.beta1 = 0;
    p.percdamp = 0;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "percdamp"));
    p.percdamp = 1.5;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    p.percdamp = 1.0;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_OK);
    p.blocksize = 0;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "block size"));
    p.blocksize = 1;
    p.tau = NAN;
    assert_int_equal(spqr_qparams_validate(&p, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "tau"));

    /* quantize_layer validates too, and GPTQ/SpQR need a Hessian */
    float W[16] = {0};
    spqr_qlayer q;
    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    assert_int_equal(spqr_quantize_layer(W, 2, 8, NULL, &p, &q, NULL), SPQR_ERR_INVALID_ARG);
    p.beta1 = 4;
    assert_int_equal(spqr_quantize_layer(W, 2, 8, NULL, &p, &q, NULL), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "Hessian"));
    assert_null(q.codes);
}

static void test_formula_bits(void **state) {
    (void)state;
    spqr_qlayer q;
    assert_int_equal(spqr_qlayer_alloc(&q, 64, 64, 4, 16, 16, 3, 3), SPQR_OK);
    assert_int_equal(q.ngroups, 4);
    assert_int_equal(q.nrb, 4);
    assert_true(fabs(spqr_qlayer_formula_bits(&q) - 4.625) < 1e-12); /* 4 + 6/16 + 64/256 */
    q.n_outliers = 41;                                               /* 1% of 4096 ~ 41 */
    assert_true(fabs(spqr_qlayer_formula_bits(&q) - (4.625 + 32.0 * 41 / 4096)) < 1e-12);
    q.n_outliers = 0;
    spqr_qlayer_free(&q);
    assert_null(q.codes);

    /* 3-bit, beta1 = 8, beta2 = 32, sbits 2, zbits 4: 3 + 6/8 + 64/256 = 4.0 */
    assert_int_equal(spqr_qlayer_alloc(&q, 40, 20, 3, 8, 32, 2, 4), SPQR_OK);
    assert_int_equal(q.ngroups, 3);
    assert_int_equal(q.nrb, 2);
    assert_true(fabs(spqr_qlayer_formula_bits(&q) - 4.0) < 1e-12);
    spqr_qlayer_free(&q);

    /* fp16 statistics: 4 + 32/128 */
    assert_int_equal(spqr_qlayer_alloc(&q, 8, 256, 4, 128, 0, 0, 0), SPQR_OK);
    assert_null(q.scale_code);
    assert_non_null(q.scale_f16);
    assert_true(fabs(spqr_qlayer_formula_bits(&q) - 4.25) < 1e-12);
    spqr_qlayer_free(&q);

    /* beta1 == 0: one group per row, stored as beta1 = cols: 8 + 32/512 */
    assert_int_equal(spqr_qlayer_alloc(&q, 8, 512, 8, 0, 0, 0, 0), SPQR_OK);
    assert_int_equal(q.beta1, 512);
    assert_int_equal(q.ngroups, 1);
    assert_true(fabs(spqr_qlayer_formula_bits(&q) - 8.0625) < 1e-12);
    spqr_qlayer_free(&q);

    assert_int_equal(spqr_qlayer_alloc(&q, 8, 8, 1, 4, 0, 0, 0), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qlayer_alloc(&q, 8, 8, 4, 4, 4, 0, 3), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qlayer_alloc(&q, 0, 8, 4, 4, 0, 0, 0), SPQR_ERR_INVALID_ARG);
}

/* Fill a tiny layer by hand and check dequantize against the definition. */
static void test_dequantize_definition(void **state) {
    (void)state;
    spqr_qlayer q;
    const int rows = 3, cols = 5; /* beta1 = 2: groups {0,1},{2,3},{4}; beta2 = 2: blocks {0,1},{2} */
    assert_int_equal(spqr_qlayer_alloc(&q, rows, cols, 3, 2, 2, 2, 3), SPQR_OK);
    assert_int_equal(q.ngroups, 3);
    assert_int_equal(q.nrb, 2);
    const int32_t perm[5] = {3, 0, 4, 1, 2};
    memcpy(q.perm, perm, sizeof perm);
    for (int i = 0; i < rows * cols; i++) q.codes[i] = (uint8_t)((i * 5) % 8);
    for (int i = 0; i < q.ngroups * rows; i++) {
        q.scale_code[i] = (uint8_t)(i % 4);
        q.zero_code[i] = (uint8_t)((i * 3) % 8);
    }
    for (int i = 0; i < q.ngroups * q.nrb; i++) {
        q.s2_scale[i] = spqr_f32_to_f16(0.01f * (i + 1));
        q.s2_zero[i] = spqr_f32_to_f16(-1.5f + 0.25f * i);
        q.z2_scale[i] = spqr_f32_to_f16(0.7f + 0.1f * i);
        q.z2_zero[i] = spqr_f32_to_f16(0.5f * i - 1.0f);
    }
    /* outliers: row 0 at permuted cols 1 and 4, row 2 at col 0 */
    q.n_outliers = 3;
    q.ol_col = malloc(3 * sizeof(uint32_t));
    q.ol_val = malloc(3 * sizeof(uint16_t));
    q.row_ptr[0] = 0;
    q.row_ptr[1] = 2;
    q.row_ptr[2] = 2;
    q.row_ptr[3] = 3;
    q.ol_col[0] = 1;
    q.ol_col[1] = 4;
    q.ol_col[2] = 0;
    q.ol_val[0] = spqr_f32_to_f16(0.125f);
    q.ol_val[1] = spqr_f32_to_f16(-3.0f);
    q.ol_val[2] = spqr_f32_to_f16(1e-3f);
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_OK);

    float w[15], expect[15];
    spqr_qlayer_dequantize(&q, w);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            int g = j / 2, rb = r / 2;
            float scale = spqr_f16_to_f32(q.s2_scale[g * 2 + rb]) *
                          ((float)q.scale_code[g * rows + r] - spqr_f16_to_f32(q.s2_zero[g * 2 + rb]));
            float zero = spqr_f16_to_f32(q.z2_scale[g * 2 + rb]) *
                         ((float)q.zero_code[g * rows + r] - spqr_f16_to_f32(q.z2_zero[g * 2 + rb]));
            float s2, z2;
            spqr_qlayer_group_stats(&q, r, g, &s2, &z2);
            assert_memory_equal(&s2, &scale, sizeof(float));
            assert_memory_equal(&z2, &zero, sizeof(float));
            float v = scale * ((float)q.codes[r * cols + j] - zero);
            for (uint32_t k = q.row_ptr[r]; k < q.row_ptr[r + 1]; k++)
                if (q.ol_col[k] == (uint32_t)j) v = v + spqr_f16_to_f32(q.ol_val[k]);
            expect[r * cols + perm[j]] = v;
        }
    assert_memory_equal(w, expect, sizeof w);

    /* validate catches broken layers */
    q.ol_col[1] = 0; /* not ascending */
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_ERR_FORMAT);
    q.ol_col[1] = 4;
    q.perm[0] = 0; /* repeated */
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_ERR_FORMAT);
    q.perm[0] = 3;
    q.codes[3] = 8; /* > 3 bits */
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_ERR_FORMAT);
    q.codes[3] = 7;
    q.scale_code[1] = 4; /* > 2 bits */
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_ERR_FORMAT);
    q.scale_code[1] = 3;
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_OK);
    spqr_qlayer_free(&q);

    /* fp16 statistics */
    assert_int_equal(spqr_qlayer_alloc(&q, 2, 3, 4, 2, 0, 0, 0), SPQR_OK);
    for (int i = 0; i < 6; i++) q.codes[i] = (uint8_t)(i * 3);
    for (int i = 0; i < 4; i++) {
        q.scale_f16[i] = spqr_f32_to_f16(0.1f * (i + 1));
        q.zero_f16[i] = spqr_f32_to_f16(7.5f - i);
    }
    float w2[6];
    spqr_qlayer_dequantize(&q, w2);
    for (int r = 0; r < 2; r++)
        for (int j = 0; j < 3; j++) {
            int g = j / 2;
            float s = spqr_f16_to_f32(q.scale_f16[g * 2 + r]), z = spqr_f16_to_f32(q.zero_f16[g * 2 + r]);
            float v = s * ((float)q.codes[r * 3 + j] - z);
            assert_memory_equal(&w2[r * 3 + j], &v, sizeof v);
        }
    spqr_qlayer_free(&q);
}

static void test_minmax_and_loo(void **state) {
    (void)state;
    float s, z;
    spqr_minmax_fit(-1.0f, 2.0f, 15.0f, &s, &z);
    assert_true(fabsf(s - 0.2f) < 1e-7f && fabsf(z - 5.0f) < 1e-5f);
    /* degenerate groups are reproduced */
    const float vals[] = {0.37f, -2.5f, 0.0f};
    for (int i = 0; i < 3; i++) {
        uint16_t sh, zh;
        spqr_minmax_fit_f16(vals[i], vals[i], 7.0f, &sh, &zh);
        float sf = spqr_f16_to_f32(sh), zf = spqr_f16_to_f32(zh);
        assert_true(sf > 0.0f);
        float d = spqr_q_deq(spqr_q_code(vals[i], sf, zf, 7.0f), sf, zf);
        assert_true(fabsf(d - vals[i]) <= 1e-3f * fabsf(vals[i]));
    }
    /* a zero point beyond fp16 range widens the grid instead of overflowing */
    {
        uint16_t sh, zh;
        spqr_minmax_fit_f16(1000.0f, 1000.001f, 15.0f, &sh, &zh);
        float sf = spqr_f16_to_f32(sh), zf = spqr_f16_to_f32(zh);
        assert_true(isfinite(zf) && sf > 0);
        float d = spqr_q_deq(spqr_q_code(1000.0005f, sf, zf, 15.0f), sf, zf);
        assert_true(fabsf(d - 1000.0005f) <= 0.5f); /* fp16 resolution at 1000 */
    }
    /* round half to even, clamping, NaN */
    assert_true(spqr_q_round_clamp(2.5f, 15.0f) == 2.0f);
    assert_true(spqr_q_round_clamp(3.5f, 15.0f) == 4.0f);
    assert_true(spqr_q_round_clamp(-0.7f, 15.0f) == 0.0f);
    assert_true(spqr_q_round_clamp(99.0f, 15.0f) == 15.0f);
    assert_true(spqr_q_round_clamp(NAN, 15.0f) == 0.0f);
    assert_int_equal(spqr_q_code(5.0f, 0.0f, 1.0f, 15.0f), 0);

    /* leave-one-out reduction against brute force */
    tu_seed(7);
    for (int trial = 0; trial < 200; trial++) {
        int n = 2 + trial % 20;
        float v[24], hw[24], red[24];
        for (int i = 0; i < n; i++) {
            v[i] = tu_rand_normal();
            if (trial % 3 == 0 && i == trial % n) v[i] *= 10;
            if (trial % 7 == 0 && i == 1) v[i] = v[0]; /* ties */
            hw[i] = 0.5f + tu_rand_uniform();
        }
        const float maxq = (float)((1 << (2 + trial % 3)) - 1);
        spqr_loo_reduction(v, hw, n, maxq, red);
        for (int k = 0; k < n; k++) {
            double e_all = 0, e_loo = 0;
            float lo = INFINITY, hi = -INFINITY, lo2 = INFINITY, hi2 = -INFINITY;
            for (int i = 0; i < n; i++) {
                lo = fminf(lo, v[i]);
                hi = fmaxf(hi, v[i]);
                if (i != k) {
                    lo2 = fminf(lo2, v[i]);
                    hi2 = fmaxf(hi2, v[i]);
                }
            }
            float s1, z1, s2, z2;
            spqr_minmax_fit(lo, hi, maxq, &s1, &z1);
            spqr_minmax_fit(lo2, hi2, maxq, &s2, &z2);
            for (int i = 0; i < n; i++) {
                float d1 = v[i] - spqr_q_deq(spqr_q_code(v[i], s1, z1, maxq), s1, z1);
                e_all += hw[i] * d1 * d1;
                if (i == k) continue;
                float d2 = v[i] - spqr_q_deq(spqr_q_code(v[i], s2, z2, maxq), s2, z2);
                e_loo += hw[i] * d2 * d2;
            }
            double want = e_all - e_loo;
            assert_true(fabs(red[k] - want) <= 1e-4 * (1 + fabs(e_all)));
        }
    }
}

static void test_chol_inverse_upper(void **state) {
    (void)state;
    /* one block, exact multiples of the block (64) and ragged sizes */
    const int sizes[] = {1, 37, 64, 65, 130, 203};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        const int n = sizes[si];
        calib c = make_calib(n, 3 * n + 20, 11 + (uint64_t)n);
        const size_t nn = (size_t)n * (size_t)n;
        double *A = malloc(sizeof(double) * nn), *B = malloc(sizeof(double) * nn), *R = malloc(sizeof(double) * nn),
               *A1 = malloc(sizeof(double) * nn);
        for (size_t i = 0; i < nn; i++) A[i] = c.H[i];
        for (int i = 0; i < n; i++) A[i * n + i] += 0.01;
        memcpy(B, A, sizeof(double) * nn);
        memcpy(R, A, sizeof(double) * nn);
        memcpy(A1, A, sizeof(double) * nn);
        spqr_set_num_threads(2);
        assert_int_equal(spqr_chol_inverse_upper(A, n), SPQR_OK);
        spqr_set_num_threads(1);
        assert_int_equal(spqr_chol_inverse_upper(A1, n), SPQR_OK);
        spqr_set_num_threads(0);
        /* the same bits on one and two threads */
        assert_memory_equal(A, A1, sizeof(double) * nn);
        assert_int_equal(spqr_chol_inverse_upper_ref(R, n), SPQR_OK);
        /* reference: potrf + potri + potrf on the inverse (upper) */
        assert_int_equal(LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', n, B, n), 0);
        assert_int_equal(LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', n, B, n), 0);
        assert_int_equal(LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', n, B, n), 0);
        double maxd = 0, maxr = 0, maxv = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double u = j >= i ? B[i * n + j] : 0.0;
                if (j < i) assert_true(A[i * n + j] == 0.0);
                maxd = fmax(maxd, fabs(A[i * n + j] - u));
                maxr = fmax(maxr, fabs(A[i * n + j] - R[i * n + j]));
                maxv = fmax(maxv, fabs(u));
            }
        assert_true(maxd <= 1e-9 * maxv);
        assert_true(maxr <= 1e-11 * maxv);
        free(A);
        free(A1);
        free(B);
        free(R);
        free_calib(&c);
    }
    const int n = 37;
    double *A = malloc(sizeof(double) * n * n);
    /* not positive definite */
    for (int i = 0; i < n * n; i++) A[i] = (i % (n + 1) == 0) ? -1.0 : 0.0;
    assert_int_equal(spqr_chol_inverse_upper(A, n), SPQR_ERR_NUMERIC);
    /* ... past the first block */
    const int n2 = 100;
    double *A2 = calloc((size_t)n2 * n2, sizeof *A2);
    for (int i = 0; i < n2; i++) A2[i * n2 + i] = i == 20 ? -1.0 : 1.0; /* reversed: row 79 */
    assert_int_equal(spqr_chol_inverse_upper(A2, n2), SPQR_ERR_NUMERIC);
    free(A2);
    free(A);
}

static void test_gptq_beats_rtn(void **state) {
    (void)state;
    const int rows = 192, cols = 256;
    calib c = make_calib(cols, 1024, 21);
    float *W = make_weights(rows, cols, 0, 22);
    const int bits[] = {3, 4}, groups[] = {16, 128, 0};
    for (int bi = 0; bi < 2; bi++)
        for (int gi = 0; gi < 3; gi++) {
            spqr_qparams pr = params(SPQR_METHOD_RTN, bits[bi], groups[gi], 0, 0);
            spqr_qparams pg = params(SPQR_METHOD_GPTQ, bits[bi], groups[gi], 0, 0);
            spqr_qlayer qr, qg;
            spqr_qlayer_report rr, rg;
            float *Qr = quantize_checked(W, rows, cols, c.H, &pr, &qr, &rr);
            float *Qg = quantize_checked(W, rows, cols, c.H, &pg, &qg, &rg);
            double naive = hess_err_naive(W, Qg, rows, cols, c.H);
            assert_true(fabs(naive - rg.hessian_err) <= 1e-6 * naive);
            double outr = output_rel_err(W, Qr, rows, &c), outg = output_rel_err(W, Qg, rows, &c);
            printf("  %d-bit g%-3d  RTN hess %.4g (rel %.4f, out %.4f)  GPTQ hess %.4g (rel %.4f, "
                   "out %.4f)  ratio %.3f\n",
                   bits[bi], groups[gi], rr.hessian_err, rr.hessian_rel_err, outr, rg.hessian_err,
                   rg.hessian_rel_err, outg, rg.hessian_err / rr.hessian_err);
            assert_true(rg.hessian_err < 0.6 * rr.hessian_err);
            assert_true(fabs(sqrt(rg.hessian_rel_err) - outg) < 1e-6);
            assert_int_equal(qg.n_outliers, 0);
            spqr_qlayer_free(&qr);
            spqr_qlayer_free(&qg);
            free(Qr);
            free(Qg);
        }
    free(W);
    free_calib(&c);
}

static void test_spqr_outliers(void **state) {
    (void)state;
    const int rows = 256, cols = 256;
    calib c = make_calib(cols, 1024, 31);
    float *W = make_weights(rows, cols, 0.005, 32);
    spqr_qparams p0 = params(SPQR_METHOD_SPQR, 3, 16, 16, 0.0);
    spqr_qparams p1 = params(SPQR_METHOD_SPQR, 3, 16, 16, 0.2);
    spqr_qparams ps = p1;
    ps.simplified_outliers = 1;
    spqr_qlayer q0, q1, qs;
    spqr_qlayer_report r0, r1, rs;
    float *Q0 = quantize_checked(W, rows, cols, c.H, &p0, &q0, &r0);
    float *Q1 = quantize_checked(W, rows, cols, c.H, &p1, &q1, &r1);
    float *Qs = quantize_checked(W, rows, cols, c.H, &ps, &qs, &rs);
    printf("  SpQR 3-bit g16: tau 0: hess rel %.5f  tau 0.2: hess rel %.5f, outliers %.3f%% "
           "(%.3f bits)  simplified: hess rel %.5f, outliers %.3f%%\n",
           r0.hessian_rel_err, r1.hessian_rel_err, 100 * r1.outlier_share, r1.formula_bits,
           rs.hessian_rel_err, 100 * rs.outlier_share);
    assert_int_equal(q0.n_outliers, 0);
    assert_true(r1.hessian_err < 0.6 * r0.hessian_err);
    assert_true(rs.hessian_err < 0.7 * r0.hessian_err);
    assert_true(r1.outlier_share > 0.001 && r1.outlier_share < 0.05);
    assert_true(rs.outlier_share > 0.001 && rs.outlier_share < 0.05);
    assert_true(fabs(r1.formula_bits - (3 + 6.0 / 16 + 64.0 / 256 + 32 * r1.outlier_share)) < 1e-12);
    spqr_qlayer_free(&q0);
    spqr_qlayer_free(&q1);
    spqr_qlayer_free(&qs);
    free(Q0);
    free(Q1);
    free(Qs);
    free(W);
    free_calib(&c);
}

/* bit-exact reconstruction in every mode, including partial groups/blocks */
static void test_exact_reconstruction(void **state) {
    (void)state;
    struct {
        int rows, cols, method, wbits, beta1, beta2, act, simplified;
        double tau;
        int blocksize;
    } cfg[] = {
        {64, 172, SPQR_METHOD_SPQR, 4, 16, 16, 1, 0, 0.2, 128},
        {7, 172, SPQR_METHOD_SPQR, 3, 16, 16, 1, 0, 0.2, 128},
        {17, 17, SPQR_METHOD_SPQR, 3, 8, 16, 1, 0, 0.2, 5},
        {17, 17, SPQR_METHOD_SPQR, 2, 8, 4, 0, 1, 0.1, 128},
        {33, 100, SPQR_METHOD_SPQR, 4, 0, 8, 1, 0, 0.2, 32},
        {40, 96, SPQR_METHOD_SPQR, 3, 48, 0, 1, 0, 0.2, 40},
        {40, 96, SPQR_METHOD_GPTQ, 4, 32, 0, 1, 0, 0, 128},
        {40, 96, SPQR_METHOD_GPTQ, 3, 24, 0, 0, 0, 0, 7},
        {40, 96, SPQR_METHOD_RTN, 4, 16, 16, 1, 0, 0.2, 128},
        {40, 96, SPQR_METHOD_RTN, 8, 0, 0, 0, 0, 0, 128},
        {1, 8, SPQR_METHOD_SPQR, 4, 1, 1, 1, 0, 0.2, 128},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        calib c = make_calib(cfg[i].cols, 4 * cfg[i].cols, 40 + i);
        float *W = make_weights(cfg[i].rows, cfg[i].cols, 0.01, 50 + i);
        spqr_qparams p = params((spqr_qmethod)cfg[i].method, cfg[i].wbits, cfg[i].beta1,
                                cfg[i].beta2, cfg[i].tau);
        p.act_order = cfg[i].act;
        p.simplified_outliers = cfg[i].simplified;
        p.blocksize = cfg[i].blocksize;
        spqr_qlayer q;
        spqr_qlayer_report rep;
        float *Q = quantize_checked(W, cfg[i].rows, cfg[i].cols, c.H, &p, &q, &rep);
        int g = cfg[i].beta1 ? cfg[i].beta1 : cfg[i].cols;
        assert_int_equal(q.ngroups, (cfg[i].cols + g - 1) / g);
        if (cfg[i].beta2)
            assert_int_equal(q.nrb, (cfg[i].rows + cfg[i].beta2 - 1) / cfg[i].beta2);
        printf("  %dx%d m%d w%d g%d b%d: weight rel %.4f hess rel %.5f outliers %lld bits %.3f\n",
               cfg[i].rows, cfg[i].cols, cfg[i].method, cfg[i].wbits, cfg[i].beta1, cfg[i].beta2,
               rep.weight_rel_err, rep.hessian_rel_err, (long long)rep.n_outliers,
               rep.formula_bits);
        assert_true(rep.weight_rel_err < 0.6);
        if (cfg[i].method != SPQR_METHOD_SPQR) assert_int_equal(rep.n_outliers, 0);
        spqr_qlayer_free(&q);
        free(Q);
        free(W);
        free_calib(&c);
    }
}

static void test_act_order(void **state) {
    (void)state;
    const int rows = 24, cols = 80;
    calib c = make_calib(cols, 400, 61);
    /* make the diagonal distinctive, with a tie */
    c.H[5 * cols + 5] = 1000.0;
    c.H[9 * cols + 9] = 1000.0;
    float *W = make_weights(rows, cols, 0, 62);
    spqr_qparams p = params(SPQR_METHOD_SPQR, 4, 16, 8, 0.2);
    spqr_qlayer q;
    float *Q = quantize_checked(W, rows, cols, c.H, &p, &q, NULL);
    /* perm is a permutation sorted by descending diag, stable */
    int *seen = calloc(cols, sizeof(int));
    for (int j = 0; j < cols; j++) {
        assert_true(q.perm[j] >= 0 && q.perm[j] < cols);
        seen[q.perm[j]]++;
        if (j > 0) {
            double d0 = c.H[q.perm[j - 1] * cols + q.perm[j - 1]], d1 = c.H[q.perm[j] * cols + q.perm[j]];
            assert_true(d0 > d1 || (d0 == d1 && q.perm[j - 1] < q.perm[j]));
        }
    }
    for (int j = 0; j < cols; j++) assert_int_equal(seen[j], 1);
    assert_int_equal(q.perm[0], 5);
    assert_int_equal(q.perm[1], 9);
    /* dequantizing in permuted order and applying perm gives the same */
    float *Pq = malloc(sizeof(float) * rows * cols);
    for (int r = 0; r < rows; r++) {
        uint32_t k = q.row_ptr[r];
        for (int j = 0; j < cols; j++) {
            float s, z;
            spqr_qlayer_group_stats(&q, r, j / q.beta1, &s, &z);
            float v = s * ((float)q.codes[r * cols + j] - z);
            if (k < q.row_ptr[r + 1] && q.ol_col[k] == (uint32_t)j) v = v + spqr_f16_to_f32(q.ol_val[k++]);
            Pq[r * cols + j] = v;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++)
            assert_memory_equal(&Q[r * cols + q.perm[j]], &Pq[r * cols + j], sizeof(float));
    spqr_qlayer_free(&q);

    /* act_order off: identity; RTN ignores act_order */
    p.act_order = 0;
    float *Q2 = quantize_checked(W, rows, cols, c.H, &p, &q, NULL);
    for (int j = 0; j < cols; j++) assert_int_equal(q.perm[j], j);
    spqr_qlayer_free(&q);
    spqr_qparams pr = params(SPQR_METHOD_RTN, 4, 16, 0, 0);
    pr.act_order = 1;
    float *Q3 = quantize_checked(W, rows, cols, NULL, &pr, &q, NULL);
    for (int j = 0; j < cols; j++) assert_int_equal(q.perm[j], j);
    spqr_qlayer_free(&q);
    free(Q2);
    free(Q3);
    free(Pq);
    free(seen);
    free(Q);
    free(W);
    free_calib(&c);
}

static void test_error_bounds(void **state) {
    (void)state;
    const int rows = 256, cols = 256;
    calib c = make_calib(cols, 1024, 71);
    float *W = make_weights(rows, cols, 0, 72);
    spqr_qlayer q;
    spqr_qlayer_report rep;

    /* SpQR defaults (4-bit, g16, 3-bit stats, tau 0.2) */
    spqr_qparams p;
    spqr_qparams_default(&p, SPQR_METHOD_SPQR);
    float *Q = quantize_checked(W, rows, cols, c.H, &p, &q, &rep);
    double out = output_rel_err(W, Q, rows, &c);
    printf("  SpQR w4 g16 s3z3 tau0.2: output rel %.4f, weight rel %.4f, outliers %.3f%%, "
           "bits %.3f\n", out, rep.weight_rel_err, 100 * rep.outlier_share, rep.formula_bits);
    assert_true(out < 0.06);
    assert_true(rep.weight_rel_err < 0.15);
    assert_true(rep.outlier_share > 0.0005 && rep.outlier_share < 0.02);
    assert_true(rep.formula_bits < 4.625 + 32 * 0.02);
    spqr_qlayer_free(&q);
    free(Q);

    /* 3-bit SpQR */
    p.wbits = 3;
    Q = quantize_checked(W, rows, cols, c.H, &p, &q, &rep);
    out = output_rel_err(W, Q, rows, &c);
    printf("  SpQR w3 g16 s3z3 tau0.2: output rel %.4f, weight rel %.4f, outliers %.3f%%\n", out,
           rep.weight_rel_err, 100 * rep.outlier_share);
    assert_true(out < 0.09);
    assert_true(rep.outlier_share > 0.002 && rep.outlier_share < 0.04);
    spqr_qlayer_free(&q);
    free(Q);

    /* RTN 8-bit per-channel */
    spqr_qparams pr = params(SPQR_METHOD_RTN, 8, 0, 0, 0);
    Q = quantize_checked(W, rows, cols, NULL, &pr, &q, &rep);
    printf("  RTN w8 per-channel: weight rel %.5f\n", rep.weight_rel_err);
    assert_true(rep.weight_rel_err < 0.01);
    assert_true(rep.hessian_err == 0.0);
    spqr_qlayer_free(&q);
    free(Q);

    /* RTN 4-bit g16: every weight within half a step of its grid */
    pr = params(SPQR_METHOD_RTN, 4, 16, 0, 0);
    Q = quantize_checked(W, rows, cols, NULL, &pr, &q, &rep);
    printf("  RTN w4 g16: weight rel %.5f\n", rep.weight_rel_err);
    assert_true(rep.weight_rel_err < 0.1);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            float s, z;
            spqr_qlayer_group_stats(&q, r, j / 16, &s, &z);
            assert_true(fabsf(W[r * cols + j] - Q[r * cols + j]) <= 0.5f * s * 1.01f + 1e-6f);
        }
    spqr_qlayer_free(&q);
    free(Q);

    /* GPTQ 4-bit g128 */
    spqr_qparams pg;
    spqr_qparams_default(&pg, SPQR_METHOD_GPTQ);
    Q = quantize_checked(W, rows, cols, c.H, &pg, &q, &rep);
    out = output_rel_err(W, Q, rows, &c);
    printf("  GPTQ w4 g128: output rel %.4f, weight rel %.4f\n", out, rep.weight_rel_err);
    assert_true(out < 0.08);
    spqr_qlayer_free(&q);
    free(Q);
    free(W);
    free_calib(&c);
}

/* The block size only changes how updates are batched, not the result
 * (up to float rounding); with a diagonal Hessian GPTQ is exactly RTN. */
static void test_gptq_blocking_and_diagonal(void **state) {
    (void)state;
    const int rows = 48, cols = 160;
    calib c = make_calib(cols, 640, 101);
    float *W = make_weights(rows, cols, 0.01, 102);
    const int bsz[] = {160, 1, 7, 32, 128};
    double ref = 0;
    for (int i = 0; i < 5; i++) {
        spqr_qparams p = params(SPQR_METHOD_SPQR, 3, 16, 16, 0.2);
        p.blocksize = bsz[i];
        spqr_qlayer q;
        spqr_qlayer_report rep;
        float *Q = quantize_checked(W, rows, cols, c.H, &p, &q, &rep);
        printf("  blocksize %3d: hess rel %.6f outliers %lld\n", bsz[i], rep.hessian_rel_err,
               (long long)rep.n_outliers);
        if (i == 0) ref = rep.hessian_err;
        assert_true(fabs(rep.hessian_err - ref) <= 0.02 * ref);
        spqr_qlayer_free(&q);
        free(Q);
    }

    double *D = calloc((size_t)cols * cols, sizeof(double));
    for (int j = 0; j < cols; j++) D[j * cols + j] = 2.5;
    for (int b2 = 0; b2 <= 16; b2 += 16) {
        spqr_qparams pr = params(SPQR_METHOD_RTN, 4, 16, b2, 0);
        spqr_qparams pg = params(SPQR_METHOD_GPTQ, 4, 16, b2, 0);
        spqr_qlayer qr, qg;
        float *Qr = quantize_checked(W, rows, cols, NULL, &pr, &qr, NULL);
        float *Qg = quantize_checked(W, rows, cols, D, &pg, &qg, NULL);
        for (int j = 0; j < cols; j++) assert_int_equal(qg.perm[j], j); /* ties keep order */
        assert_memory_equal(qr.codes, qg.codes, (size_t)rows * cols);
        assert_memory_equal(Qr, Qg, sizeof(float) * rows * cols);
        spqr_qlayer_free(&qr);
        spqr_qlayer_free(&qg);
        free(Qr);
        free(Qg);
    }
    free(D);
    free(W);
    free_calib(&c);
}

static void test_degenerate(void **state) {
    (void)state;
    const int rows = 20, cols = 48;
    calib c = make_calib(cols, 200, 81);
    /* a dead input channel */
    for (int j = 0; j < cols; j++) c.H[7 * cols + j] = c.H[j * cols + 7] = 0.0;
    float *W = make_weights(rows, cols, 0, 82);
    for (int j = 0; j < cols; j++) {
        W[3 * cols + j] = 0.0f;    /* zero row */
        W[4 * cols + j] = 0.375f;  /* constant row */
        W[5 * cols + j] = -1.25f;  /* constant negative row */
    }
    const int methods[] = {SPQR_METHOD_RTN, SPQR_METHOD_GPTQ, SPQR_METHOD_SPQR};
    for (int m = 0; m < 3; m++)
        for (int b2 = 0; b2 <= 4; b2 += 4) {
            spqr_qparams p = params((spqr_qmethod)methods[m], 3, 8, b2, 0.2);
            spqr_qlayer q;
            spqr_qlayer_report rep;
            float *Q = quantize_checked(W, rows, cols, c.H, &p, &q, &rep);
            for (int i = 0; i < rows * cols; i++) assert_true(isfinite(Q[i]));
            if (methods[m] == SPQR_METHOD_RTN) {
                for (int j = 0; j < cols; j++) {
                    assert_true(fabsf(Q[3 * cols + j]) < 1e-6f);
                    if (b2 == 0) {
                        assert_true(fabsf(Q[4 * cols + j] - 0.375f) < 1e-3f);
                        assert_true(fabsf(Q[5 * cols + j] + 1.25f) < 1e-3f);
                    }
                }
            }
            printf("  degenerate m%d beta2 %d: hess rel %.5f weight rel %.4f outliers %lld\n",
                   methods[m], b2, rep.hessian_rel_err, rep.weight_rel_err, (long long)rep.n_outliers);
            assert_true(rep.hessian_rel_err < 0.2);
            spqr_qlayer_free(&q);
            free(Q);
        }
    free(W);
    free_calib(&c);
}

static void test_nonfinite_and_singular(void **state) {
    (void)state;
    const int rows = 8, cols = 16;
    calib c = make_calib(cols, 64, 91);
    float *W = make_weights(rows, cols, 0, 92);
    spqr_qparams p = params(SPQR_METHOD_SPQR, 4, 8, 4, 0.2);
    spqr_qlayer q;
    W[13] = NAN;
    assert_int_equal(spqr_quantize_layer(W, rows, cols, c.H, &p, &q, NULL), SPQR_ERR_NUMERIC);
    assert_non_null(strstr(spqr_last_error(), "NaN"));
    assert_null(q.codes);
    spqr_qparams pr = params(SPQR_METHOD_RTN, 4, 8, 0, 0);
    assert_int_equal(spqr_quantize_layer(W, rows, cols, NULL, &pr, &q, NULL), SPQR_ERR_NUMERIC);
    W[13] = INFINITY;
    assert_int_equal(spqr_quantize_layer(W, rows, cols, c.H, &p, &q, NULL), SPQR_ERR_NUMERIC);
    W[13] = 0.5f;
    c.H[3 * cols + 4] = NAN;
    assert_int_equal(spqr_quantize_layer(W, rows, cols, c.H, &p, &q, NULL), SPQR_ERR_NUMERIC);
    assert_non_null(strstr(spqr_last_error(), "Hessian"));
    c.H[3 * cols + 4] = INFINITY;
    p.method = SPQR_METHOD_GPTQ;
    assert_int_equal(spqr_quantize_layer(W, rows, cols, c.H, &p, &q, NULL), SPQR_ERR_NUMERIC);
    /* negative definite: damping retries cannot help */
    for (int i = 0; i < cols * cols; i++) c.H[i] = (i % (cols + 1) == 0) ? -1.0 : 0.0;
    assert_int_equal(spqr_quantize_layer(W, rows, cols, c.H, &p, &q, NULL), SPQR_ERR_NUMERIC);
    assert_non_null(strstr(spqr_last_error(), "positive definite"));
    /* weights beyond what fp16 statistics can describe */
    for (int j = 0; j < cols; j++) W[j] = j % 2 ? 4e9f : -4e9f;
    spqr_qparams pr16 = params(SPQR_METHOD_RTN, 4, 8, 0, 0);
    assert_int_equal(spqr_quantize_layer(W, rows, cols, NULL, &pr16, &q, NULL), SPQR_ERR_NUMERIC);
    assert_non_null(strstr(spqr_last_error(), "fp16"));
    assert_null(q.codes);
    for (int j = 0; j < cols; j++) W[j] = 0.5f;
    /* rank-deficient but PSD (fewer samples than columns): damping makes it work */
    free_calib(&c);
    c = make_calib(cols, 4, 93);
    spqr_qlayer_report rep;
    assert_int_equal(spqr_quantize_layer(W, rows, cols, c.H, &p, &q, &rep), SPQR_OK);
    spqr_qlayer_free(&q);
    free(W);
    free_calib(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_formula_bits),
        cmocka_unit_test(test_dequantize_definition),
        cmocka_unit_test(test_minmax_and_loo),
        cmocka_unit_test(test_chol_inverse_upper),
        cmocka_unit_test(test_gptq_beats_rtn),
        cmocka_unit_test(test_spqr_outliers),
        cmocka_unit_test(test_exact_reconstruction),
        cmocka_unit_test(test_act_order),
        cmocka_unit_test(test_error_bounds),
        cmocka_unit_test(test_gptq_blocking_and_diagonal),
        cmocka_unit_test(test_degenerate),
        cmocka_unit_test(test_nonfinite_and_singular),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
