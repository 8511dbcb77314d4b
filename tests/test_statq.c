/* test_statq.c - the quantizers of SpQR's bilevel statistics
 * (--stat-quantizer minmax|uniform|kmeans, qlayer.h / packed.h): the layout
 * of every variant (pack/unpack, section sizes, formula bits), the CPU kernels
 * (scalar reference, AVX2, AVX-512) against the definition, the file round
 * trip, refusal of bad variant values, the training hooks, the quantizers'
 * error bounds and the engine. The GPU layout of the variants is checked on
 * the host by test_gpu_layout.c.
 *
 * Kernel tolerance (as test_kernels.c): |y - yref| <= 1e-5 * sum_c |w||x|.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "format/qformat.h"
#include "formats/spqr/cpu/qgemm.h"
#include "formats/spqr/packed.h"
#include "io/container.h"
#include "kernels/cpu/cpu.h"
#include "quant/spqr/quant_internal.h"

static uint32_t rnd(uint32_t n) { return (uint32_t)(tu_rand_u64() % n); }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

typedef struct cfg {
    int rows, cols, wbits, beta1, beta2, sbits, zbits;
    double ol;
} cfg;

/* awkward sizes: partial tiles, groups and row blocks, row blocks that are
 * not whole tiles, 1- and 8-bit statistics (256 centroids) */
static const cfg k_cases[] = {
    {17, 40, 3, 16, 16, 3, 3, 0.05}, {33, 100, 4, 16, 32, 3, 3, 0.02}, {40, 520, 3, 32, 16, 4, 4, 0.01},
    {5, 77, 2, 8, 3, 2, 5, 0.1},     {70, 300, 5, 12, 48, 8, 8, 0.02}, {16, 64, 4, 16, 16, 1, 1, 0.0},
    {48, 96, 8, 96, 16, 3, 2, 0.03},
};
#define N_CASES ((int)(sizeof k_cases / sizeof *k_cases))

/* A random layer with statistics quantizer sq. */
static void ql_random(spqr_qlayer *q, const cfg *c, int sq) {
    assert_int_equal(spqr_qlayer_alloc(q, c->rows, c->cols, c->wbits, c->beta1, c->beta2, c->sbits, c->zbits), SPQR_OK);
    const int R = c->rows, C = c->cols, G = q->ngroups;
    for (int j = C - 1; j > 0; j--) {
        const int k = (int)rnd((uint32_t)j + 1);
        const int32_t t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    for (size_t i = 0; i < (size_t)R * C; i++) q->codes[i] = (uint8_t)rnd(1u << c->wbits);
    const float qmax = (float)((1 << c->wbits) - 1);
    for (size_t i = 0; i < (size_t)G * R; i++) {
        q->scale_code[i] = (uint8_t)rnd(1u << c->sbits);
        q->zero_code[i] = (uint8_t)rnd(1u << c->zbits);
    }
    tu_spqr_random_stats2(q);
    assert_int_equal(spqr_qlayer_set_statq(q, sq), SPQR_OK);
    if (sq == SPQR_SQ_KMEANS) {
        for (int i = 0; i < (1 << c->sbits); i++) q->cb_scale[i] = spqr_f32_to_f16(0.001f + 0.03f * tu_rand_uniform());
        for (int i = 0; i < (1 << c->zbits); i++) q->cb_zero[i] = spqr_f32_to_f16(qmax * tu_rand_uniform());
    }
    tu_spqr_random_outliers(q, c->ol, 0.2f);
    assert_int_equal(spqr_qlayer_validate(q), SPQR_OK);
}

/* Dense weights [rows][cols], original column order, written out from the
 * definition (qlayer.h) independently of qlayer.c / packed.h. */
static float *def_dense(const spqr_qlayer *q) {
    const int R = q->rows, C = q->cols;
    float *w = xmalloc((size_t)R * C * sizeof(float));
    const float ms = 0.5f * (float)((1 << q->sbits) - 1), mz = 0.5f * (float)((1 << q->zbits) - 1);
    for (int r = 0; r < R; r++) {
        uint32_t k = q->row_ptr[r];
        for (int j = 0; j < C; j++) {
            const int g = j / q->beta1;
            const size_t i = (size_t)g * R + r, i2 = (size_t)g * q->nrb + (size_t)(r / q->beta2);
            float scale, zero;
            if (q->sq == SPQR_SQ_KMEANS) {
                scale = spqr_f16_to_f32(q->cb_scale[q->scale_code[i]]);
                zero = spqr_f16_to_f32(q->cb_zero[q->zero_code[i]]);
            } else if (q->sq == SPQR_SQ_UNIFORM) {
                scale = spqr_f16_to_f32(q->s2_scale[i2]) * ((float)q->scale_code[i] - ms);
                zero = spqr_f16_to_f32(q->z2_scale[i2]) * ((float)q->zero_code[i] - mz);
            } else {
                scale = spqr_f16_to_f32(q->s2_scale[i2]) * ((float)q->scale_code[i] - spqr_f16_to_f32(q->s2_zero[i2]));
                zero = spqr_f16_to_f32(q->z2_scale[i2]) * ((float)q->zero_code[i] - spqr_f16_to_f32(q->z2_zero[i2]));
            }
            float v = scale * ((float)q->codes[(size_t)r * C + j] - zero);
            if (k < q->row_ptr[r + 1] && q->ol_col[k] == (uint32_t)j) v = v + spqr_f16_to_f32(q->ol_val[k++]);
            w[(size_t)r * C + q->perm[j]] = v;
        }
    }
    return w;
}

static void check_close(const float *w, const float *X, int nt, int R, int C, const float *y, const float *yr,
                        const char *what) {
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < R; r++) {
            double mag = 0.0;
            for (int c = 0; c < C; c++) mag += fabs((double)w[(size_t)r * C + c] * X[(size_t)t * C + c]);
            const double got = y[(size_t)t * R + r], want = yr[(size_t)t * R + r];
            if (!(fabs(got - want) <= 1e-5 * mag + 1e-30))
                fail_msg("%s: y[%d][%d] = %.9g, want %.9g (sum |w x| %.3g)", what, t, r, got, want, mag);
        }
}

