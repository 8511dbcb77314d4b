/* test_kernels.c - packed layout (pack/unpack/sections/validation) and the CPU
 * kernels (scalar reference, AVX2, AVX-512, dense gemv).
 *
 * Tolerance used for every floating-point comparison of an output y against
 * a reference value yref (computed in double from the same float weights):
 *
 *     |y - yref| <= 1e-5 * sum_c |w[r][c]| * |x[c]|   (+ 1e-30)
 *
 * i.e. relative error <= 1e-5 * (sum |w||x| over the row) / |yref|: the bound
 * scales with the magnitude of the terms summed, so cancellation in y does
 * not make it fail, while float32 accumulation (errors ~ sqrt(n) * 6e-8 of
 * that sum) passes comfortably.
 *
 * Layers are built here with malloc (not spqr_qlayer_alloc) so this test does
 * not depend on quant/qlayer.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "formats/spqr/packed.h"
#include "formats/spqr/cpu/qgemm.h"
#include "kernels/cpu/cpu.h"
#include "format/qformat.h"
#include "io/container.h"

/* ---- random layers ------------------------------------------------------------ */

typedef struct cfg {
    int rows, cols, wbits, beta1, beta2, sbits, zbits;
    double ol; /* outlier probability */
} cfg;

static uint32_t rnd(uint32_t n) { return (uint32_t)(tu_rand_u64() % n); }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static void ql_random(spqr_qlayer *q, const cfg *c) {
    memset(q, 0, sizeof *q);
    const int R = c->rows, C = c->cols, B = c->wbits;
    q->rows = R;
    q->cols = C;
    q->wbits = B;
    q->beta1 = c->beta1;
    q->beta2 = c->beta2;
    q->sbits = c->beta2 ? c->sbits : 0;
    q->zbits = c->beta2 ? c->zbits : 0;
    const int G = (C + c->beta1 - 1) / c->beta1;
    const int NRB = c->beta2 ? (R + c->beta2 - 1) / c->beta2 : 0;
    q->ngroups = G;
    q->nrb = NRB;
    q->perm = xmalloc((size_t)C * sizeof(int32_t));
    for (int j = 0; j < C; j++) q->perm[j] = j;
    for (int j = C - 1; j > 0; j--) {
        int k = (int)rnd((uint32_t)j + 1);
        int32_t t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    q->codes = xmalloc((size_t)R * C);
    for (size_t i = 0; i < (size_t)R * C; i++) q->codes[i] = (uint8_t)rnd(1u << B);
    const float qmax = (float)((1 << B) - 1);
    if (c->beta2) {
        q->scale_code = xmalloc((size_t)G * R);
        q->zero_code = xmalloc((size_t)G * R);
        for (size_t i = 0; i < (size_t)G * R; i++) {
            q->scale_code[i] = (uint8_t)rnd(1u << q->sbits);
            q->zero_code[i] = (uint8_t)rnd(1u << q->zbits);
        }
        size_t n2 = (size_t)G * NRB;
        q->s2_scale = xmalloc(n2 * 2 + 2);
        q->s2_zero = xmalloc(n2 * 2 + 2);
        q->z2_scale = xmalloc(n2 * 2 + 2);
        q->z2_zero = xmalloc(n2 * 2 + 2);
        for (size_t i = 0; i < n2; i++) {
            q->s2_scale[i] = spqr_f32_to_f16(0.002f + 0.01f * tu_rand_uniform());
            q->s2_zero[i] = spqr_f32_to_f16(-1.0f - 2.0f * tu_rand_uniform());
            q->z2_scale[i] = spqr_f32_to_f16(qmax / (float)((1 << q->zbits) - 1) * (0.5f + 0.5f * tu_rand_uniform()));
            q->z2_zero[i] = spqr_f32_to_f16(-0.5f * tu_rand_uniform());
        }
    } else {
        q->scale_f16 = xmalloc((size_t)G * R * 2);
        q->zero_f16 = xmalloc((size_t)G * R * 2);
        for (size_t i = 0; i < (size_t)G * R; i++) {
            q->scale_f16[i] = spqr_f32_to_f16(0.001f + 0.03f * tu_rand_uniform());
            q->zero_f16[i] = spqr_f32_to_f16(qmax * tu_rand_uniform());
        }
    }
    q->row_ptr = xmalloc(((size_t)R + 1) * sizeof(uint32_t));
    tu_spqr_random_outliers(q, c->ol, 0.2f);
}

/* Dense [rows][cols] in ORIGINAL column order, exactly per quant/qlayer.h. */
static float *ql_dense(const spqr_qlayer *q) {
    const int R = q->rows, C = q->cols;
    float *w = xmalloc((size_t)R * C * sizeof(float));
    for (int r = 0; r < R; r++) {
        uint32_t k = q->row_ptr[r];
        for (int j = 0; j < C; j++) {
            const int g = j / q->beta1;
            float scale, zero;
            if (q->beta2 > 0) {
                const int rb = r / q->beta2, i2 = g * q->nrb + rb;
                scale = spqr_f16_to_f32(q->s2_scale[i2]) *
                        ((float)q->scale_code[(size_t)g * R + r] - spqr_f16_to_f32(q->s2_zero[i2]));
                zero = spqr_f16_to_f32(q->z2_scale[i2]) *
                       ((float)q->zero_code[(size_t)g * R + r] - spqr_f16_to_f32(q->z2_zero[i2]));
            } else {
                scale = spqr_f16_to_f32(q->scale_f16[(size_t)g * R + r]);
                zero = spqr_f16_to_f32(q->zero_f16[(size_t)g * R + r]);
            }
            float v = scale * ((float)q->codes[(size_t)r * C + j] - zero);
            if (k < q->row_ptr[r + 1] && q->ol_col[k] == (uint32_t)j) {
                v = v + spqr_f16_to_f32(q->ol_val[k]);
                k++;
            }
            w[(size_t)r * C + q->perm[j]] = v;
        }
    }
    return w;
}

/* Compare y [n_tok][rows] against the double product of dense w with X; if yref
 * is non-NULL compare against it instead (the bound still uses w). */
static void check_close(const float *w, const float *X, int n_tok, int R, int C, const float *y, const float *yref,
                        const char *what) {
    for (int t = 0; t < n_tok; t++)
        for (int r = 0; r < R; r++) {
            double exact = 0.0, mag = 0.0;
            for (int c = 0; c < C; c++) {
                exact += (double)w[(size_t)r * C + c] * X[(size_t)t * C + c];
                mag += fabs((double)w[(size_t)r * C + c] * X[(size_t)t * C + c]);
            }
            const double ref = yref ? yref[(size_t)t * R + r] : exact;
            const double got = y[(size_t)t * R + r];
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30)) {
                print_error("%s: token %d row %d: got %.9g want %.9g (bound %.3g)\n", what, t, r, got, ref, 1e-5 * mag);
                fail();
            }
        }
}

