/* test_cluscomp_format.c - the "cluscomp" codebook format: index packing,
 * the dequantization definition, the scalar reference product, every CPU
 * variant against it, the file round trip (sections through the container
 * and a whole model through the .spqr writer and loader), and the
 * validation of untrusted geometry and sections.
 *
 * Tolerance of every fast product y against the reference yref (double
 * accumulation of the same float weights), per output:
 *
 *     |y - yref| <= 2e-5 * sum_j |w[r][j]| * |x[j]|   (+ 1e-30)
 *
 * The fast kernels accumulate in float32 in their own order (column chunks
 * of 512, sgemm's blocking), whose error is ~ sqrt(cols) * 6e-8 of that sum;
 * a wrong entry, index or row shows up as an error of the order of the sum.
 * The reference itself must match a naive double product of the dequantized
 * weights to 1e-12 of the same sum.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tinyhf.h"

#include "format/qformat.h"
#include "formats/cluscomp/cluscomp.h"
#include "formats/cluscomp/cpu/ccgemm.h"
#include "io/container.h"
#include "kernels/cpu/cpu.h"
#include "model/model.h"
#include "model/model_file.h"
#include "train_check.h"

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static uint32_t rnd(uint32_t n) { return (uint32_t)(tu_rand_u64() % n); }

static int nblocks(int rows, int d) { return (rows + d - 1) / d; }

/* A random layer: codebook N(0,1) (rounded to fp16 by build), uniform indices. */
static spqr_cc_layer *rand_layer(int rows, int cols, int d, int n) {
    const int nb = nblocks(rows, d);
    float *cb = xmalloc(sizeof(float) * (size_t)n * d);
    uint32_t *idx = xmalloc(sizeof(uint32_t) * (size_t)nb * cols);
    for (size_t i = 0; i < (size_t)n * d; i++) cb[i] = tu_rand_normal();
    for (size_t i = 0; i < (size_t)nb * cols; i++) idx[i] = rnd((uint32_t)n);
    spqr_cc_layer *L = NULL;
    spqr_status st = spqr_cc_layer_build(rows, cols, d, n, cb, idx, &L);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    free(cb);
    free(idx);
    return L;
}

/* ---- index stream -------------------------------------------------------------- */

static void test_index_bits_bytes(void **state) {
    (void)state;
    const int n[] = {1, 2, 3, 4, 5, 255, 256, 257, 4096, 4097, 65536, 1 << 24};
    const int b[] = {1, 1, 2, 2, 3, 8, 8, 9, 12, 13, 16, 24};
    for (size_t i = 0; i < sizeof n / sizeof *n; i++) assert_int_equal(spqr_cc_index_bits(n[i]), b[i]);
    assert_int_equal(spqr_cc_index_bits(0), 0);
    /* whole 8-byte words plus the slack */
    assert_int_equal(spqr_cc_index_bytes(1, 1), 8 + SPQR_CC_INDEX_SLACK);
    assert_int_equal(spqr_cc_index_bytes(64, 1), 8 + SPQR_CC_INDEX_SLACK);
    assert_int_equal(spqr_cc_index_bytes(65, 1), 16 + SPQR_CC_INDEX_SLACK);
    assert_int_equal(spqr_cc_index_bytes(16, 12), 24 + SPQR_CC_INDEX_SLACK);
    assert_int_equal(spqr_cc_index_bytes(4096LL * 4096 / 4, 12), 4096ull * 4096 / 4 * 12 / 8 + SPQR_CC_INDEX_SLACK);
    /* overflow and nonsense give 0 */
    assert_int_equal(spqr_cc_index_bytes(INT64_MAX, 24), 0);
    assert_int_equal(spqr_cc_index_bytes(-1, 4), 0);
    assert_int_equal(spqr_cc_index_bytes(10, 0), 0);
}

/* build packs, spqr_cc_index / spqr_cc_unpack_indices read back, for every
 * ibits 1..24 (power-of-two and other n), odd field counts. */
static void test_pack_roundtrip(void **state) {
    (void)state;
    tu_seed(3);
    for (int ib = 1; ib <= 24; ib++) {
        for (int pow2 = 0; pow2 < 2; pow2++) {
            const int n = pow2 ? 1 << ib : (ib == 1 ? 1 : (1 << (ib - 1)) + 1 + (int)rnd((uint32_t)(1 << (ib - 1)) - 1));
            assert_int_equal(spqr_cc_index_bits(n), ib);
            const int rows = 7, cols = 37 + ib;
            const int d1 = ib > 20 ? 1 : 2; /* keep the large codebooks small */
            const int nb1 = nblocks(rows, d1);
            float *cb = xmalloc(sizeof(float) * (size_t)n * d1);
            for (size_t i = 0; i < (size_t)n * d1; i++) cb[i] = (float)(i % 977) * 0.25f;
            uint32_t *idx = xmalloc(sizeof(uint32_t) * (size_t)nb1 * cols), *back = xmalloc(sizeof(uint32_t) * (size_t)nb1 * cols);
            for (int i = 0; i < nb1 * cols; i++) idx[i] = i % 5 == 0 ? (uint32_t)n - 1 : rnd((uint32_t)n);
            spqr_cc_layer *L = NULL;
            assert_int_equal(spqr_cc_layer_build(rows, cols, d1, n, cb, idx, &L), SPQR_OK);
            assert_int_equal(L->ibits, ib);
            assert_int_equal(L->nb, nb1);
            assert_int_equal(L->idx_bytes, spqr_cc_index_bytes((int64_t)nb1 * cols, ib));
            spqr_cc_unpack_indices(L, back);
            assert_memory_equal(idx, back, sizeof(uint32_t) * (size_t)nb1 * cols);
            for (int b = 0; b < nb1; b++)
                for (int j = 0; j < cols; j++) assert_int_equal(spqr_cc_index(L, b, j), idx[b * cols + j]);
            /* padding after the last field is zero */
            const uint64_t bits = (uint64_t)nb1 * cols * ib;
            if (bits % 8) assert_int_equal(L->idx[bits / 8] >> (bits % 8), 0);
            for (size_t k = (size_t)((bits + 7) / 8); k < L->idx_bytes; k++) assert_int_equal(L->idx[k], 0);
            spqr_cc_layer_free(L);
            free(cb);
            free(idx);
            free(back);
        }
    }
}