static size_t expected_stats2_bytes(const spqr_qlayer *q) {
    if (q->sq == SPQR_SQ_KMEANS) return 2 * (((size_t)1 << q->sbits) + ((size_t)1 << q->zbits));
    return (size_t)q->nrb * q->ngroups * (q->sq == SPQR_SQ_UNIFORM ? 4 : 8);
}

static size_t section_bytes(const spqr_packed *p, const char *name) {
    spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS];
    const int n = spqr_packed_sections(p, s, SPQR_PACKED_MAX_SECTIONS);
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, name)) return s[i].bytes;
    fail_msg("no section %s", name);
    return 0;
}

/* ---- layout and kernels ---------------------------------------------------- */

static void test_layout_and_kernels(void **state) {
    (void)state;
    static const char *const variants[] = {"avx2", "avx512", "auto"};
    static const int ntoks[] = {1, 3, 17, 70};
    const spqr_qformat *fmt = spqr_qformat_find("spqr");
    assert_non_null(fmt);
    tu_seed(31);
    int simd_runs = 0;
    for (int sq = 0; sq < SPQR_SQ_COUNT; sq++)
        for (int ci = 0; ci < N_CASES; ci++) {
            const cfg *c = &k_cases[ci];
            spqr_qlayer q, u;
            ql_random(&q, c, sq);
            spqr_packed p;
            assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
            assert_int_equal(p.sq, sq);
            /* unpack gives back exactly what was packed */
            assert_int_equal(spqr_unpack(&p, &u), SPQR_OK);
            assert_int_equal(u.sq, sq);
            const size_t ns = (size_t)q.ngroups * q.rows, n2 = (size_t)q.ngroups * q.nrb;
            assert_memory_equal(u.scale_code, q.scale_code, ns);
            assert_memory_equal(u.zero_code, q.zero_code, ns);
            if (sq != SPQR_SQ_KMEANS) {
                assert_memory_equal(u.s2_scale, q.s2_scale, 2 * n2);
                assert_memory_equal(u.s2_zero, q.s2_zero, 2 * n2);
                assert_memory_equal(u.z2_scale, q.z2_scale, 2 * n2);
                assert_memory_equal(u.z2_zero, q.z2_zero, 2 * n2);
            } else {
                assert_memory_equal(u.cb_scale, q.cb_scale, 2u << c->sbits);
                assert_memory_equal(u.cb_zero, q.cb_zero, 2u << c->zbits);
            }
            assert_int_equal(spqr_qlayer_validate(&u), SPQR_OK);
            spqr_qlayer_free(&u);
            /* sizes: the section holds exactly the variant's values, the formula counts them */
            assert_int_equal(section_bytes(&p, "stats2"), expected_stats2_bytes(&q));
            const double n = (double)c->rows * c->cols;
            const double second = sq == SPQR_SQ_KMEANS  ? 16.0 * ((1 << c->sbits) + (1 << c->zbits)) / n
                                  : sq == SPQR_SQ_UNIFORM ? 32.0 / ((double)c->beta1 * c->beta2)
                                                          : 64.0 / ((double)c->beta1 * c->beta2);
            const double want_bits = c->wbits + (double)(c->sbits + c->zbits) / c->beta1 + second +
                                     32.0 * (double)q.n_outliers / n;
            assert_true(fabs(spqr_qlayer_formula_bits(&q) - want_bits) < 1e-12);
            assert_true(fabs(fmt->formula_bits(&p) - want_bits) < 1e-12);
            /* the definition: written out here, qlayer.c, the format's dequantize */
            float *w = def_dense(&q);
            float *w2 = xmalloc(sizeof(float) * (size_t)c->rows * c->cols);
            spqr_qlayer_dequantize(&q, w2);
            assert_memory_equal(w, w2, sizeof(float) * (size_t)c->rows * c->cols);
            assert_int_equal(fmt->dequantize(&p, w2), SPQR_OK);
            assert_memory_equal(w, w2, sizeof(float) * (size_t)c->rows * c->cols);
            free(w2);
            /* kernels */
            for (int ti = 0; ti < 4; ti++) {
                const int nt = ntoks[ti];
                float *X = tu_rand_vec((size_t)nt * c->cols);
                float *yr = xmalloc((size_t)nt * c->rows * sizeof(float)), *y = xmalloc((size_t)nt * c->rows * sizeof(float));
                double *yd = xmalloc((size_t)nt * c->rows * sizeof(double));
                float *ydf = xmalloc((size_t)nt * c->rows * sizeof(float));
                assert_int_equal(spqr_qgemm_ref(&p, X, nt, yr), SPQR_OK);
                for (int t = 0; t < nt; t++)
                    for (int r = 0; r < c->rows; r++) {
                        double a = 0;
                        for (int cc = 0; cc < c->cols; cc++)
                            a += (double)w[(size_t)r * c->cols + cc] * X[(size_t)t * c->cols + cc];
                        ydf[(size_t)t * c->rows + r] = (float)a;
                    }
                char what[160];
                snprintf(what, sizeof what, "%s ref case %d (%dx%d w%d b1=%d b2=%d s%d/z%d) n_tok %d", spqr_statq_name(sq),
                         ci, c->rows, c->cols, c->wbits, c->beta1, c->beta2, c->sbits, c->zbits, nt);
                check_close(w, X, nt, c->rows, c->cols, yr, ydf, what);
                for (int v = 0; v < 3; v++) {
                    if (v < 2 && !spqr_kernel_supported(variants[v])) continue;
                    assert_int_equal(spqr_kernel_force(variants[v]), SPQR_OK);
                    memset(y, 0xff, (size_t)nt * c->rows * sizeof(float));
                    assert_int_equal(spqr_qgemm(&p, X, nt, y), SPQR_OK);
                    snprintf(what, sizeof what, "%s %s case %d (%dx%d w%d b1=%d b2=%d s%d/z%d) n_tok %d",
                             spqr_statq_name(sq), variants[v], ci, c->rows, c->cols, c->wbits, c->beta1, c->beta2,
                             c->sbits, c->zbits, nt);
                    check_close(w, X, nt, c->rows, c->cols, y, yr, what);
                    if (v < 2) simd_runs++;
                }
                spqr_kernel_force(NULL);
                free(X), free(yr), free(y), free(yd), free(ydf);
            }
            free(w);
            spqr_packed_free(&p);
            spqr_qlayer_free(&q);
        }
    printf("statistics quantizers: %d SIMD kernel runs against the reference\n", simd_runs);
    spqr_kernel_scratch_release();
}