static const cfg k_cases[] = {
    /* rows, cols, wbits, beta1, beta2, sbits, zbits, outliers */
    {1, 1, 4, 16, 16, 3, 3, 0.0},
    {1, 7, 2, 8, 0, 0, 0, 0.2},
    {7, 1, 3, 16, 16, 3, 3, 0.5},
    {7, 17, 5, 48, 8, 3, 3, 0.05},
    {16, 16, 4, 16, 16, 3, 3, 0.01},
    {17, 172, 3, 16, 16, 3, 3, 0.01},
    {17, 172, 6, 32, 0, 0, 0, 0.02},
    {172, 7, 7, 7, 8, 4, 2, 0.1},
    {172, 17, 8, 8, 16, 8, 8, 0.0},
    {16, 4097, 4, 16, 16, 3, 3, 0.01},
    {17, 4097, 2, 4097, 0, 0, 0, 0.0},
    {33, 300, 4, 48, 16, 3, 3, 0.03},
    {172, 172, 5, 172, 8, 2, 5, 0.01},
    {4097, 17, 3, 8, 16, 3, 3, 0.01},
    {4097, 172, 4, 16, 16, 3, 3, 0.01},
    {40, 513, 8, 32, 8, 6, 7, 0.0},
    {40, 96, 6, 16, 0, 0, 0, 0.05},
    {24, 100, 7, 64, 16, 1, 1, 0.02},
    {40, 200, 5, 8, 16, 6, 2, 0.02},
    {48, 160, 4, 32, 32, 4, 4, 0.02},
    {100, 64, 3, 16, 48, 3, 3, 0.0},
    {5, 700, 4, 16, 16, 3, 3, 0.6}, /* > 255 outliers in a row: 16-bit counts */
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

/* ---- pack / unpack ---------------------------------------------------------------- */

static void assert_same_layer(const spqr_qlayer *a, const spqr_qlayer *b) {
    assert_int_equal(a->rows, b->rows);
    assert_int_equal(a->cols, b->cols);
    assert_int_equal(a->wbits, b->wbits);
    assert_int_equal(a->beta1, b->beta1);
    assert_int_equal(a->beta2, b->beta2);
    assert_int_equal(a->sbits, b->sbits);
    assert_int_equal(a->zbits, b->zbits);
    assert_int_equal(a->ngroups, b->ngroups);
    assert_int_equal(a->nrb, b->nrb);
    assert_int_equal(a->n_outliers, b->n_outliers);
    const size_t R = (size_t)a->rows, C = (size_t)a->cols, G = (size_t)a->ngroups, N2 = G * (size_t)a->nrb;
    assert_memory_equal(a->perm, b->perm, C * sizeof(int32_t));
    assert_memory_equal(a->codes, b->codes, R * C);
    if (a->beta2 > 0) {
        assert_memory_equal(a->scale_code, b->scale_code, G * R);
        assert_memory_equal(a->zero_code, b->zero_code, G * R);
        assert_memory_equal(a->s2_scale, b->s2_scale, N2 * 2);
        assert_memory_equal(a->s2_zero, b->s2_zero, N2 * 2);
        assert_memory_equal(a->z2_scale, b->z2_scale, N2 * 2);
        assert_memory_equal(a->z2_zero, b->z2_zero, N2 * 2);
    } else {
        assert_memory_equal(a->scale_f16, b->scale_f16, G * R * 2);
        assert_memory_equal(a->zero_f16, b->zero_f16, G * R * 2);
    }
    assert_memory_equal(a->row_ptr, b->row_ptr, (R + 1) * sizeof(uint32_t));
    if (a->n_outliers > 0) {
        assert_memory_equal(a->ol_col, b->ol_col, (size_t)a->n_outliers * sizeof(uint32_t));
        assert_memory_equal(a->ol_val, b->ol_val, (size_t)a->n_outliers * sizeof(uint16_t));
    }
}

static void test_pack_roundtrip(void **state) {
    (void)state;
    tu_seed(11);
    for (int i = 0; i < N_CASES; i++) {
        spqr_qlayer q, u, v;
        ql_random(&q, &k_cases[i]);
        spqr_packed p, p2;
        assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
        assert_int_equal(spqr_unpack(&p, &u), SPQR_OK);
        assert_same_layer(&q, &u);

        /* through the section list (as a file reader would) */
        spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS];
        int n = spqr_packed_sections(&p, s, SPQR_PACKED_MAX_SECTIONS);
        assert_int_equal(n, q.beta2 > 0 ? 7 : 6);
        size_t total = 0;
        spqr_packed_geom g;
        spqr_packed_geometry(&p, &g);
        uint32_t maxc = 0;
        for (int r = 0; r < q.rows; r++)
            if (q.row_ptr[r + 1] - q.row_ptr[r] > maxc) maxc = q.row_ptr[r + 1] - q.row_ptr[r];
        assert_int_equal(g.ocw, maxc <= 255 ? 1 : (q.cols > 65535 ? 4 : 2)); /* counts as narrow as they fit */
        for (int k = 0; k < n; k++) {
            size_t want = 0;
            assert_int_equal(spqr_packed_section_bytes(&g, s[k].name, q.n_outliers, &want), SPQR_OK);
            assert_int_equal(want, s[k].bytes);
            if (s[k].bytes) assert_int_equal((uintptr_t)s[k].data % 64, 0);
            total += s[k].bytes;
        }
        assert_int_equal(total, spqr_packed_bytes(&p));
        assert_int_equal(spqr_packed_from_sections(&g, s, n, &p2), SPQR_OK);
        assert_int_equal(spqr_unpack(&p2, &v), SPQR_OK);
        assert_same_layer(&q, &v);
        spqr_packed_free(&p2);
        spqr_packed_free(&p);
        spqr_qlayer_free(&q);
        spqr_qlayer_free(&u);
        spqr_qlayer_free(&v);
    }
}

