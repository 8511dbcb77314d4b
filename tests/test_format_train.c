/* test_format_train.c - the training hooks of the "spqr" format (qformat.h:
 * train_count, train_get, train_set, train_grad): theta layout, round trip,
 * gradient (a direct double chain rule over qlayer.h's definition and
 * difference quotients), the CPU kernels after train_set, refusal of values
 * that do not fit fp16, and copy-on-write of sections borrowed from a file.
 *
 * Tolerances (see also train_check.h):
 *   - gradient vs the direct double chain rule: |g - ref| <= 1e-5 * A + 1e-30,
 *     A the same sum with every term's absolute value (float32 weights and
 *     statistics in both; g sums in double and rounds once to float, the
 *     reference differs only in summation order);
 *   - difference quotients: 1e-3 * A_i (train_check.h);
 *   - kernels: |y - X W^T| <= 1e-5 * sum |w x| (test_kernels.c's bound).
 *
 * Layers are random qlayers (bilevel and plain statistics, partial last
 * group and row block and tile, outliers, a random column permutation)
 * packed with spqr_pack.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "format/qformat.h"
#include "formats/spqr/packed.h"
#include "io/container.h"
#include "train_check.h"

typedef struct cfg {
    int rows, cols, wbits, beta1, beta2, sbits, zbits;
    double ol; /* outlier probability */
} cfg;

static uint32_t rnd(uint32_t n) { return (uint32_t)(tu_rand_u64() % n); }