/* ---- the definition ---------------------------------------------------------------- */

/* A hand-built 5 x 3 layer, d = 2 (three row blocks, the last one half
 * padding), n = 3, fp16-exact values. */
static void test_dequant_definition(void **state) {
    (void)state;
    const float cb[3][2] = {{1.0f, -2.0f}, {0.5f, 4.0f}, {-0.25f, 8.0f}};
    const uint32_t idx[3][3] = {{0, 1, 2}, {2, 2, 0}, {1, 0, 1}};
    spqr_cc_layer *L = NULL;
    assert_int_equal(spqr_cc_layer_build(5, 3, 2, 3, &cb[0][0], &idx[0][0], &L), SPQR_OK);
    assert_int_equal(L->nb, 3);
    assert_int_equal(L->ibits, 2);
    const float want[5][3] = {
        {1.0f, 0.5f, -0.25f},  /* row 0 = component 0 of block 0 */
        {-2.0f, 4.0f, 8.0f},   /* row 1 = component 1 of block 0 */
        {-0.25f, -0.25f, 1.0f}, /* block 1 */
        {8.0f, 8.0f, -2.0f},
        {0.5f, 1.0f, 0.5f}, /* block 2, component 0 only */
    };
    float W[15];
    const spqr_qformat *f = spqr_qformat_find("cluscomp");
    assert_ptr_equal(f, &spqr_qformat_cluscomp);
    assert_int_equal(f->dequantize(L, W), SPQR_OK);
    assert_memory_equal(W, want, sizeof want);
    /* the stream: fields LSB-first, 2 bits each: 0,1,2, 2,2,0, 1,0,1 */
    const uint32_t bits = 0u | 1u << 2 | 2u << 4 | 2u << 6 | 2u << 8 | 0u << 10 | 1u << 12 | 0u << 14 | 1u << 16;
    assert_int_equal(L->idx[0], bits & 0xff);
    assert_int_equal(L->idx[1], (bits >> 8) & 0xff);
    assert_int_equal(L->idx[2], (bits >> 16) & 0xff);
    /* the product with x = e_j picks column j */
    for (int j = 0; j < 3; j++) {
        float x[3] = {0, 0, 0}, y[5];
        x[j] = 1.0f;
        assert_int_equal(f->gemm_ref(L, x, 1, y), SPQR_OK);
        for (int r = 0; r < 5; r++) assert_true(y[r] == want[r][j]);
        assert_int_equal(f->gemm(L, x, 1, y), SPQR_OK);
        for (int r = 0; r < 5; r++) assert_true(y[r] == want[r][j]);
    }
    /* fp16 rounding: build keeps the rounded codebook; set_codebook replaces it */
    const float cb2[6] = {1.0f / 3.0f, 2, 3, 4, 5, 6};
    assert_int_equal(spqr_cc_layer_set_codebook(L, cb2), SPQR_OK);
    assert_true(L->cb32[0] == spqr_f16_to_f32(spqr_f32_to_f16(1.0f / 3.0f)));
    assert_true(L->cb32[0] != 1.0f / 3.0f);
    assert_int_equal(L->codebook[5], spqr_f32_to_f16(6.0f));
    for (int i = 0; i < SPQR_CC_CB_PAD; i++) assert_true(L->cb32[6 + i] == 0.0f);
    assert_int_equal(f->dequantize(L, W), SPQR_OK);
    assert_true(W[0] == L->cb32[0] && W[3] == L->cb32[1] && W[2] == L->cb32[4]);
    spqr_cc_layer_free(L);
}

/* S[t][r] = sum_j |W[r][j] x_t[j]| and the exact (double) product. */
static void abs_and_exact(const float *W, const float *X, int T, int rows, int cols, double *S, double *E) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) {
            double s = 0, e = 0;
            for (int j = 0; j < cols; j++) {
                double p = (double)W[(size_t)r * cols + j] * X[(size_t)t * cols + j];
                e += p;
                s += fabs(p);
            }
            S[(size_t)t * rows + r] = s;
            E[(size_t)t * rows + r] = e;
        }
}

typedef struct shape {
    int rows, cols, d, n;
} shape;

/* awkward shapes: rows not a multiple of d, n not a power of two, n = 1,
 * d = 1, 3, 16 and > 16 (slices), odd cols, cols over a 512-column chunk,
 * enough blocks for several work items and partial groups */
static const shape k_shapes[] = {
    {7, 5, 4, 3},     {13, 33, 3, 5},     {16, 17, 16, 1},   {5, 600, 1, 7},      {40, 1031, 8, 300},
    {70, 129, 20, 257}, {64, 64, 64, 2},  {130, 1100, 4, 4096}, {9, 9, 5, 9},     {1003, 211, 4, 100},
    {33, 77, 2, 65536}, {31, 45, 12, 33}, {1, 1, 1, 1},      {50, 20, 33, 17},    {257, 1025, 8, 5000},
    {37, 70, 4, 256},   {20, 50, 2, (1 << 17) + 3},          {6, 33, 1, (1 << 23) + 5},
    {70, 301, 4, 65536}, {100, 90, 8, 9000},  {200, 77, 16, 300}, {130, 40, 16, 5000},
};