/* Files of model layout 1 store the outlier counts in the index width (ocw
 * = 0): such sections still read, and give the same layer. */
static void test_layout1_counts(void **state) {
    (void)state;
    tu_seed(21);
    const cfg c = {37, 70, 3, 16, 16, 3, 3, 0.08};
    spqr_qlayer q, u;
    ql_random(&q, &c);
    spqr_packed p, p1;
    assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
    spqr_packed_geom g;
    spqr_packed_geometry(&p, &g);
    assert_int_equal(g.ocw, 1);
    spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS];
    int n = spqr_packed_sections(&p, s, SPQR_PACKED_MAX_SECTIONS);
    uint16_t *wide = calloc((size_t)q.rows, sizeof *wide);
    for (int k = 0; k < n; k++)
        if (!strcmp(s[k].name, "ol_count")) {
            for (int r = 0; r < q.rows; r++) wide[r] = ((const uint8_t *)s[k].data)[r];
            s[k].data = wide;
            s[k].bytes = (size_t)q.rows * 2;
        }
    g.ocw = 0;
    assert_int_equal(spqr_packed_from_sections(&g, s, n, &p1), SPQR_OK);
    assert_int_equal(spqr_unpack(&p1, &u), SPQR_OK);
    assert_same_layer(&q, &u);
    g.ocw = 3; /* not a width */
    assert_int_equal(spqr_packed_from_sections(&g, s, n, &(spqr_packed){0}), SPQR_ERR_FORMAT);
    spqr_packed_free(&p1);
    spqr_packed_free(&p);
    spqr_qlayer_free(&u);
    spqr_qlayer_free(&q);
    free(wide);
}