/* A random layer (rows x cols in original order) with a random permutation. */
static void ql_random(spqr_qlayer *q, const cfg *c) {
    assert_int_equal(spqr_qlayer_alloc(q, c->rows, c->cols, c->wbits, c->beta1, c->beta2, c->sbits, c->zbits),
                     SPQR_OK);
    const int R = c->rows, C = c->cols, B = c->wbits, G = q->ngroups;
    for (int j = C - 1; j > 0; j--) {
        const int k = (int)rnd((uint32_t)j + 1);
        const int32_t t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    for (size_t i = 0; i < (size_t)R * C; i++) q->codes[i] = (uint8_t)rnd(1u << B);
    const float qmax = (float)((1 << B) - 1);
    if (c->beta2) {
        for (size_t i = 0; i < (size_t)G * R; i++) {
            q->scale_code[i] = (uint8_t)rnd(1u << q->sbits);
            q->zero_code[i] = (uint8_t)rnd(1u << q->zbits);
        }
        tu_spqr_random_stats2(q);
    } else {
        for (size_t i = 0; i < (size_t)G * R; i++) {
            q->scale_f16[i] = spqr_f32_to_f16(0.001f + 0.03f * tu_rand_uniform());
            q->zero_f16[i] = spqr_f32_to_f16(qmax * tu_rand_uniform());
        }
    }
    tu_spqr_random_outliers(q, c->ol, 0.2f);
}

static spqr_packed *packed_of(const spqr_qlayer *q) {
    spqr_packed *p = calloc(1, sizeof *p);
    assert_non_null(p);
    assert_int_equal(spqr_pack(q, p), SPQR_OK);
    return p;
}

/* theta of q in the documented layout (spqr_format.c) */
static float *theta_of(const spqr_qlayer *q, size_t *n) {
    const size_t M = (size_t)q->ngroups * q->nrb, S = (size_t)q->ngroups * q->rows, N = (size_t)q->n_outliers;
    *n = (q->beta2 > 0 ? 4 * M : 2 * S) + N;
    float *t = tc_malloc(sizeof(float) * *n);
    size_t o = 0;
    if (q->beta2 > 0) {
        const uint16_t *a[4] = {q->s2_scale, q->s2_zero, q->z2_scale, q->z2_zero};
        for (int k = 0; k < 4; k++)
            for (size_t i = 0; i < M; i++) t[o++] = spqr_f16_to_f32(a[k][i]);
    } else {
        for (size_t i = 0; i < S; i++) t[o++] = spqr_f16_to_f32(q->scale_f16[i]);
        for (size_t i = 0; i < S; i++) t[o++] = spqr_f16_to_f32(q->zero_f16[i]);
    }
    for (size_t k = 0; k < N; k++) t[o++] = spqr_f16_to_f32(q->ol_val[k]);
    return t;
}

/* The chain rule of qlayer.h's definition, term by term in double: ref =
 * dL/dtheta, mag = the same with absolute values. */
static void chain_rule(const spqr_qlayer *q, const float *G, double *ref, double *mag, size_t n) {
    memset(ref, 0, sizeof(double) * n);
    memset(mag, 0, sizeof(double) * n);
    const int R = q->rows, C = q->cols, NRB = q->nrb, NG = q->ngroups;
    const size_t M = (size_t)NG * NRB, S = (size_t)NG * R;
    const size_t off = q->beta2 > 0 ? 4 * M : 2 * S;
    for (int r = 0; r < R; r++) {
        uint32_t k = q->row_ptr[r];
        for (int j = 0; j < C; j++) {
            const int g = j / q->beta1;
            const double Gv = G[(size_t)r * C + q->perm[j]], c = q->codes[(size_t)r * C + j];
            float scale, zero;
            spqr_qlayer_group_stats(q, r, g, &scale, &zero);
            const double dscale = Gv * (c - zero), dzero = -Gv * scale;
            if (q->beta2 > 0) {
                const size_t i2 = (size_t)g * NRB + (size_t)(r / q->beta2), i1 = (size_t)g * R + r;
                const double s2s = spqr_f16_to_f32(q->s2_scale[i2]), s2z = spqr_f16_to_f32(q->s2_zero[i2]);
                const double z2s = spqr_f16_to_f32(q->z2_scale[i2]), z2z = spqr_f16_to_f32(q->z2_zero[i2]);
                const double t[4] = {dscale * (q->scale_code[i1] - s2z), -dscale * s2s, dzero * (q->zero_code[i1] - z2z),
                                     -dzero * z2s};
                for (int p = 0; p < 4; p++) {
                    ref[p * M + i2] += t[p];
                    mag[p * M + i2] += fabs(t[p]);
                }
            } else {
                const size_t i1 = (size_t)g * R + r;
                ref[i1] += dscale;
                mag[i1] += fabs(dscale);
                ref[S + i1] += dzero;
                mag[S + i1] += fabs(dzero);
            }
            if (k < q->row_ptr[r + 1] && q->ol_col[k] == (uint32_t)j) {
                ref[off + k] += Gv;
                mag[off + k] += fabs(Gv);
                k++;
            }
        }
    }
}

/* partial last groups, row blocks and tiles; outliers; beta1 == cols;
 * several rows of one tile in different row blocks (beta2 = 8) and one row
 * block over several tiles (beta2 = 48); a large-enough layer for the
 * threaded gradient */
static const cfg k_cases[] = {
    /* rows, cols, wbits, beta1, beta2, sbits, zbits, outlier probability */
    {1, 1, 4, 16, 16, 3, 3, 0.0},     {7, 17, 5, 48, 8, 3, 3, 0.05},   {17, 40, 3, 16, 16, 3, 3, 0.05},
    {33, 70, 4, 16, 16, 3, 3, 0.03},  {40, 53, 6, 16, 0, 0, 0, 0.05},  {7, 33, 4, 8, 0, 0, 0, 0.1},
    {172, 7, 7, 7, 8, 4, 2, 0.1},     {100, 64, 3, 16, 48, 3, 3, 0.0}, {24, 100, 7, 64, 16, 1, 1, 0.02},
    {19, 45, 2, 45, 0, 0, 0, 0.0},    {300, 200, 4, 32, 16, 3, 3, 0.01}, {130, 300, 3, 16, 0, 0, 0, 0.01},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

static void test_layout_and_roundtrip(void **state) {
    (void)state;
    tu_seed(61);
    const spqr_qformat *f = spqr_qformat_find("spqr");
    assert_non_null(f);
    assert_non_null(f->train_count);
    assert_null(spqr_qformat_dense.train_count);
    for (int k = 0; k < N_CASES; k++) {
        spqr_qlayer q;
        ql_random(&q, &k_cases[k]);
        spqr_packed *p = packed_of(&q);
        size_t n;
        float *want = theta_of(&q, &n);
        assert_int_equal(f->train_count(p), n);
        float *got = tc_malloc(sizeof(float) * n);
        f->train_get(p, got);
        assert_memory_equal(want, got, sizeof(float) * n);
        tc_roundtrip(f, p, q.rows, q.cols);
        /* train_set on the packed form = the same values in the qlayer, then
         * packed: identical sections (the padding of "stats" stays zero) */
        for (size_t i = 0; i < n; i++) got[i] = want[i] * (1.0f + 0.1f * tu_rand_normal());
        assert_int_equal(f->train_set(p, got), SPQR_OK);
        const size_t M = (size_t)q.ngroups * q.nrb, S = (size_t)q.ngroups * q.rows;
        size_t o = 0;
        if (q.beta2 > 0) {
            uint16_t *a[4] = {q.s2_scale, q.s2_zero, q.z2_scale, q.z2_zero};
            for (int t = 0; t < 4; t++)
                for (size_t i = 0; i < M; i++) a[t][i] = spqr_f32_to_f16(got[o++]);
        } else {
            for (size_t i = 0; i < S; i++) q.scale_f16[i] = spqr_f32_to_f16(got[o++]);
            for (size_t i = 0; i < S; i++) q.zero_f16[i] = spqr_f32_to_f16(got[o++]);
        }
        for (int64_t i = 0; i < q.n_outliers; i++) q.ol_val[i] = spqr_f32_to_f16(got[o++]);
        spqr_packed *p2 = packed_of(&q);
        spqr_qsection a[SPQR_QFORMAT_MAX_SECTIONS], b[SPQR_QFORMAT_MAX_SECTIONS];
        const int na = f->sections(p, a, SPQR_QFORMAT_MAX_SECTIONS), nb = f->sections(p2, b, SPQR_QFORMAT_MAX_SECTIONS);
        assert_int_equal(na, nb);
        for (int i = 0; i < na; i++) {
            assert_int_equal(a[i].bytes, b[i].bytes);
            if (a[i].bytes) assert_memory_equal(a[i].data, b[i].data, a[i].bytes);
        }
        float *w1 = tc_deq(f, p, q.rows, q.cols), *w2 = tc_malloc(sizeof(float) * (size_t)q.rows * q.cols);
        spqr_qlayer_dequantize(&q, w2);
        assert_memory_equal(w1, w2, sizeof(float) * (size_t)q.rows * q.cols);
        free(w1); free(w2); free(want); free(got);
        f->free(p);
        f->free(p2);
        spqr_qlayer_free(&q);
    }
}

static void test_grad(void **state) {
    (void)state;
    tu_seed(67);
    const spqr_qformat *f = spqr_qformat_find("spqr");
    for (int k = 0; k < N_CASES; k++) {
        const cfg *c = &k_cases[k];
        spqr_qlayer q;
        ql_random(&q, c);
        spqr_packed *p = packed_of(&q);
        const size_t n = f->train_count(p), RC = (size_t)q.rows * q.cols;
        float *G = tc_malloc(sizeof(float) * RC), *g = tc_malloc(sizeof(float) * n);
        double *ref = tc_malloc(sizeof(double) * n), *mag = tc_malloc(sizeof(double) * n);
        for (size_t i = 0; i < RC; i++) G[i] = tu_rand_normal();
        memset(g, 0, sizeof(float) * n);
        f->train_grad(p, G, g);
        chain_rule(&q, G, ref, mag, n);
        for (size_t i = 0; i < n; i++)
            if (!(fabs(g[i] - ref[i]) <= 1e-5 * mag[i] + 1e-30)) {
                fprintf(stderr, "case %d (%dx%d b1=%d b2=%d): g[%zu] = %.9g, chain rule %.9g (A = %.3g)\n", k, c->rows,
                        c->cols, c->beta1, c->beta2, i, (double)g[i], ref[i], mag[i]);
                fail();
            }
        free(G); free(g); free(ref); free(mag);
        tc_grad_fd(f, p, q.rows, q.cols, 60);
        f->free(p);
        spqr_qlayer_free(&q);
    }
}

static void test_kernels_after_set(void **state) {
    (void)state;
    tu_seed(71);
    const spqr_qformat *f = spqr_qformat_find("spqr");
    for (int k = 0; k < N_CASES; k++) {
        spqr_qlayer q;
        ql_random(&q, &k_cases[k]);
        spqr_packed *p = packed_of(&q);
        float *w0 = tc_deq(f, p, q.rows, q.cols);
        float *th = tc_perturb(f, p);
        float *w1 = tc_deq(f, p, q.rows, q.cols);
        size_t changed = 0;
        for (size_t i = 0; i < (size_t)q.rows * q.cols; i++) changed += w0[i] != w1[i];
        assert_true(changed > 0);
        tc_kernels(f, p, q.rows, q.cols, 1e-5);
        tc_rejects(f, p, q.rows, q.cols);
        free(w0); free(w1); free(th);
        f->free(p);
        spqr_qlayer_free(&q);
    }
}

/* ---- sections borrowed from a file -------------------------------------------------- */

typedef struct {
    spqr_container *c;
} find_ctx;

static spqr_status find_sec(void *ctx, const char *name, spqr_qsection *out) {
    const find_ctx *fc = ctx;
    char full[256];
    snprintf(full, sizeof full, "L.%s", name);
    spqr_ctensor t;
    spqr_status st = spqr_container_find(fc->c, full, &t);
    if (!st) *out = (spqr_qsection){name, t.dtype, t.data, t.nbytes};
    return st;
}

static void test_borrowed(void **state) {
    (void)state;
    tu_seed(73);
    const spqr_qformat *f = spqr_qformat_find("spqr");
    const cfg cases[] = {{17, 40, 3, 16, 16, 3, 3, 0.05}, {7, 33, 4, 8, 0, 0, 0, 0.1}, {40, 53, 6, 16, 0, 0, 0, 0.0}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        spqr_qlayer q;
        ql_random(&q, &cases[k]);
        spqr_packed *p = packed_of(&q);
        char path[4200];
        snprintf(path, sizeof path, "%s/train%zu.spqr", tu_tmpdir(), k);
        spqr_cwriter *w = NULL;
        assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
        spqr_qsection sec[SPQR_QFORMAT_MAX_SECTIONS];
        const int ns = f->sections(p, sec, SPQR_QFORMAT_MAX_SECTIONS);
        for (int i = 0; i < ns; i++) {
            char name[64];
            snprintf(name, sizeof name, "L.%s", sec[i].name);
            uint64_t d = sec[i].bytes / spqr_dtype_size(sec[i].dtype);
            assert_int_equal(spqr_cwriter_add(w, name, sec[i].dtype, 1, &d, sec[i].data, sec[i].bytes), SPQR_OK);
        }
        assert_int_equal(spqr_cwriter_set_metadata(w, "{}"), SPQR_OK);
        assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
        cJSON *geom = cJSON_CreateObject();
        assert_int_equal(f->write_geometry(p, geom), SPQR_OK);
        spqr_container *c = NULL;
        assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
        find_ctx fc = {c};
        void *back = NULL;
        assert_int_equal(f->open(geom, q.rows, q.cols, find_sec, &fc, &back), SPQR_OK);
        spqr_packed *B = back;
        for (int i = 0; i < SPQR_PACKED_MAX_SECTIONS; i++) assert_null(B->owned[i]); /* all borrowed */
        const uint16_t *mapped_stats = q.beta2 > 0 ? B->stats2 : B->stats, *mapped_ol = B->ol_val;
        spqr_qsection before[SPQR_QFORMAT_MAX_SECTIONS];
        assert_int_equal(f->sections(B, before, SPQR_QFORMAT_MAX_SECTIONS), ns);
        /* refused: nothing copied */
        const size_t n = f->train_count(B);
        float *bad = tc_malloc(sizeof(float) * n);
        f->train_get(B, bad);
        bad[n - 1] = INFINITY;
        assert_int_equal(f->train_set(B, bad), SPQR_ERR_NUMERIC);
        assert_ptr_equal(q.beta2 > 0 ? B->stats2 : B->stats, mapped_stats);
        free(bad);
        /* accepted: copies, the mapped sections keep the written values */
        float *th = tc_perturb(f, B);
        assert_true((q.beta2 > 0 ? B->stats2 : B->stats) != mapped_stats);
        if (q.n_outliers > 0) assert_true(B->ol_val != mapped_ol);
        spqr_qsection orig[SPQR_QFORMAT_MAX_SECTIONS], now[SPQR_QFORMAT_MAX_SECTIONS];
        f->sections(p, orig, SPQR_QFORMAT_MAX_SECTIONS);
        f->sections(B, now, SPQR_QFORMAT_MAX_SECTIONS);
        for (int i = 0; i < ns; i++) {
            const char *nm = orig[i].name;
            if (!strcmp(nm, "stats2") || !strcmp(nm, "stats"))
                assert_memory_equal(mapped_stats, orig[i].data, orig[i].bytes);
            else if (!strcmp(nm, "ol_val") && orig[i].bytes)
                assert_memory_equal(mapped_ol, orig[i].data, orig[i].bytes);
            else
                assert_ptr_equal(now[i].data, before[i].data); /* the other sections stay borrowed */
        }
        /* the same theta on the owned packed form: identical sections and weights */
        tc_set_ok(f, p, th);
        f->sections(p, orig, SPQR_QFORMAT_MAX_SECTIONS);
        for (int i = 0; i < ns; i++) {
            assert_int_equal(orig[i].bytes, now[i].bytes);
            if (orig[i].bytes) assert_memory_equal(orig[i].data, now[i].data, orig[i].bytes);
        }
        tc_kernels(f, B, q.rows, q.cols, 1e-5);
        tc_grad_fd(f, B, q.rows, q.cols, 20);
        tc_rejects(f, B, q.rows, q.cols);
        /* a second set writes into the copies (no new copies) */
        const uint16_t *own_stats = q.beta2 > 0 ? B->stats2 : B->stats;
        tc_set_ok(f, B, th);
        assert_ptr_equal(q.beta2 > 0 ? B->stats2 : B->stats, own_stats);
        free(th);
        f->free(back);
        cJSON_Delete(geom);
        spqr_container_close(c);
        f->free(p);
        spqr_qlayer_free(&q);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_and_roundtrip),
        cmocka_unit_test(test_grad),
        cmocka_unit_test(test_kernels_after_set),
        cmocka_unit_test(test_borrowed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