/* spqr_pack refuses a uniform layer whose zeros are not the mid-points (the
 * file could not hold it), and set_statq refuses what cannot be. */
static void test_layout_refusals(void **state) {
    (void)state;
    tu_seed(5);
    spqr_qlayer q;
    ql_random(&q, &k_cases[0], SPQR_SQ_UNIFORM);
    q.s2_zero[0] ^= 1;
    spqr_packed p;
    assert_int_equal(spqr_pack(&q, &p), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qlayer_validate(&q), SPQR_ERR_FORMAT);
    assert_int_equal(spqr_qlayer_set_statq(&q, 3), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qlayer_set_statq(&q, -1), SPQR_ERR_INVALID_ARG);
    spqr_qlayer_free(&q);
    assert_int_equal(spqr_qlayer_alloc(&q, 8, 32, 4, 16, 0, 0, 0), SPQR_OK);
    assert_int_equal(spqr_qlayer_set_statq(&q, SPQR_SQ_UNIFORM), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qlayer_set_statq(&q, SPQR_SQ_KMEANS), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qlayer_set_statq(&q, SPQR_SQ_MINMAX), SPQR_OK);
    spqr_qlayer_free(&q);
    assert_int_equal(spqr_statq_parse("kmeans"), SPQR_SQ_KMEANS);
    assert_int_equal(spqr_statq_parse("Kmeans"), -1);
    assert_null(spqr_statq_name(3));
}

/* ---- the file -------------------------------------------------------------- */

typedef struct find_ctx {
    spqr_container *c;
} find_ctx;

static spqr_status find_sec(void *ctx, const char *name, spqr_qsection *out) {
    find_ctx *f = ctx;
    char full[96];
    snprintf(full, sizeof full, "L.%s", name);
    spqr_ctensor t;
    spqr_status st = spqr_container_find(f->c, full, &t);
    if (!st) *out = (spqr_qsection){name, t.dtype, t.data, t.nbytes};
    return st;
}