/* Paper formula bits (wbits + (sbits+zbits)/beta1 + 64/(beta1*beta2) + 32 * outlier share) vs packed bytes. */
static void test_size_budget(void **state) {
    (void)state;
    tu_seed(12);
    const cfg cs[] = {{512, 512, 4, 16, 16, 3, 3, 0.01}, {512, 512, 3, 16, 16, 3, 3, 0.01},
                      {4096, 4096, 4, 16, 16, 3, 3, 0.01}};
    for (int i = 0; i < 3; i++) {
        spqr_qlayer q;
        ql_random(&q, &cs[i]);
        spqr_packed p;
        assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
        const double nw = (double)q.rows * q.cols;
        const double bits = q.wbits + (double)(q.sbits + q.zbits) / q.beta1 + 64.0 / (q.beta1 * q.beta2) +
                            32.0 * (double)q.n_outliers / nw;
        const double formula = bits * nw / 8.0, got = (double)spqr_packed_bytes(&p);
        printf("  size %dx%d w%d: packed %.0f bytes, formula %.0f bytes, ratio %.4f\n", q.rows, q.cols, q.wbits, got,
               formula, got / formula);
        assert_true(got <= 1.02 * formula);
        spqr_packed_free(&p);
        spqr_qlayer_free(&q);
    }
}

static void test_pack_rejects(void **state) {
    (void)state;
    tu_seed(13);
    const cfg c = {20, 40, 4, 16, 16, 3, 3, 0.1};
    spqr_qlayer q;
    ql_random(&q, &c);
    spqr_packed p;
    q.codes[5] = 16; /* out of range for 4 bits */
    assert_int_equal(spqr_pack(&q, &p), SPQR_ERR_INVALID_ARG);
    q.codes[5] = 15;
    int32_t t = q.perm[1];
    q.perm[1] = q.perm[0];
    assert_int_equal(spqr_pack(&q, &p), SPQR_ERR_INVALID_ARG);
    q.perm[1] = t;
    q.ngroups++;
    assert_int_equal(spqr_pack(&q, &p), SPQR_ERR_INVALID_ARG);
    q.ngroups--;
    assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
    spqr_packed_free(&p);
    spqr_packed_free(NULL);
    spqr_qlayer_free(&q);
}

/* ---- from_sections validation ------------------------------------------------------- */

typedef struct secs {
    spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS];
    void *buf[SPQR_PACKED_MAX_SECTIONS];
    int n;
} secs;

static void secs_copy(secs *d, const spqr_packed *p) {
    d->n = spqr_packed_sections(p, d->s, SPQR_PACKED_MAX_SECTIONS);
    for (int i = 0; i < d->n; i++) {
        d->buf[i] = spqr_aligned_alloc(d->s[i].bytes + 64);
        assert_non_null(d->buf[i]);
        memset(d->buf[i], 0, d->s[i].bytes + 64);
        if (d->s[i].bytes) memcpy(d->buf[i], d->s[i].data, d->s[i].bytes);
        d->s[i].data = d->buf[i];
    }
}

static void secs_free(secs *d) {
    for (int i = 0; i < d->n; i++) free(d->buf[i]);
}

static int sec_index(const secs *d, const char *name) {
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->s[i].name, name) == 0) return i;
    fail_msg("no section %s", name);
    return -1;
}

static void expect_format_error(const spqr_packed_geom *g, const secs *d, const char *what) {
    spqr_packed p;
    spqr_status st = spqr_packed_from_sections(g, d->s, d->n, &p);
    if (st != SPQR_ERR_FORMAT) {
        print_error("%s: expected a format error, got %d\n", what, (int)st);
        if (st == SPQR_OK) spqr_packed_free(&p);
        fail();
    }
    assert_true(strlen(spqr_last_error()) > 0);
}