static void test_ref_vs_dequant(void **state) {
    (void)state;
    tu_seed(5);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    for (size_t k = 0; k < sizeof k_shapes / sizeof *k_shapes; k++) {
        const shape *s = &k_shapes[k];
        spqr_cc_layer *L = rand_layer(s->rows, s->cols, s->d, s->n);
        const int T = 3;
        float *W = xmalloc(sizeof(float) * (size_t)s->rows * s->cols), *X = xmalloc(sizeof(float) * (size_t)T * s->cols);
        float *Y = xmalloc(sizeof(float) * (size_t)T * s->rows);
        double *S = xmalloc(sizeof(double) * (size_t)T * s->rows), *E = xmalloc(sizeof(double) * (size_t)T * s->rows);
        assert_int_equal(f->dequantize(L, W), SPQR_OK);
        /* spot-check the definition on the random layer */
        for (int r = 0; r < s->rows; r++)
            for (int j = 0; j < s->cols; j += 1 + s->cols / 7)
                assert_true(W[(size_t)r * s->cols + j] ==
                            L->cb32[(size_t)spqr_cc_index(L, r / s->d, j) * s->d + r % s->d]);
        for (int i = 0; i < T * s->cols; i++) X[i] = tu_rand_normal();
        abs_and_exact(W, X, T, s->rows, s->cols, S, E);
        assert_int_equal(f->gemm_ref(L, X, T, Y), SPQR_OK);
        for (int i = 0; i < T * s->rows; i++) assert_true(fabs(Y[i] - E[i]) <= 1e-12 * S[i] + fabs(E[i]) * 6e-8 + 1e-30);
        spqr_cc_layer_free(L);
        free(W); free(X); free(Y); free(S); free(E);
    }
}

/* every variant this CPU runs, fused and sgemm paths, against gemm_ref */
static void test_variants(void **state) {
    (void)state;
    tu_seed(9);
    const char *kinds[] = {"ref", "avx2", "avx512"};
    const int Ts[] = {1, 2, 3, 7, 16, 33, 48};
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    for (size_t k = 0; k < sizeof k_shapes / sizeof *k_shapes; k++) {
        const shape *s = &k_shapes[k];
        spqr_cc_layer *L = rand_layer(s->rows, s->cols, s->d, s->n);
        const int Tmax = 48;
        float *W = xmalloc(sizeof(float) * (size_t)s->rows * s->cols), *X = xmalloc(sizeof(float) * (size_t)Tmax * s->cols);
        float *Yr = xmalloc(sizeof(float) * (size_t)Tmax * s->rows), *Y = xmalloc(sizeof(float) * (size_t)Tmax * s->rows);
        double *S = xmalloc(sizeof(double) * (size_t)Tmax * s->rows), *E = xmalloc(sizeof(double) * (size_t)Tmax * s->rows);
        assert_int_equal(f->dequantize(L, W), SPQR_OK);
        for (int i = 0; i < Tmax * s->cols; i++) X[i] = tu_rand_normal();
        abs_and_exact(W, X, Tmax, s->rows, s->cols, S, E);
        for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
            const int T = Ts[ti];
            assert_int_equal(f->gemm_ref(L, X, T, Yr), SPQR_OK);
            for (size_t v = 0; v < 3; v++) {
                if (!spqr_kernel_supported(kinds[v])) {
                    if (k == 0 && ti == 0) printf("  SKIP variant %s (not supported by this CPU)\n", kinds[v]);
                    continue;
                }
                assert_int_equal(spqr_kernel_force(kinds[v]), SPQR_OK);
                for (int path = 0; path < 3; path++) {
                    for (int i = 0; i < T * s->rows; i++) Y[i] = NAN;
                    spqr_status st = path == 0   ? f->gemm(L, X, T, Y)
                                     : path == 1 ? spqr_cc_gemm_fused(L, X, T, Y)
                                                 : spqr_cc_gemm_sgemm(L, X, T, Y);
                    assert_int_equal(st, SPQR_OK);
                    for (int i = 0; i < T * s->rows; i++) {
                        const double tol = 2e-5 * S[i] + 1e-30;
                        if (!(fabs(Y[i] - Yr[i]) <= tol)) {
                            fprintf(stderr, "%s path %d: %dx%d d%d n%d T%d: y[%d] = %g, ref %g (tol %g)\n", kinds[v],
                                    path, s->rows, s->cols, s->d, s->n, T, i, Y[i], Yr[i], tol);
                            fail();
                        }
                    }
                }
            }
            spqr_kernel_force(NULL);
        }
        /* T = 0 does nothing; bad arguments are refused */
        assert_int_equal(f->gemm(L, X, 0, Y), SPQR_OK);
        assert_int_equal(f->gemm(L, X, -1, Y), SPQR_ERR_INVALID_ARG);
        assert_int_equal(f->gemm(L, NULL, 1, Y), SPQR_ERR_INVALID_ARG);
        spqr_cc_layer_free(L);
        free(W); free(X); free(Yr); free(Y); free(S); free(E);
    }
}

/* Every index width through every variant's decoder (the SIMD kernels decode
 * 8/16-bit fields as bytes/words and others with windows of 16- or 32-bit
 * lanes; odd cols make block starts fall at every bit phase). */
static void test_decode_all_ibits(void **state) {
    (void)state;
    tu_seed(10);
    const char *kinds[] = {"avx2", "avx512"};
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    for (int ib = 1; ib <= 24; ib++) {
        const int n = ib == 1 ? 2 : (1 << (ib - 1)) + 1 + (int)rnd((uint32_t)(1 << (ib - 1)) - 1);
        const int d = ib > 18 ? 1 : ib > 12 ? 2 : 4, rows = 5 * d + 1, cols = 1101, T = 2;
        spqr_cc_layer *L = rand_layer(rows, cols, d, n);
        assert_int_equal(L->ibits, ib);
        float *X = xmalloc(sizeof(float) * T * cols), *Yr = xmalloc(sizeof(float) * T * rows), *Y = xmalloc(sizeof(float) * T * rows);
        float *W = xmalloc(sizeof(float) * (size_t)rows * cols);
        double *S = xmalloc(sizeof(double) * T * rows), *E = xmalloc(sizeof(double) * T * rows);
        for (int i = 0; i < T * cols; i++) X[i] = tu_rand_normal();
        spqr_cc_dequantize(L, W);
        abs_and_exact(W, X, T, rows, cols, S, E);
        assert_int_equal(f->gemm_ref(L, X, T, Yr), SPQR_OK);
        for (int v = 0; v < 2; v++) {
            if (!spqr_kernel_supported(kinds[v])) continue;
            assert_int_equal(spqr_kernel_force(kinds[v]), SPQR_OK);
            for (int t = 1; t <= T; t++) {
                assert_int_equal(spqr_cc_gemm_fused(L, X, t, Y), SPQR_OK);
                for (int i = 0; i < t * rows; i++) {
                    if (!(fabs(Y[i] - Yr[i]) <= 2e-5 * S[i] + 1e-30))
                        fprintf(stderr, "%s ibits %d T%d: y[%d] = %g, ref %g\n", kinds[v], ib, t, i, Y[i], Yr[i]);
                    assert_true(fabs(Y[i] - Yr[i]) <= 2e-5 * S[i] + 1e-30);
                }
            }
        }
        spqr_kernel_force(NULL);
        spqr_cc_layer_free(L);
        free(X); free(Yr); free(Y); free(W); free(S); free(E);
    }
}