/* Write payload's sections to a container file and open it. */
static spqr_container *write_sections(const spqr_qformat *fmt, const void *payload) {
    char path[4200];
    snprintf(path, sizeof path, "%s/statq.spqr", tu_tmpdir());
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
    spqr_qsection sec[SPQR_QFORMAT_MAX_SECTIONS];
    const int n = fmt->sections(payload, sec, SPQR_QFORMAT_MAX_SECTIONS);
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "L.%s", sec[i].name);
        uint64_t d = sec[i].bytes / spqr_dtype_size(sec[i].dtype);
        assert_int_equal(spqr_cwriter_add(w, name, sec[i].dtype, 1, &d, sec[i].data, sec[i].bytes), SPQR_OK);
    }
    assert_int_equal(spqr_cwriter_set_metadata(w, "{}"), SPQR_OK);
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
    return c;
}

static void test_file(void **state) {
    (void)state;
    const spqr_qformat *fmt = spqr_qformat_find("spqr");
    tu_seed(77);
    const cfg c = {33, 100, 3, 16, 16, 3, 4, 0.03};
    for (int sq = 0; sq < SPQR_SQ_COUNT; sq++) {
        spqr_qlayer q;
        ql_random(&q, &c, sq);
        spqr_packed *pk = calloc(1, sizeof *pk);
        assert_non_null(pk);
        assert_int_equal(spqr_pack(&q, pk), SPQR_OK);
        spqr_container *f = write_sections(fmt, pk);
        find_ctx ctx = {f};
        cJSON *geom = cJSON_CreateObject();
        assert_int_equal(fmt->write_geometry(pk, geom), SPQR_OK);
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(geom, "stat_quantizer");
        if (sq == SPQR_SQ_MINMAX) assert_null(k); /* minmax metadata is what it was before the key */
        else assert_string_equal(cJSON_GetStringValue(k), spqr_statq_name(sq));
        void *back = NULL;
        assert_int_equal(fmt->open(geom, c.rows, c.cols, find_sec, &ctx, &back), SPQR_OK);
        assert_int_equal(((spqr_packed *)back)->sq, sq);
        assert_int_equal(fmt->bytes(back), fmt->bytes(pk));
        char d1[128], d2[128];
        fmt->describe(back, d1, sizeof d1);
        snprintf(d2, sizeof d2, "w3 b1=16 b2=16 s3/z4 %s", spqr_statq_name(sq));
        assert_string_equal(d1, d2);
        const size_t nw = (size_t)c.rows * c.cols;
        float *a = xmalloc(nw * sizeof(float)), *b = xmalloc(nw * sizeof(float));
        assert_int_equal(fmt->dequantize(pk, a), SPQR_OK);
        assert_int_equal(fmt->dequantize(back, b), SPQR_OK);
        assert_memory_equal(a, b, nw * sizeof(float));
        float *X = tu_rand_vec((size_t)2 * c.cols), *y1 = xmalloc(2 * c.rows * sizeof(float)),
              *y2 = xmalloc(2 * c.rows * sizeof(float));
        assert_int_equal(fmt->gemm(pk, X, 2, y1), SPQR_OK);
        assert_int_equal(fmt->gemm(back, X, 2, y2), SPQR_OK);
        assert_memory_equal(y1, y2, 2 * c.rows * sizeof(float));
        free(X), free(y1), free(y2), free(a), free(b);
        fmt->free(back);

        /* bad values of the key are refused by name */
        const char *bad[] = {"\"bogus\"", "1", "null", "\"MINMAX\""};
        for (int i = 0; i < 4; i++) {
            cJSON *g2 = cJSON_Duplicate(geom, 1);
            cJSON_DeleteItemFromObjectCaseSensitive(g2, "stat_quantizer");
            cJSON_AddItemToObject(g2, "stat_quantizer", cJSON_Parse(bad[i]));
            back = NULL;
            assert_int_equal(fmt->open(g2, c.rows, c.cols, find_sec, &ctx, &back), SPQR_ERR_FORMAT);
            assert_non_null(strstr(spqr_last_error(), "stat_quantizer"));
            assert_null(back);
            cJSON_Delete(g2);
        }
        /* another variant's name: the stats2 size does not match (kmeans with s3/z4 is 48 bytes) */
        for (int o = 0; o < SPQR_SQ_COUNT; o++) {
            if (o == sq) continue;
            cJSON *g2 = cJSON_Duplicate(geom, 1);
            cJSON_DeleteItemFromObjectCaseSensitive(g2, "stat_quantizer");
            cJSON_AddStringToObject(g2, "stat_quantizer", spqr_statq_name(o));
            back = NULL;
            assert_int_equal(fmt->open(g2, c.rows, c.cols, find_sec, &ctx, &back), SPQR_ERR_FORMAT);
            assert_non_null(strstr(spqr_last_error(), "stats2"));
            cJSON_Delete(g2);
        }
        /* the explicit default name is the same as no key */
        if (sq == SPQR_SQ_MINMAX) {
            cJSON *g2 = cJSON_Duplicate(geom, 1);
            cJSON_AddStringToObject(g2, "stat_quantizer", "minmax");
            assert_int_equal(fmt->open(g2, c.rows, c.cols, find_sec, &ctx, &back), SPQR_OK);
            fmt->free(back);
            cJSON_Delete(g2);
        }
        cJSON_Delete(geom);
        spqr_container_close(f);
        fmt->free(pk);
        spqr_qlayer_free(&q);
    }
    /* a non-minmax variant needs bilevel statistics */
    {
        spqr_packed_geom g = {8, 32, 4, 16, 0, 0, 0, 1, SPQR_SQ_UNIFORM};
        size_t b;
        assert_int_equal(spqr_packed_section_bytes(&g, "stats", 0, &b), SPQR_ERR_FORMAT);
        cJSON *geom = cJSON_Parse("{\"rows\":8,\"cols\":32,\"wbits\":4,\"beta1\":16,\"beta2\":0,\"sbits\":0,"
                                  "\"zbits\":0,\"ocw\":1,\"n_outliers\":0,\"stat_quantizer\":\"kmeans\"}");
        void *back = NULL;
        assert_int_equal(fmt->open(geom, 8, 32, find_sec, NULL, &back), SPQR_ERR_FORMAT);
        assert_non_null(strstr(spqr_last_error(), "beta2"));
        cJSON_Delete(geom);
    }
}