static void test_from_sections_rejects(void **state) {
    (void)state;
    tu_seed(14);
    const cfg c = {37, 70, 3, 16, 16, 3, 3, 0.08};
    spqr_qlayer q;
    ql_random(&q, &c);
    assert_true(q.n_outliers >= 4);
    spqr_packed p;
    assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
    spqr_packed_geom g;
    spqr_packed_geometry(&p, &g);
    secs d;
    secs_copy(&d, &p);
    {
        spqr_packed ok;
        assert_int_equal(spqr_packed_from_sections(&g, d.s, d.n, &ok), SPQR_OK);
        spqr_packed_free(&ok);
    }
    /* sizes */
    static const char *const names[] = {"codes", "stat_codes", "stats2", "perm", "ol_count", "ol_val"};
    for (int k = 0; k < 6; k++) {
        int i = sec_index(&d, names[k]);
        d.s[i].bytes -= 2;
        expect_format_error(&g, &d, names[k]);
        d.s[i].bytes += 4;
        expect_format_error(&g, &d, names[k]);
        d.s[i].bytes -= 2;
    }
    int ic = sec_index(&d, "ol_col");
    d.s[ic].bytes += 1;
    expect_format_error(&g, &d, "odd ol_col");
    d.s[ic].bytes += 1; /* one more outlier than ol_val / counts say */
    expect_format_error(&g, &d, "ol_col size");
    d.s[ic].bytes -= 2;
    /* geometry */
    spqr_packed_geom bad = g;
    bad.wbits = 9;
    expect_format_error(&bad, &d, "wbits");
    bad = g;
    bad.cols = 71;
    expect_format_error(&bad, &d, "cols");
    bad = g;
    bad.beta1 = 0;
    expect_format_error(&bad, &d, "beta1");
    bad = g;
    bad.beta2 = 0; /* stat kind changes: sections no longer apply */
    expect_format_error(&bad, &d, "beta2");
    bad = g;
    bad.sbits = 0;
    expect_format_error(&bad, &d, "sbits");
    /* outlier columns */
    uint16_t *col = d.buf[ic];
    uint16_t save = col[0];
    col[0] = 70;
    expect_format_error(&g, &d, "column == cols");
    col[0] = 65535;
    expect_format_error(&g, &d, "column huge");
    col[0] = save;
    /* find a row with >= 2 outliers: make it non-ascending */
    int64_t k2 = -1;
    for (int r = 0; r < q.rows && k2 < 0; r++)
        if (q.row_ptr[r + 1] - q.row_ptr[r] >= 2) k2 = q.row_ptr[r];
    assert_true(k2 >= 0);
    uint16_t a = col[k2], b = col[k2 + 1];
    col[k2 + 1] = a;
    expect_format_error(&g, &d, "duplicate column");
    col[k2] = b;
    col[k2 + 1] = a;
    expect_format_error(&g, &d, "descending column");
    col[k2] = a;
    col[k2 + 1] = b;
    /* counts */
    assert_int_equal(g.ocw, 1); /* one-byte counts */
    uint8_t *cnt = d.buf[sec_index(&d, "ol_count")];
    cnt[0]++;
    expect_format_error(&g, &d, "count sum +1");
    cnt[0]--;
    cnt[1] = 200;
    expect_format_error(&g, &d, "count > cols");
    cnt[1] = (uint8_t)(q.row_ptr[2] - q.row_ptr[1]);
    /* perm */
    uint16_t *perm = d.buf[sec_index(&d, "perm")];
    uint16_t p0 = perm[0];
    perm[0] = perm[5];
    expect_format_error(&g, &d, "perm duplicate");
    perm[0] = 70;
    expect_format_error(&g, &d, "perm out of range");
    perm[0] = p0;
    /* section list */
    secs e = d;
    e.n = d.n - 1;
    expect_format_error(&g, &e, "missing section");
    e = d;
    e.s[e.n++] = d.s[0];
    expect_format_error(&g, &e, "duplicate section");
    e = d;
    e.s[0].name = "bogus";
    expect_format_error(&g, &e, "unknown section");
    e = d;
    e.s[0].data = (const char *)e.s[0].data + 2;
    expect_format_error(&g, &e, "misaligned");
    e = d;
    e.s[0].data = NULL;
    expect_format_error(&g, &e, "null data");
    /* still fine after all the restores */
    {
        spqr_packed ok;
        assert_int_equal(spqr_packed_from_sections(&g, d.s, d.n, &ok), SPQR_OK);
        spqr_qlayer u;
        assert_int_equal(spqr_unpack(&ok, &u), SPQR_OK);
        assert_same_layer(&q, &u);
        spqr_qlayer_free(&u);
        spqr_packed_free(&ok);
    }
    secs_free(&d);
    spqr_packed_free(&p);
    spqr_qlayer_free(&q);
}

/* uint32 indices: cols > 65535 */
static void test_wide(void **state) {
    (void)state;
    tu_seed(15);
    const cfg c = {5, 65537, 3, 16, 16, 3, 3, 0.002};
    spqr_qlayer q, u;
    ql_random(&q, &c);
    spqr_packed p;
    assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
    assert_int_equal(p.wide, 1);
    assert_int_equal(spqr_unpack(&p, &u), SPQR_OK);
    assert_same_layer(&q, &u);
    float *w = ql_dense(&q), *X = tu_rand_vec((size_t)2 * c.cols);
    float *y = xmalloc(2 * (size_t)c.rows * sizeof(float)), *yr = xmalloc(2 * (size_t)c.rows * sizeof(float));
    assert_int_equal(spqr_qgemm_ref(&p, X, 2, yr), SPQR_OK);
    check_close(w, X, 2, c.rows, c.cols, yr, NULL, "wide ref");
    static const char *const v[] = {"avx2", "avx512"};
    for (int i = 0; i < 2; i++) {
        if (!spqr_kernel_supported(v[i])) continue;
        assert_int_equal(spqr_kernel_force(v[i]), SPQR_OK);
        assert_int_equal(spqr_qgemm(&p, X, 2, y), SPQR_OK);
        check_close(w, X, 2, c.rows, c.cols, y, yr, v[i]);
    }
    spqr_kernel_force(NULL);
    free(w);
    free(X);
    free(y);
    free(yr);
    spqr_packed_free(&p);
    spqr_qlayer_free(&q);
    spqr_qlayer_free(&u);
}

/* ---- kernels ----------------------------------------------------------------------- */