/* Several threads' worth of work on a LLaMA-like shape: fast vs ref. */
static void test_variants_large(void **state) {
    (void)state;
    tu_seed(12);
    const shape sh[] = {{1024, 4096, 4, 4096}, {512, 2048, 8, 65536}};
    for (size_t k = 0; k < 2; k++) {
        spqr_cc_layer *L = rand_layer(sh[k].rows, sh[k].cols, sh[k].d, sh[k].n);
        const int T = 5, R = sh[k].rows, C = sh[k].cols;
        float *W = xmalloc(sizeof(float) * (size_t)R * C), *X = xmalloc(sizeof(float) * (size_t)T * C);
        float *Yr = xmalloc(sizeof(float) * (size_t)T * R), *Y = xmalloc(sizeof(float) * (size_t)T * R);
        double *S = xmalloc(sizeof(double) * (size_t)T * R), *E = xmalloc(sizeof(double) * (size_t)T * R);
        spqr_cc_dequantize(L, W);
        for (int i = 0; i < T * C; i++) X[i] = tu_rand_normal();
        abs_and_exact(W, X, T, R, C, S, E);
        for (int i = 0; i < T * R; i++) Yr[i] = (float)E[i];
        for (int Tn = 1; Tn <= T; Tn += T - 1) {
            assert_int_equal(spqr_cc_gemm(L, X, Tn, Y), SPQR_OK);
            for (int i = 0; i < Tn * R; i++) assert_true(fabs(Y[i] - Yr[i]) <= 2e-5 * S[i]);
        }
        spqr_cc_layer_free(L);
        free(W); free(X); free(Yr); free(Y); free(S); free(E);
    }
}

/* ---- accounting ---------------------------------------------------------------- */

static void test_accounting(void **state) {
    (void)state;
    tu_seed(4);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    spqr_cc_layer *L = rand_layer(130, 64, 4, 4096); /* nb = 33: rows padded to 132 */
    const size_t idxb = spqr_cc_index_bytes(33 * 64, 12);
    assert_int_equal(f->bytes(L), idxb + 4096 * 4 * 2);
    const double want = (12.0 * 33 * 64 + 16.0 * 4096 * 4) / (130.0 * 64);
    assert_true(fabs(f->formula_bits(L) - want) < 1e-12);
    assert_null(f->n_outliers);
    char buf[64];
    f->describe(L, buf, sizeof buf);
    assert_string_equal(buf, "d4 n4096 i12");
    L->cb_share = 3; /* a codebook shared by 3 layers: 1/3 of it, rounded up */
    assert_int_equal(f->bytes(L), idxb + (4096 * 4 * 2 + 2) / 3);
    assert_true(fabs(f->formula_bits(L) - (12.0 * 33 * 64 + 16.0 * 4096 * 4 / 3) / (130.0 * 64)) < 1e-12);
    f->describe(L, buf, sizeof buf);
    assert_string_equal(buf, "d4 n4096 i12 cb/3");
    /* the registry knows the format, with CUDA entries */
    assert_ptr_equal(spqr_qformat_find("cluscomp"), f);
    assert_non_null(f->cuda_upload);
    assert_non_null(f->cuda_gemm);
    assert_non_null(f->cuda_free);
    assert_non_null(f->cuda_estimate);
    spqr_cc_layer_free(L);
}

/* ---- build with bad arguments ------------------------------------------------------ */

static void test_build_bad_args(void **state) {
    (void)state;
    float cb[64 * 4];
    uint32_t idx[64];
    for (int i = 0; i < 64 * 4; i++) cb[i] = (float)i;
    for (int i = 0; i < 64; i++) idx[i] = (uint32_t)(i % 3);
    spqr_cc_layer *L = (spqr_cc_layer *)1;
    assert_int_equal(spqr_cc_layer_build(4, 4, 0, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_null(L);
    assert_non_null(strstr(spqr_last_error(), "d = 0"));
    assert_int_equal(spqr_cc_layer_build(4, 4, SPQR_CC_MAX_D + 1, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 0, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, SPQR_CC_MAX_N + 1, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "n = "));
    assert_int_equal(spqr_cc_layer_build(0, 4, 4, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_layer_build(4, -1, 4, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, NULL, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, cb, NULL, &L), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, cb, idx, NULL), SPQR_ERR_INVALID_ARG);
    idx[3] = 3; /* >= n */
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), ">= n"));
    idx[3] = 0;
    cb[5] = 1e6f; /* beyond fp16 */
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    cb[5] = NAN;
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, cb, idx, &L), SPQR_ERR_INVALID_ARG);
    cb[5] = 5.0f;
    assert_int_equal(spqr_cc_layer_build(4, 4, 4, 3, cb, idx, &L), SPQR_OK);
    /* set_codebook: all or nothing */
    float cb2[12];
    for (int i = 0; i < 12; i++) cb2[i] = -1.0f;
    cb2[11] = INFINITY;
    assert_int_equal(spqr_cc_layer_set_codebook(L, cb2), SPQR_ERR_INVALID_ARG);
    assert_true(L->cb32[0] == 0.0f && L->cb32[11] == 11.0f);
    assert_int_equal(spqr_cc_layer_set_codebook(L, NULL), SPQR_ERR_INVALID_ARG);
    /* a layer over borrowed storage cannot change its codebook */
    spqr_cc_layer *B = NULL;
    assert_int_equal(spqr_cc_layer_wrap(4, 4, 4, 3, 1, L->codebook, L->idx, L->idx_bytes, &B), SPQR_OK);
    cb2[11] = 1.0f;
    assert_int_equal(spqr_cc_layer_set_codebook(B, cb2), SPQR_ERR_INVALID_ARG);
    spqr_cc_layer_free(B);
    spqr_cc_layer_free(L);
    spqr_cc_layer_free(NULL);
}