/* Non-finite second-level values of the new variants are refused at load. */
static void test_nonfinite(void **state) {
    (void)state;
    tu_seed(8);
    for (int sq = SPQR_SQ_UNIFORM; sq < SPQR_SQ_COUNT; sq++) {
        spqr_qlayer q;
        ql_random(&q, &k_cases[1], sq);
        spqr_packed p, back;
        assert_int_equal(spqr_pack(&q, &p), SPQR_OK);
        spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS];
        const int n = spqr_packed_sections(&p, s, SPQR_PACKED_MAX_SECTIONS);
        spqr_packed_geom g;
        spqr_packed_geometry(&p, &g);
        assert_int_equal(spqr_packed_from_sections(&g, s, n, &back), SPQR_OK);
        assert_int_equal(back.sq, sq);
        spqr_packed_free(&back);
        uint16_t *st2 = (uint16_t *)p.stats2;
        const uint16_t keep = st2[1];
        st2[1] = 0x7c00; /* +inf */
        assert_int_equal(spqr_packed_from_sections(&g, s, n, &back), SPQR_ERR_FORMAT);
        assert_non_null(strstr(spqr_last_error(), "not finite"));
        st2[1] = keep;
        g.sq = 3;
        assert_int_equal(spqr_packed_from_sections(&g, s, n, &back), SPQR_ERR_FORMAT);
        spqr_packed_free(&p);
        spqr_qlayer_free(&q);
    }
}

/* ---- training hooks ---------------------------------------------------------- */

static double loss_of(const spqr_qformat *fmt, const void *pk, const float *G, size_t nw, float *w) {
    assert_int_equal(fmt->dequantize(pk, w), SPQR_OK);
    double L = 0;
    for (size_t i = 0; i < nw; i++) L += (double)G[i] * w[i];
    return L;
}