static const int k_ntoks[] = {1, 3, 17, 64};

/* The reference kernel against an explicit dense product. */
static void test_ref_vs_dense(void **state) {
    (void)state;
    tu_seed(21);
    for (int i = 0; i < N_CASES; i++) {
        const cfg *c = &k_cases[i];
        spqr_qlayer q;
        ql_random(&q, c);
        spqr_packed p;
        assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
        float *w = ql_dense(&q);
        const int nt = k_ntoks[i % 4];
        float *X = tu_rand_vec((size_t)nt * c->cols), *y = xmalloc((size_t)nt * c->rows * sizeof(float));
        assert_int_equal(spqr_qgemm_ref(&p, X, nt, y), SPQR_OK);
        char what[96];
        snprintf(what, sizeof what, "ref case %d (%dx%d)", i, c->rows, c->cols);
        check_close(w, X, nt, c->rows, c->cols, y, NULL, what);
        free(w);
        free(X);
        free(y);
        spqr_packed_free(&p);
        spqr_qlayer_free(&q);
    }
}

static void test_variants(void **state) {
    (void)state;
    static const char *const variants[] = {"avx2", "avx512", "auto"};
    tu_seed(22);
    for (int i = 0; i < N_CASES; i++) {
        const cfg *c = &k_cases[i];
        spqr_qlayer q;
        ql_random(&q, c);
        spqr_packed p;
        assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
        float *w = ql_dense(&q);
        const int64_t work = (int64_t)c->rows * c->cols;
        for (int ti = 0; ti < 4; ti++) {
            const int nt = k_ntoks[ti];
            if (work * nt > (int64_t)24 << 20 && nt > 3) continue; /* keep the test fast */
            float *X = tu_rand_vec((size_t)nt * c->cols);
            float *yr = xmalloc((size_t)nt * c->rows * sizeof(float));
            float *y = xmalloc((size_t)nt * c->rows * sizeof(float));
            assert_int_equal(spqr_qgemm_ref(&p, X, nt, yr), SPQR_OK);
            for (int v = 0; v < 3; v++) {
                if (v < 2 && !spqr_kernel_supported(variants[v])) continue;
                assert_int_equal(spqr_kernel_force(variants[v]), SPQR_OK);
                memset(y, 0xff, (size_t)nt * c->rows * sizeof(float)); /* NaN: every output must be written */
                assert_int_equal(spqr_qgemm(&p, X, nt, y), SPQR_OK);
                char what[128];
                snprintf(what, sizeof what, "%s case %d (%dx%d w%d b1=%d b2=%d) n_tok %d", variants[v], i, c->rows,
                         c->cols, c->wbits, c->beta1, c->beta2, nt);
                check_close(w, X, nt, c->rows, c->cols, y, yr, what);
            }
            free(X);
            free(yr);
            free(y);
        }
        free(w);
        spqr_packed_free(&p);
        spqr_qlayer_free(&q);
    }
    /* more tokens than one pass (SPQR_QG_TB = 64) */
    {
        const cfg c = {40, 100, 4, 16, 16, 3, 3, 0.02};
        spqr_qlayer q;
        ql_random(&q, &c);
        spqr_packed p;
        assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
        float *w = ql_dense(&q);
        const int nt = 131;
        float *X = tu_rand_vec((size_t)nt * c.cols), *yr = xmalloc((size_t)nt * c.rows * sizeof(float));
        float *y = xmalloc((size_t)nt * c.rows * sizeof(float));
        assert_int_equal(spqr_qgemm_ref(&p, X, nt, yr), SPQR_OK);
        for (int v = 0; v < 3; v++) {
            if (v < 2 && !spqr_kernel_supported(variants[v])) continue;
            assert_int_equal(spqr_kernel_force(variants[v]), SPQR_OK);
            assert_int_equal(spqr_qgemm(&p, X, nt, y), SPQR_OK);
            check_close(w, X, nt, c.rows, c.cols, y, yr, "131 tokens");
        }
        free(w);
        free(X);
        free(yr);
        free(y);
        spqr_packed_free(&p);
        spqr_qlayer_free(&q);
    }
    spqr_kernel_force(NULL);
    spqr_kernel_scratch_release();
}