/* ---- open() on untrusted input ------------------------------------------------------ */

typedef struct mem_secs {
    spqr_qsection s[4];
    int n;
} mem_secs;

static spqr_status mem_find(void *ctx, const char *name, spqr_qsection *out) {
    const mem_secs *m = ctx;
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->s[i].name, name)) {
            *out = m->s[i];
            return SPQR_OK;
        }
    return spqr_fail(SPQR_ERR_FORMAT, "no section '%s'", name);
}

static cJSON *geometry_of(const spqr_cc_layer *L) {
    cJSON *g = cJSON_CreateObject();
    assert_int_equal(spqr_qformat_cluscomp.write_geometry(L, g), SPQR_OK);
    return g;
}

static void set_key(cJSON *g, const char *k, double v) {
    cJSON_DeleteItemFromObjectCaseSensitive(g, k);
    cJSON_AddNumberToObject(g, k, v);
}

/* open must fail with SPQR_ERR_FORMAT and a message containing `msg` */
static void expect_bad(const cJSON *g, int rows, int cols, mem_secs *m, const char *msg) {
    void *p = NULL;
    spqr_status st = spqr_qformat_cluscomp.open(g, rows, cols, mem_find, m, &p);
    if (st != SPQR_ERR_FORMAT || !strstr(spqr_last_error(), msg))
        fprintf(stderr, "expected FORMAT with \"%s\", got %d: %s\n", msg, (int)st, spqr_last_error());
    assert_int_equal(st, SPQR_ERR_FORMAT);
    assert_non_null(strstr(spqr_last_error(), msg));
    assert_null(p);
}