static void test_training(void **state) {
    (void)state;
    const spqr_qformat *fmt = spqr_qformat_find("spqr");
    tu_seed(123);
    const cfg cases[] = {{33, 100, 3, 16, 16, 3, 3, 0.03}, {20, 45, 4, 8, 12, 2, 4, 0.05}};
    for (int sq = 0; sq < SPQR_SQ_COUNT; sq++)
        for (int ci = 0; ci < 2; ci++) {
            const cfg *c = &cases[ci];
            spqr_qlayer q;
            ql_random(&q, c, sq);
            spqr_packed *pk = calloc(1, sizeof *pk);
            assert_int_equal(spqr_pack(&q, pk), SPQR_OK);
            const size_t M = (size_t)q.ngroups * q.nrb, N = (size_t)q.n_outliers;
            const size_t want = sq == SPQR_SQ_MINMAX ? 4 * M + N
                                : sq == SPQR_SQ_UNIFORM ? 2 * M + N
                                                        : ((size_t)1 << c->sbits) + ((size_t)1 << c->zbits) + N;
            const size_t n = fmt->train_count(pk);
            assert_int_equal(n, want);
            float *th = xmalloc(n * sizeof(float)), *gr = xmalloc(n * sizeof(float)), *sc = xmalloc(n * sizeof(float));
            fmt->train_get(pk, th);
            if (sq == SPQR_SQ_KMEANS) {
                for (int i = 0; i < (1 << c->sbits); i++) assert_true(th[i] == spqr_f16_to_f32(q.cb_scale[i]));
                for (int i = 0; i < (1 << c->zbits); i++)
                    assert_true(th[(1 << c->sbits) + i] == spqr_f16_to_f32(q.cb_zero[i]));
            } else {
                for (size_t i = 0; i < M; i++) {
                    assert_true(th[i] == spqr_f16_to_f32(q.s2_scale[i]));
                    assert_true(th[(sq == SPQR_SQ_UNIFORM ? 1 : 2) * M + i] == spqr_f16_to_f32(q.z2_scale[i]));
                }
            }
            fmt->train_scale(pk, sc);
            for (size_t i = 0; i < n; i++) assert_true(sc[i] > 0.0f && isfinite(sc[i]));
            /* gradient of L = sum G w: w is linear in each value alone, so doubling value i
             * (exact in fp16) changes L by exactly theta_i * dL/dtheta_i, up to float rounding */
            const size_t nw = (size_t)c->rows * c->cols;
            float *G = tu_rand_vec(nw), *w = xmalloc(nw * sizeof(float));
            memset(gr, 0, n * sizeof(float));
            fmt->train_grad(pk, G, gr);
            const double L0 = loss_of(fmt, pk, G, nw, w);
            double mag = 0;
            for (size_t i = 0; i < nw; i++) mag += fabs((double)G[i] * w[i]);
            int checked = 0;
            for (size_t i = 0; i < n; i++) {
                if (n > 60 && i % 7 != 0 && i >= 20) continue; /* a sample of a larger layer */
                if (th[i] == 0.0f || fabsf(th[i]) > 30000.0f) continue;
                const float keep = th[i];
                th[i] = 2.0f * keep;
                assert_int_equal(fmt->train_set(pk, th), SPQR_OK);
                const double L1 = loss_of(fmt, pk, G, nw, w);
                double mag1 = 0;
                for (size_t k = 0; k < nw; k++) mag1 += fabs((double)G[k] * w[k]);
                const double got = L1 - L0, expect = (double)keep * gr[i];
                if (!(fabs(got - expect) <= 1e-5 * (mag + mag1) + 1e-6 * fabs(expect)))
                    fail_msg("%s case %d: value %zu: dL %.9g, theta * grad %.9g", spqr_statq_name(sq), ci, i, got,
                             expect);
                th[i] = keep;
                checked++;
            }
            assert_true(checked >= 8);
            assert_int_equal(fmt->train_set(pk, th), SPQR_OK);
            assert_true(fabs(loss_of(fmt, pk, G, nw, w) - L0) <= 1e-9 * mag);
            /* after a change of every value the SIMD kernels (derived copies) still agree */
            for (size_t i = 0; i < n; i++) th[i] *= 1.0f + 0.1f * tu_rand_normal();
            assert_int_equal(fmt->train_set(pk, th), SPQR_OK);
            spqr_qlayer u;
            assert_int_equal(spqr_unpack(pk, &u), SPQR_OK);
            float *wd = def_dense(&u);
            const int nt = 3;
            float *X = tu_rand_vec((size_t)nt * c->cols), *yr = xmalloc(nt * c->rows * sizeof(float)),
                  *y = xmalloc(nt * c->rows * sizeof(float));
            assert_int_equal(spqr_qgemm_ref(pk, X, nt, yr), SPQR_OK);
            assert_int_equal(fmt->dequantize(pk, w), SPQR_OK);
            assert_memory_equal(w, wd, nw * sizeof(float));
            for (int v = 0; v < 2; v++) {
                const char *name = v ? "avx512" : "avx2";
                if (!spqr_kernel_supported(name)) continue;
                assert_int_equal(spqr_kernel_force(name), SPQR_OK);
                for (int t1 = 0; t1 < 2; t1++) { /* the fused single-token path and the chunked one */
                    const int ntt = t1 ? nt : 1;
                    assert_int_equal(spqr_qgemm(pk, X, ntt, y), SPQR_OK);
                    check_close(wd, X, ntt, c->rows, c->cols, y, yr, name);
                }
            }
            spqr_kernel_force(NULL);
            /* all or nothing */
            th[0] = INFINITY;
            assert_int_equal(fmt->train_set(pk, th), SPQR_ERR_NUMERIC);
            free(X), free(yr), free(y), free(wd);
            spqr_qlayer_free(&u);
            free(G), free(w), free(th), free(gr), free(sc);
            fmt->free(pk);
            spqr_qlayer_free(&q);
        }
}

/* ---- the statistics quantizers ---------------------------------------------- */