static void test_kernel_api(void **state) {
    (void)state;
    assert_int_equal(spqr_kernel_force("bogus"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_kernel_force("ref"), SPQR_OK);
    assert_string_equal(spqr_kernel_name(), "ref");
    assert_true(spqr_kernel_supported("ref"));
    assert_false(spqr_kernel_supported("bogus"));
    assert_int_equal(spqr_kernel_force("auto"), SPQR_OK);
    printf("  kernel variant (auto): %s\n", spqr_kernel_name());
    const cfg c = {16, 16, 4, 16, 16, 3, 3, 0.0};
    spqr_qlayer q;
    tu_seed(3);
    ql_random(&q, &c);
    spqr_packed p;
    assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
    float x[16] = {0}, y[16];
    assert_int_equal(spqr_qgemm(&p, x, 0, y), SPQR_OK);
    assert_int_equal(spqr_qgemm(&p, x, -1, y), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qgemm(NULL, x, 1, y), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_dense_gemv(SPQR_DT_U8, x, 1, 1, x, y), SPQR_ERR_INVALID_ARG);
    spqr_packed_free(&p);
    spqr_qlayer_free(&q);
}

static void test_dense_gemv(void **state) {
    (void)state;
    static const int shapes[][2] = {{1, 1}, {7, 17}, {33, 100}, {16, 4097}, {4097, 31}, {300, 512}};
    static const spqr_dtype dts[] = {SPQR_DT_F32, SPQR_DT_BF16, SPQR_DT_F16};
    static const char *const variants[] = {"ref", "avx2", "avx512"};
    tu_seed(31);
    for (int s = 0; s < 6; s++) {
        const int R = shapes[s][0], C = shapes[s][1];
        float *w = tu_rand_vec((size_t)R * C), *x = tu_rand_vec((size_t)C);
        uint16_t *h = xmalloc((size_t)R * C * 2);
        float *y = xmalloc((size_t)R * sizeof(float));
        for (int d = 0; d < 3; d++) {
            const void *wp = w;
            if (dts[d] != SPQR_DT_F32) {
                for (size_t i = 0; i < (size_t)R * C; i++) {
                    h[i] = dts[d] == SPQR_DT_BF16 ? spqr_f32_to_bf16(w[i]) : spqr_f32_to_f16(w[i]);
                    w[i] = dts[d] == SPQR_DT_BF16 ? spqr_bf16_to_f32(h[i]) : spqr_f16_to_f32(h[i]);
                }
                wp = h;
            }
            for (int v = 0; v < 3; v++) {
                if (!spqr_kernel_supported(variants[v])) continue;
                assert_int_equal(spqr_kernel_force(variants[v]), SPQR_OK);
                memset(y, 0xff, (size_t)R * sizeof(float));
                assert_int_equal(spqr_dense_gemv(dts[d], wp, R, C, x, y), SPQR_OK);
                char what[96];
                snprintf(what, sizeof what, "gemv %s %s %dx%d", variants[v], spqr_dtype_name(dts[d]), R, C);
                check_close(w, x, 1, R, C, y, NULL, what);
            }
        }
        free(w);
        free(x);
        free(h);
        free(y);
    }
    spqr_kernel_force(NULL);
}

/* log-sum-exp + argmax of logit rows: every variant against the reference
 * on awkward lengths, wide ranges (terms far below the maximum underflow),
 * ties (first index wins) and a row whose maximum is in the scalar tail. */
static void test_logsumexp(void **state) {
    (void)state;
    static const int64_t lens[] = {1, 2, 7, 15, 16, 17, 33, 1000, 32000, 32001};
    static const char *const variants[] = {"ref", "avx2", "avx512"};
    tu_seed(77);
    for (int li = 0; li < 10; li++) {
        const int64_t n = lens[li];
        float *x = tu_rand_vec((size_t)n);
        for (int pass = 0; pass < 4; pass++) {
            for (int64_t i = 0; i < n; i++) {
                if (pass == 1) x[i] *= 40.0f;                /* terms down to e^-200: underflow    */
                if (pass == 2) x[i] = (float)(i % 3);        /* ties: the first maximum is index 2 */
                if (pass == 3) x[i] = -1.0f - (float)i * 1e-3f;
            }
            if (pass == 3) x[n - 1] = 5.0f; /* the maximum in the tail */
            /* the definition in double */
            double mx = x[0], s = 0;
            int am = 0;
            for (int64_t i = 1; i < n; i++)
                if (x[i] > mx) mx = x[i], am = (int)i;
            for (int64_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
            const double want = log(s) + mx;
            for (int v = 0; v < 3; v++) {
                if (!spqr_kernel_supported(variants[v])) continue;
                assert_int_equal(spqr_kernel_force(variants[v]), SPQR_OK);
                int got_am = -1;
                const double got = spqr_logsumexp(x, n, &got_am);
                if (!(fabs(got - want) <= 1e-6 * (1 + fabs(want))) || got_am != am)
                    fail_msg("logsumexp %s n=%lld pass %d: %.9g (argmax %d), want %.9g (argmax %d)", variants[v],
                             (long long)n, pass, got, got_am, want, am);
            }
        }
        free(x);
    }
    spqr_kernel_force(NULL);
}

/* ---- registered formats through the container -------------------------------- */

typedef struct {
    spqr_container *c;
    const char *base;
} find_ctx;

static spqr_status find_sec(void *ctx, const char *name, spqr_qsection *out) {
    const find_ctx *f = ctx;
    char full[256];
    snprintf(full, sizeof full, "%s.%s", f->base, name);
    spqr_ctensor t;
    spqr_status st = spqr_container_find(f->c, full, &t);
    if (!st) *out = (spqr_qsection){name, t.dtype, t.data, t.nbytes};
    return st;
}

/* Write payload's sections as 1-D tensors (dims = bytes / dtype size, as the
 * model writer does), read them back through the format's open, and compare
 * the dequantized weights. */
static void file_roundtrip(const spqr_qformat *fmt, const void *payload, int rows, int cols, const char *geometry) {
    char path[4200];
    snprintf(path, sizeof path, "%s/fmt.spqr", tu_tmpdir());
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
    spqr_qsection sec[SPQR_QFORMAT_MAX_SECTIONS];
    int n = fmt->sections(payload, sec, SPQR_QFORMAT_MAX_SECTIONS);
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "L.%s", sec[i].name);
        uint64_t d = sec[i].bytes / spqr_dtype_size(sec[i].dtype);
        spqr_status st = spqr_cwriter_add(w, name, sec[i].dtype, 1, &d, sec[i].data, sec[i].bytes);
        if (st) fprintf(stderr, "%s\n", spqr_last_error());
        assert_int_equal(st, SPQR_OK); /* every section's size is a whole number of its elements */
    }
    cJSON *geom = cJSON_CreateObject();
    assert_int_equal(fmt->write_geometry(payload, geom), SPQR_OK);
    assert_int_equal(spqr_cwriter_set_metadata(w, geometry), SPQR_OK);
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
    find_ctx f = {c, "L"};
    void *back = NULL;
    spqr_status st = fmt->open(geom, rows, cols, find_sec, &f, &back);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    assert_int_equal(fmt->bytes(back), fmt->bytes(payload));
    float *a = xmalloc(sizeof(float) * (size_t)rows * cols), *b = xmalloc(sizeof(float) * (size_t)rows * cols);
    assert_int_equal(fmt->dequantize(payload, a), SPQR_OK);
    assert_int_equal(fmt->dequantize(back, b), SPQR_OK);
    assert_memory_equal(a, b, sizeof(float) * (size_t)rows * cols);
    free(a);
    free(b);
    fmt->free(back);
    cJSON_Delete(geom);
    spqr_container_close(c);
}