static void test_open_bad_inputs(void **state) {
    (void)state;
    tu_seed(21);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    spqr_cc_layer *L = rand_layer(11, 13, 4, 5); /* 3-bit indices, n not a power of two */
    mem_secs good;
    good.n = f->sections(L, good.s, 4);
    assert_int_equal(good.n, 2);
    /* private copies to corrupt */
    uint8_t *ix = xmalloc(L->idx_bytes + 16);
    uint16_t *cb = xmalloc(sizeof(uint16_t) * 5 * 4 + 16);
    memcpy(ix, L->idx, L->idx_bytes);
    memcpy(cb, L->codebook, sizeof(uint16_t) * 20);
    mem_secs m = good;
    m.s[0].data = cb;
    m.s[1].data = ix;
    cJSON *g = geometry_of(L);
    void *p = NULL;
    assert_int_equal(f->open(g, 11, 13, mem_find, &m, &p), SPQR_OK); /* the copies are fine */
    f->free(p);

    /* geometry */
    const char *keys[] = {"rows", "cols", "d", "n", "ibits", "cb_share"};
    for (size_t k = 0; k < 6; k++) {
        cJSON *h = cJSON_Duplicate(g, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(h, keys[k]);
        char msg[64];
        snprintf(msg, sizeof msg, "\"%s\" is missing", keys[k]);
        expect_bad(h, 11, 13, &m, msg);
        cJSON_Delete(h);
    }
    cJSON *h = cJSON_Duplicate(g, 1);
    set_key(h, "d", 0);
    expect_bad(h, 11, 13, &m, "\"d\" is not an integer in [1, 64]");
    set_key(h, "d", 2.5);
    expect_bad(h, 11, 13, &m, "\"d\" is not an integer");
    set_key(h, "d", 65);
    expect_bad(h, 11, 13, &m, "\"d\"");
    set_key(h, "d", 4);
    set_key(h, "n", (1 << 24) + 1);
    expect_bad(h, 11, 13, &m, "\"n\" is not an integer in [1, 16777216]");
    set_key(h, "n", 5);
    set_key(h, "ibits", 4); /* n = 5 has 3-bit indices */
    expect_bad(h, 11, 13, &m, "ibits = 4, but a codebook of n = 5");
    set_key(h, "ibits", 3);
    set_key(h, "cb_share", 0);
    expect_bad(h, 11, 13, &m, "\"cb_share\"");
    set_key(h, "cb_share", 1);
    cJSON_DeleteItemFromObjectCaseSensitive(h, "rows");
    cJSON_AddStringToObject(h, "rows", "11");
    expect_bad(h, 11, 13, &m, "\"rows\"");
    cJSON_Delete(h);
    expect_bad(g, 12, 13, &m, "the layer is 11x13 but the config implies 12x13");
    expect_bad(g, 11, 14, &m, "config implies 11x14");
    /* geometry that changes the expected section sizes */
    h = cJSON_Duplicate(g, 1);
    set_key(h, "n", 6); /* still 3 bits: the codebook is too small */
    expect_bad(h, 11, 13, &m, "section \"codebook\"");
    set_key(h, "n", 5);
    set_key(h, "d", 5); /* the codebook would have 25 entries */
    expect_bad(h, 11, 13, &m, "n = 5 x d = 5 needs F16 of 50");
    cJSON_Delete(h);

    /* sections */
    mem_secs bad = m;
    bad.n = 1; /* no "indices" */
    expect_bad(g, 11, 13, &bad, "no section 'indices'");
    bad = m;
    bad.s[0].bytes -= 2;
    expect_bad(g, 11, 13, &bad, "section \"codebook\" is F16 of 38 bytes");
    bad = m;
    bad.s[0].dtype = SPQR_DT_BF16;
    expect_bad(g, 11, 13, &bad, "section \"codebook\" is BF16");
    bad = m;
    bad.s[1].dtype = SPQR_DT_U16;
    expect_bad(g, 11, 13, &bad, "\"indices\" has dtype U16");
    bad = m;
    bad.s[1].bytes -= 1;
    expect_bad(g, 11, 13, &bad, "the index stream has");
    bad = m;
    bad.s[1].bytes += 8;
    expect_bad(g, 11, 13, &bad, "the index stream has");

    /* contents */
    const uint64_t bits = (uint64_t)L->nb * 13 * 3;
    /* field 17 := 7 (>= n = 5) */
    const uint64_t f17 = 17 * 3;
    uint8_t save[2] = {ix[f17 / 8], ix[f17 / 8 + 1]};
    uint16_t w = (uint16_t)(ix[f17 / 8] | ix[f17 / 8 + 1] << 8);
    w |= (uint16_t)(7u << (f17 % 8));
    ix[f17 / 8] = (uint8_t)w;
    ix[f17 / 8 + 1] = (uint8_t)(w >> 8);
    expect_bad(g, 11, 13, &m, "index 7 of sub-vector (1, 4) is >= n = 5");
    ix[f17 / 8] = save[0];
    ix[f17 / 8 + 1] = save[1];
    /* a padding bit right after the last field, then one in the slack */
    ix[bits / 8] ^= (uint8_t)(1u << (bits % 8));
    expect_bad(g, 11, 13, &m, "padding bits are not zero");
    ix[bits / 8] ^= (uint8_t)(1u << (bits % 8));
    ix[L->idx_bytes - 1] = 1;
    expect_bad(g, 11, 13, &m, "padding bits are not zero");
    ix[L->idx_bytes - 1] = 0;
    /* a codebook entry that is inf / NaN */
    cb[9] = 0x7c00;
    expect_bad(g, 11, 13, &m, "codebook entry 2, component 1 is not finite");
    cb[9] = 0x7e01;
    expect_bad(g, 11, 13, &m, "not finite");
    cb[9] = L->codebook[9];
    assert_int_equal(f->open(g, 11, 13, mem_find, &m, &p), SPQR_OK); /* all restored */
    f->free(p);

    /* n = 1: 1-bit indices that must all be 0 */
    spqr_cc_layer *one = rand_layer(3, 5, 2, 1);
    mem_secs m1;
    m1.n = f->sections(one, m1.s, 4);
    uint8_t *ix1 = xmalloc(one->idx_bytes);
    memcpy(ix1, one->idx, one->idx_bytes);
    m1.s[1].data = ix1;
    cJSON *g1 = geometry_of(one);
    assert_int_equal(f->open(g1, 3, 5, mem_find, &m1, &p), SPQR_OK);
    f->free(p);
    ix1[0] |= 4; /* field 2 := 1 */
    expect_bad(g1, 3, 5, &m1, "index 1 of sub-vector (0, 2) is >= n = 1");
    cJSON_Delete(g1);
    free(ix1);
    spqr_cc_layer_free(one);

    cJSON_Delete(g);
    free(ix);
    free(cb);
    spqr_cc_layer_free(L);
}

/* ---- files ------------------------------------------------------------------------ */

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

static void same_sections(const void *a, const void *b) {
    spqr_qsection sa[4], sb[4];
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    assert_int_equal(f->sections(a, sa, 4), 2);
    assert_int_equal(f->sections(b, sb, 4), 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(sa[i].name, sb[i].name);
        assert_int_equal(sa[i].dtype, sb[i].dtype);
        assert_int_equal(sa[i].bytes, sb[i].bytes);
        assert_memory_equal(sa[i].data, sb[i].data, sa[i].bytes);
    }
}

/* sections through the container, read back with open(): identical bytes,
 * weights and products */
static void test_section_roundtrip(void **state) {
    (void)state;
    tu_seed(31);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    for (size_t k = 0; k < sizeof k_shapes / sizeof *k_shapes; k++) {
        const shape *s = &k_shapes[k];
        spqr_cc_layer *L = rand_layer(s->rows, s->cols, s->d, s->n);
        char path[4200];
        snprintf(path, sizeof path, "%s/cc%zu.spqr", tu_tmpdir(), k);
        spqr_cwriter *w = NULL;
        assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
        spqr_qsection sec[SPQR_QFORMAT_MAX_SECTIONS];
        int n = f->sections(L, sec, SPQR_QFORMAT_MAX_SECTIONS);
        assert_int_equal(n, 2);
        for (int i = 0; i < n; i++) {
            char name[64];
            snprintf(name, sizeof name, "L.%s", sec[i].name);
            uint64_t dd = sec[i].bytes / spqr_dtype_size(sec[i].dtype);
            assert_int_equal(sec[i].bytes % spqr_dtype_size(sec[i].dtype), 0);
            assert_int_equal(spqr_cwriter_add(w, name, sec[i].dtype, 1, &dd, sec[i].data, sec[i].bytes), SPQR_OK);
        }
        assert_int_equal(spqr_cwriter_set_metadata(w, "{}"), SPQR_OK);
        assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
        cJSON *g = geometry_of(L);
        /* the geometry survives JSON text */
        char *txt = cJSON_PrintUnformatted(g);
        cJSON *g2 = cJSON_Parse(txt);
        free(txt);
        spqr_container *c = NULL;
        assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
        find_ctx fc = {c, "L"};
        void *back = NULL;
        spqr_status st = f->open(g2, s->rows, s->cols, find_sec, &fc, &back);
        if (st) fprintf(stderr, "%s\n", spqr_last_error());
        assert_int_equal(st, SPQR_OK);
        const spqr_cc_layer *B = back;
        assert_null(B->own_cb); /* borrowed from the mapped file */
        assert_null(B->own_idx);
        same_sections(L, back);
        assert_int_equal(f->bytes(back), f->bytes(L));
        assert_true(f->formula_bits(back) == f->formula_bits(L));
        const size_t RC = (size_t)s->rows * s->cols;
        float *a = xmalloc(sizeof(float) * RC), *b = xmalloc(sizeof(float) * RC);
        assert_int_equal(f->dequantize(L, a), SPQR_OK);
        assert_int_equal(f->dequantize(back, b), SPQR_OK);
        assert_memory_equal(a, b, sizeof(float) * RC);
        float x[2048], y1[1100], y2[1100];
        for (int i = 0; i < s->cols; i++) x[i] = tu_rand_normal();
        assert_int_equal(f->gemm(L, x, 1, y1), SPQR_OK);
        assert_int_equal(f->gemm(back, x, 1, y2), SPQR_OK);
        assert_memory_equal(y1, y2, sizeof(float) * s->rows);
        free(a);
        free(b);
        f->free(back);
        cJSON_Delete(g);
        cJSON_Delete(g2);
        spqr_container_close(c);
        spqr_cc_layer_free(L);
    }
}

/* a whole model: the tiny HF model with block 0's linears in cluscomp,
 * written by the .spqr writer, loaded by the .spqr loader, inspected */
static void test_model_roundtrip(void **state) {
    (void)state;
    tu_seed(41);
    const char *dir = make_model("cc", OK_MODEL, "LlamaForCausalLM", "float32");
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(dir, NULL, &m), SPQR_OK);
    const int ds[SPQR_LIN_PER_BLOCK] = {4, 3, 8, 1, 5, 16, 2};
    const int ns[SPQR_LIN_PER_BLOCK] = {16, 5, 300, 7, 1, 64, 4096};
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        spqr_linear *l = &m->blocks[0].lin[k];
        spqr_cc_layer *L = rand_layer(l->rows, l->cols, ds[k], ns[k]);
        spqr_linear_set(l, &spqr_qformat_cluscomp, L, l->rows, l->cols);
    }
    ((spqr_cc_layer *)m->blocks[0].lin[SPQR_LIN_UP].payload)->cb_share = 2; /* accounting only */
    char path[4200];
    snprintf(path, sizeof path, "%s/ccmodel.spqr", tu_tmpdir());
    spqr_mwriter *w = NULL;
    assert_int_equal(spqr_mwriter_open(path, m, &w), SPQR_OK);
    for (int b = 0; b < m->cfg.n_layers; b++)
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) assert_int_equal(spqr_mwriter_add_linear(w, b, k, &m->blocks[b].lin[k]), SPQR_OK);
    assert_int_equal(spqr_mwriter_finish(w, "{\"method\": \"test\"}"), SPQR_OK);

    spqr_model *q = NULL;
    spqr_status st = spqr_model_load(path, NULL, &q);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        const spqr_linear *a = &m->blocks[0].lin[k], *b = &q->blocks[0].lin[k];
        assert_ptr_equal(b->fmt, &spqr_qformat_cluscomp);
        same_sections(a->payload, b->payload);
        const spqr_cc_layer *La = a->payload, *Lb = b->payload;
        assert_int_equal(La->cb_share, Lb->cb_share);
        const size_t RC = (size_t)a->rows * a->cols;
        float *wa = xmalloc(sizeof(float) * RC), *wb = xmalloc(sizeof(float) * RC);
        assert_int_equal(a->fmt->dequantize(a->payload, wa), SPQR_OK);
        assert_int_equal(b->fmt->dequantize(b->payload, wb), SPQR_OK);
        assert_memory_equal(wa, wb, sizeof(float) * RC);
        free(wa);
        free(wb);
    }
    /* the same logits from memory and from the file */
    const int32_t toks[5] = {1, 17, 300, 42, 7};
    float *la = xmalloc(sizeof(float) * 5 * TV), *lb = xmalloc(sizeof(float) * 5 * TV);
    assert_int_equal(spqr_forward(m, toks, 5, la), SPQR_OK);
    assert_int_equal(spqr_forward(q, toks, 5, lb), SPQR_OK);
    assert_memory_equal(la, lb, sizeof(float) * 5 * TV);
    free(la);
    free(lb);

    spqr_file_info *fi = NULL;
    assert_int_equal(spqr_inspect_file(path, 1, &fi), SPQR_OK);
    assert_int_equal(fi->n_layers, SPQR_LIN_PER_BLOCK);
    assert_string_equal(fi->layers[0].layout, "cluscomp");
    assert_string_equal(fi->layers[0].params, "d4 n16 i4");
    assert_string_equal(fi->layers[SPQR_LIN_UP].params, "d16 n64 i6 cb/2");
    assert_int_equal(fi->layers[0].n_outliers, 0);
    assert_int_equal(fi->layers[0].bytes, (int64_t)spqr_qformat_cluscomp.bytes(m->blocks[0].lin[0].payload));
    assert_true(fabs(fi->layers[0].formula_bits - spqr_qformat_cluscomp.formula_bits(m->blocks[0].lin[0].payload)) < 1e-9);
    spqr_file_info_free(fi);
    spqr_model_free(q);
    spqr_model_free(m);
}