static void stats_sample(float *x, int n, int kind) {
    for (int i = 0; i < n; i++) {
        switch (kind) {
        case 0: x[i] = 0.01f * expf(0.7f * tu_rand_normal()); break; /* scales: positive, skewed */
        case 1: x[i] = 7.0f * tu_rand_uniform() - 1.0f; break;       /* zeros of a 3-bit grid */
        case 2: x[i] = tu_rand_normal(); break;                      /* signed */
        case 3: x[i] = 0.0f; break;
        case 4: x[i] = 1e-6f * (1.0f + tu_rand_uniform()); break;    /* fp16-subnormal steps */
        default: x[i] = 3.25f; break;                                /* constant */
        }
    }
}

/* Uniform: codes in range and every value within the bound of
 * docs/ALGORITHM.md: |x - xh| <= step/2 + 2^-11 amax + 2^-25 m (the fp16 step
 * may undershoot amax / m) + float rounding (2^-14 step + 2^-22 amax). */
static void test_uniform_bound(void **state) {
    (void)state;
    tu_seed(99);
    float x[300];
    uint8_t codes[300];
    double worst = 0;
    for (int kind = 0; kind < 6; kind++)
        for (int bits = 1; bits <= 8; bits++)
            for (int n = 1; n <= 300; n = n * 3 + 1) {
                stats_sample(x, n, kind);
                uint16_t sh;
                spqr_quantize_stat_block_uniform(x, n, bits, codes, &sh);
                const float s = spqr_f16_to_f32(sh), m = spqr_sq_mid(bits);
                float amax = 0;
                for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
                for (int i = 0; i < n; i++) {
                    assert_true(codes[i] < (1u << bits));
                    const float xh = s * ((float)codes[i] - m);
                    const double bound = 0.5 * s + ldexp(amax, -11) + ldexp(m, -25) + ldexp(s, -14) + ldexp(amax, -22);
                    const double err = fabs((double)x[i] - xh);
                    if (!(err <= bound))
                        fail_msg("uniform kind %d bits %d n %d: x %.9g -> %.9g (code %u, step %.9g): error %.3g > %.3g",
                                 kind, bits, n, x[i], xh, codes[i], s, err, bound);
                    if (bound > 0 && err / bound > worst) worst = err / bound;
                }
            }
    printf("uniform statistics: worst error / bound %.3f\n", worst);
}

static double sse_codebook(const float *x, size_t n, const uint16_t *cb, int k) {
    float f[256];
    for (int i = 0; i < k; i++) f[i] = spqr_f16_to_f32(cb[i]);
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t c = spqr_kmeans_code(x[i], f, k);
        for (int j = 0; j < k; j++) assert_true(fabsf(x[i] - f[c]) <= fabsf(x[i] - f[j])); /* nearest */
        e += ((double)x[i] - f[c]) * ((double)x[i] - f[c]);
    }
    return e;
}

/* K-means: sorted finite fp16 centroids; squared error no larger than that
 * of the quantile initialisation, and no larger than the uniform quantizer's
 * on the same statistics (one block: the whole set) up to the fp16 rounding
 * of the uniform levels: sqrt(SSE_k) <= sqrt(SSE_u) + sqrt(n) (2^-11 amax +
 * 2^-25 + 2^-22 amax). */
static void test_kmeans_bound(void **state) {
    (void)state;
    tu_seed(2024);
    static float x[5000];
    static uint8_t codes[5000];
    const int sizes[] = {1, 5, 300, 5000};
    int strictly_better = 0, cases = 0;
    for (int kind = 0; kind < 6; kind++)
        for (int si = 0; si < 4; si++)
            for (int bits = 1; bits <= 8; bits++) {
                if (bits > 4 && bits < 8) continue;
                const int n = sizes[si], k = 1 << bits;
                stats_sample(x, n, kind);
                uint16_t cb[256];
                assert_int_equal(spqr_kmeans_fit_stats(x, (size_t)n, bits, cb), SPQR_OK);
                for (int i = 0; i < k; i++) {
                    assert_true((cb[i] & 0x7c00u) != 0x7c00u);
                    if (i) assert_true(spqr_f16_to_f32(cb[i - 1]) <= spqr_f16_to_f32(cb[i]));
                }
                const double ek = sse_codebook(x, (size_t)n, cb, k);
                /* the quantile initialisation, rounded to fp16 */
                float *xs = xmalloc((size_t)n * sizeof(float));
                memcpy(xs, x, (size_t)n * sizeof(float));
                for (int i = 1; i < n; i++) /* insertion sort (small n) or nearly */
                    for (int j = i; j > 0 && xs[j - 1] > xs[j]; j--) {
                        const float t = xs[j];
                        xs[j] = xs[j - 1];
                        xs[j - 1] = t;
                    }
                uint16_t qi[256];
                for (int i = 0; i < k; i++) qi[i] = spqr_f32_to_f16(xs[(size_t)(((double)i + 0.5) * n / k)]);
                free(xs);
                assert_true(ek <= sse_codebook(x, (size_t)n, qi, k));
                /* the uniform quantizer on the same statistics */
                uint16_t sh;
                spqr_quantize_stat_block_uniform(x, n, bits, codes, &sh);
                double eu = 0;
                float amax = 0;
                for (int i = 0; i < n; i++) {
                    const double d = (double)x[i] - spqr_f16_to_f32(sh) * ((float)codes[i] - spqr_sq_mid(bits));
                    eu += d * d;
                    amax = fmaxf(amax, fabsf(x[i]));
                }
                const double slack = sqrt((double)n) * (ldexp(amax, -11) + ldexp(1.0, -25) + ldexp(amax, -22));
                if (!(sqrt(ek) <= sqrt(eu) + slack))
                    fail_msg("kmeans kind %d n %d bits %d: sqrt SSE %.9g > uniform %.9g + %.3g", kind, n, bits, sqrt(ek),
                             sqrt(eu), slack);
                cases++;
                strictly_better += ek < eu;
            }
    printf("k-means statistics: %d cases, strictly below the uniform error in %d\n", cases, strictly_better);
    assert_true(strictly_better >= cases / 2);
}