static void test_format_file_roundtrip(void **state) {
    (void)state;
    tu_seed(11);
    const spqr_qformat *fmt = spqr_qformat_find("spqr");
    assert_non_null(fmt);
    /* odd row counts (1-byte outlier counts that are not a whole number of
     * index-width elements), partial tiles and groups, fp16 statistics, wide
     * indices */
    const cfg cases[] = {{17, 40, 3, 16, 16, 3, 3, 0.05}, {7, 33, 4, 8, 0, 0, 0, 0.1},
                         {1, 1, 2, 1, 1, 1, 1, 0.5},      {3, 65600, 4, 128, 16, 3, 3, 0.001}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        spqr_qlayer q;
        ql_random(&q, &cases[k]);
        spqr_packed *pk = calloc(1, sizeof *pk);
        assert_int_equal(spqr_pack(&q, pk), SPQR_OK);
        file_roundtrip(fmt, pk, q.rows, q.cols, "{}");
        float *a = xmalloc(sizeof(float) * (size_t)q.rows * q.cols), *b = xmalloc(sizeof(float) * (size_t)q.rows * q.cols);
        spqr_qlayer_dequantize(&q, a);
        assert_int_equal(fmt->dequantize(pk, b), SPQR_OK); /* the format's definition is qlayer.h's */
        assert_memory_equal(a, b, sizeof(float) * (size_t)q.rows * q.cols);
        free(a);
        free(b);
        fmt->free(pk);
        spqr_qlayer_free(&q);
    }
    /* the dense format, f16 and bf16 with odd sizes */
    const spqr_dtype dts[] = {SPQR_DT_F16, SPQR_DT_BF16, SPQR_DT_F32};
    for (size_t k = 0; k < 3; k++) {
        const int R = 5, C = 7;
        uint16_t h[35];
        float f[35];
        for (int i = 0; i < R * C; i++) {
            f[i] = tu_rand_normal();
            h[i] = dts[k] == SPQR_DT_F16 ? spqr_f32_to_f16(f[i]) : spqr_f32_to_bf16(f[i]);
        }
        spqr_dense d = {dts[k] == SPQR_DT_F32 ? (const void *)f : (const void *)h, dts[k], R, C};
        file_roundtrip(&spqr_qformat_dense, &d, R, C, "{}");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_roundtrip),    cmocka_unit_test(test_layout1_counts),
        cmocka_unit_test(test_size_budget),
        cmocka_unit_test(test_pack_rejects),      cmocka_unit_test(test_from_sections_rejects),
        cmocka_unit_test(test_wide),              cmocka_unit_test(test_ref_vs_dense),
        cmocka_unit_test(test_variants),          cmocka_unit_test(test_kernel_api),
        cmocka_unit_test(test_dense_gemv),        cmocka_unit_test(test_format_file_roundtrip),
        cmocka_unit_test(test_logsumexp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