/* ---- training hooks (train_check.h states the tolerances) ---------------------------- */

static const shape k_train_shapes[] = {
    {7, 5, 4, 3},   {13, 33, 3, 5},  {50, 20, 33, 17}, {31, 45, 12, 33}, {1, 1, 1, 1},
    {9, 9, 5, 9},   {40, 1031, 8, 300}, {257, 129, 4, 100}, {130, 40, 16, 5000}, {70, 129, 20, 257},
};

/* dL/dC by a direct double loop over the definition */
static void naive_grad(const spqr_cc_layer *L, const float *G, double *g) {
    memset(g, 0, sizeof(double) * (size_t)L->n * L->d);
    for (int b = 0; b < L->nb; b++)
        for (int t = 0; t < L->d && b * L->d + t < L->rows; t++)
            for (int j = 0; j < L->cols; j++)
                g[(size_t)spqr_cc_index(L, b, j) * L->d + t] += G[(size_t)(b * L->d + t) * L->cols + j];
}

static void test_train_hooks(void **state) {
    (void)state;
    tu_seed(51);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    for (size_t k = 0; k < sizeof k_train_shapes / sizeof *k_train_shapes; k++) {
        const shape *s = &k_train_shapes[k];
        spqr_cc_layer *L = rand_layer(s->rows, s->cols, s->d, s->n);
        assert_int_equal(f->train_count(L), (size_t)s->n * s->d);
        tc_roundtrip(f, L, s->rows, s->cols);
        /* the gradient against a direct double sum: |g - ref| <= 1e-6 * sum |G| of the entry */
        const size_t nd = (size_t)s->n * s->d, RC = (size_t)s->rows * s->cols;
        float *G = xmalloc(sizeof(float) * RC), *g = xmalloc(sizeof(float) * nd);
        double *ref = xmalloc(sizeof(double) * nd), *mag = xmalloc(sizeof(double) * nd);
        for (size_t i = 0; i < RC; i++) G[i] = tu_rand_normal();
        float *absG = xmalloc(sizeof(float) * RC);
        for (size_t i = 0; i < RC; i++) absG[i] = fabsf(G[i]);
        naive_grad(L, absG, mag);
        naive_grad(L, G, ref);
        memset(g, 0, sizeof(float) * nd);
        f->train_grad(L, G, g);
        for (size_t i = 0; i < nd; i++)
            if (!(fabs(g[i] - ref[i]) <= 1e-6 * mag[i] + fabs(ref[i]) * 6e-8)) {
                fprintf(stderr, "%dx%d d%d n%d: g[%zu] = %.9g, ref %.9g\n", s->rows, s->cols, s->d, s->n, i,
                        (double)g[i], ref[i]);
                fail();
            }
        free(G); free(g); free(ref); free(mag); free(absG);
        tc_grad_fd(f, L, s->rows, s->cols, 40);
        float *th = tc_perturb(f, L);
        /* cb32 follows the stored fp16 codebook */
        for (size_t i = 0; i < nd; i++) assert_true(L->cb32[i] == spqr_f16_to_f32(L->codebook[i]) && L->cb32[i] == th[i]);
        for (int i = 0; i < SPQR_CC_CB_PAD; i++) assert_true(L->cb32[nd + i] == 0.0f);
        tc_kernels(f, L, s->rows, s->cols, 2e-5);
        tc_rejects(f, L, s->rows, s->cols);
        free(th);
        spqr_cc_layer_free(L);
    }
    assert_null(spqr_qformat_dense.train_count); /* dense: nothing to train */
}