/* ---- the engine ------------------------------------------------------------- */

static void test_engine(void **state) {
    (void)state;
    tu_seed(4242);
    const int R = 48, C = 80;
    float *W = tu_rand_vec((size_t)R * C);
    for (int i = 0; i < R * C; i += 37) W[i] *= 8.0f; /* a few outliers */
    /* H = X X^T / N of random inputs */
    const int N = 200;
    float *X = tu_rand_vec((size_t)N * C);
    double *H = xmalloc((size_t)C * C * sizeof(double));
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++) {
            double s = 0;
            for (int t = 0; t < N; t++) s += (double)X[(size_t)t * C + a] * X[(size_t)t * C + b];
            H[(size_t)a * C + b] = 2.0 * s / N;
        }
    double err[SPQR_SQ_COUNT][2];
    for (int mi = 0; mi < 2; mi++)
        for (int sq = 0; sq < SPQR_SQ_COUNT; sq++) {
            spqr_qparams p;
            spqr_qparams_default(&p, mi ? SPQR_METHOD_SPQR : SPQR_METHOD_RTN);
            p.beta1 = 16;
            p.beta2 = 16;
            p.wbits = 3;
            p.statq = sq;
            assert_int_equal(spqr_qparams_validate(&p, C), SPQR_OK);
            spqr_qlayer q;
            float *committed = xmalloc((size_t)R * C * sizeof(float));
            assert_int_equal(spqr_quantize_layer_ex(W, R, C, mi ? H : NULL, &p, &q, NULL, committed), SPQR_OK);
            assert_int_equal(q.sq, sq);
            assert_int_equal(spqr_qlayer_validate(&q), SPQR_OK);
            float *w = xmalloc((size_t)R * C * sizeof(float));
            spqr_qlayer_dequantize(&q, w);
            assert_memory_equal(w, committed, (size_t)R * C * sizeof(float)); /* what it committed to is the layer */
            double e = 0, wn = 0;
            for (int i = 0; i < R * C; i++) {
                e += ((double)w[i] - W[i]) * ((double)w[i] - W[i]);
                wn += (double)W[i] * W[i];
            }
            err[sq][mi] = sqrt(e / wn);
            if (sq == SPQR_SQ_KMEANS)
                for (int i = 1; i < 8; i++) assert_true(spqr_f16_to_f32(q.cb_scale[i - 1]) <= spqr_f16_to_f32(q.cb_scale[i]));
            spqr_packed pk;
            assert_int_equal(spqr_pack(&q, &pk), SPQR_OK);
            spqr_packed_free(&pk);
            free(w);
            free(committed);
            spqr_qlayer_free(&q);
        }
    printf("engine relative weight error (rtn, spqr): minmax %.4f %.4f, uniform %.4f %.4f, kmeans %.4f %.4f\n",
           err[0][0], err[0][1], err[1][0], err[1][1], err[2][0], err[2][1]);
    for (int sq = 0; sq < SPQR_SQ_COUNT; sq++) assert_true(err[sq][0] < 0.5 && err[sq][1] < 0.5);
    /* the option needs bilevel statistics */
    spqr_qparams p;
    spqr_qparams_default(&p, SPQR_METHOD_GPTQ);
    p.statq = SPQR_SQ_UNIFORM;
    assert_int_equal(spqr_qparams_validate(&p, C), SPQR_ERR_INVALID_ARG);
    p.statq = 3;
    p.beta2 = 16;
    assert_int_equal(spqr_qparams_validate(&p, C), SPQR_ERR_INVALID_ARG);
    free(W), free(X), free(H);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_and_kernels), cmocka_unit_test(test_layout_refusals),
        cmocka_unit_test(test_file),               cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_training),           cmocka_unit_test(test_uniform_bound),
        cmocka_unit_test(test_kmeans_bound),       cmocka_unit_test(test_engine),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