/* A layer opened from a file borrows the mapped codebook: train_set copies
 * it (the file's bytes stay as written) and the kernels see the new values. */
static void test_train_borrowed(void **state) {
    (void)state;
    tu_seed(53);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    const shape sh[] = {{13, 33, 3, 5}, {40, 1031, 8, 300}};
    for (size_t k = 0; k < 2; k++) {
        const shape *s = &sh[k];
        spqr_cc_layer *L = rand_layer(s->rows, s->cols, s->d, s->n);
        char path[4200];
        snprintf(path, sizeof path, "%s/cctrain%zu.spqr", tu_tmpdir(), k);
        spqr_cwriter *w = NULL;
        assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
        spqr_qsection sec[SPQR_QFORMAT_MAX_SECTIONS];
        const int n = f->sections(L, sec, SPQR_QFORMAT_MAX_SECTIONS);
        for (int i = 0; i < n; i++) {
            char name[64];
            snprintf(name, sizeof name, "L.%s", sec[i].name);
            uint64_t dd = sec[i].bytes / spqr_dtype_size(sec[i].dtype);
            assert_int_equal(spqr_cwriter_add(w, name, sec[i].dtype, 1, &dd, sec[i].data, sec[i].bytes), SPQR_OK);
        }
        assert_int_equal(spqr_cwriter_set_metadata(w, "{}"), SPQR_OK);
        assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
        spqr_container *c = NULL;
        assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
        find_ctx fc = {c, "L"};
        cJSON *g = geometry_of(L);
        void *back = NULL;
        assert_int_equal(f->open(g, s->rows, s->cols, find_sec, &fc, &back), SPQR_OK);
        spqr_cc_layer *B = back;
        assert_null(B->own_cb);
        const uint16_t *mapped = B->codebook;
        /* a refused set copies nothing */
        const size_t nd = (size_t)s->n * s->d;
        float *bad = xmalloc(sizeof(float) * nd);
        f->train_get(B, bad);
        bad[nd / 2] = NAN;
        assert_int_equal(f->train_set(B, bad), SPQR_ERR_NUMERIC);
        assert_ptr_equal(B->codebook, mapped);
        free(bad);
        tc_roundtrip(f, B, s->rows, s->cols); /* copies the codebook */
        float *th = tc_perturb(f, B);
        assert_non_null(B->own_cb);
        assert_ptr_equal(B->codebook, B->own_cb);
        /* the mapped section still holds the written codebook */
        assert_memory_equal(mapped, L->codebook, nd * sizeof(uint16_t));
        /* the same theta on the owned layer: identical weights and products */
        tc_set_ok(f, L, th);
        same_sections(L, B);
        const size_t RC = (size_t)s->rows * s->cols;
        float *wa = tc_deq(f, L, s->rows, s->cols), *wb = tc_deq(f, B, s->rows, s->cols);
        assert_memory_equal(wa, wb, sizeof(float) * RC);
        tc_kernels(f, B, s->rows, s->cols, 2e-5);
        tc_grad_fd(f, B, s->rows, s->cols, 20);
        free(wa); free(wb); free(th);
        f->free(back);
        cJSON_Delete(g);
        spqr_container_close(c);
        spqr_cc_layer_free(L);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_bits_bytes), cmocka_unit_test(test_pack_roundtrip),
        cmocka_unit_test(test_dequant_definition), cmocka_unit_test(test_ref_vs_dequant),
        cmocka_unit_test(test_variants),         cmocka_unit_test(test_decode_all_ibits),
        cmocka_unit_test(test_variants_large),
        cmocka_unit_test(test_accounting),       cmocka_unit_test(test_build_bad_args),
        cmocka_unit_test(test_open_bad_inputs),  cmocka_unit_test(test_section_roundtrip),
        cmocka_unit_test(test_model_roundtrip),
        cmocka_unit_test(test_train_hooks),      cmocka_unit_test(test_train_borrowed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
