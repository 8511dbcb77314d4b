/* test_cuda.c - CUDA SpQR kernels against a CPU reference.
 *
 * Every kernel variant (auto, batch-1 GEMV, token-tile GEMM with 8/16/32
 * tokens per pass, the CUDA-core reference kernel, several split-K factors)
 * is compared with y = W_deq x computed on the CPU in double precision from a
 * dense matrix dequantized exactly as qlayer.h defines it, on random layers
 * of odd sizes, all wbits 2..8, beta1 8/16/24/32/48/128 (and 5, 12: the
 * generic path), beta2 0/3/16/32, with and without outliers, n_tok 1..64.
 *
 * Tolerances, with m = |scale| (|code| + |zero|) + |outlier| (the size of the
 * terms the kernels add):
 *  - reference kernel on layouts that hold the statistics exactly: for every
 *    output |y - ref| <= 1e-4 * sum_c m_rc |x_c| and over the whole output
 *    ||y - ref||_2 / ||ref||_2 <= 2e-5 (float32 weights, double sums);
 *  - the batch-1 tensor-core kernel (exact codes, float32 statistics, x as
 *    two fp16 terms, fp32 sums that carry a 1024 * x offset per code):
 *    |y - ref| <= 1e-3 * sum_c m_rc |x_c|, relative L2 <= 1e-3;
 *  - the batch-T tensor-core kernel (and any kernel where the device holds
 *    fp16 statistics): fp16 weights (w = c*s - s*z rounded to fp16,
 *    s and s*z in fp16) and fp16 activations with fp32 accumulation, like
 *    cuBLAS fp16: |y - ref| <= 2e-3 * sum_c m_rc |x_c| (a bound: about
 *    2^-10 m + 2^-11 |w| per term) and relative L2 <= 1e-2.
 * SPQR_TEST_QUICK=1 runs a subset (for compute-sanitizer).
 * Without a GPU (or in builds without CUDA) the tests print
 * "SKIP: no CUDA device" and pass.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/spqr/cuda/spqr_cuda.h"
#include "cuda_util.h"
#include "formats/spqr/qlayer.h"
#include "testutil.h"

#define TOL_ELEM 1e-4 /* reference kernel, exact statistics (float32 weights, double sums) */
#define TOL_REL 2e-5
#define TOL_ELEM_GEMV 1e-3 /* batch-1 kernel: exact codes and float32 statistics, x as two fp16 terms */
#define TOL_REL_GEMV 1e-3
#define TOL_ELEM_F16 2e-3 /* tensor-core kernels: fp16 weights and activations, fp32 sums */
#define TOL_REL_F16 1e-2


/* ---- random layers ------------------------------------------------------ */

typedef struct cfg {
    int rows, cols, wbits, beta1, beta2, sbits, zbits;
    double ol_frac;
} cfg;

static uint16_t h(float f) { return spqr_f32_to_f16(f); }

static void layer_free(spqr_qlayer *q) { spqr_qlayer_free(q); }

static void layer_random(spqr_qlayer *q, const cfg *c) {
    memset(q, 0, sizeof *q);
    const int R = c->rows, C = c->cols;
    q->rows = R;
    q->cols = C;
    q->wbits = c->wbits;
    q->beta1 = c->beta1;
    q->beta2 = c->beta2;
    q->sbits = c->beta2 ? c->sbits : 0;
    q->zbits = c->beta2 ? c->zbits : 0;
    q->ngroups = (C + c->beta1 - 1) / c->beta1;
    q->nrb = c->beta2 ? (R + c->beta2 - 1) / c->beta2 : 0;
    const size_t n = (size_t)R * C, ns = (size_t)q->ngroups * R;
    const uint32_t qmax = (1u << c->wbits) - 1u;
    q->perm = malloc(sizeof(int32_t) * C);
    for (int j = 0; j < C; j++) q->perm[j] = j;
    for (int j = C - 1; j > 0; j--) {
        int k = (int)(tu_rand_u64() % (uint64_t)(j + 1));
        int32_t t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    q->codes = malloc(n);
    for (size_t i = 0; i < n; i++) q->codes[i] = (uint8_t)(tu_rand_u64() % (qmax + 1));
    if (c->beta2) {
        const size_t n2 = (size_t)q->ngroups * q->nrb;
        q->scale_code = malloc(ns);
        q->zero_code = malloc(ns);
        for (size_t i = 0; i < ns; i++) {
            q->scale_code[i] = (uint8_t)(tu_rand_u64() % (1u << c->sbits));
            q->zero_code[i] = (uint8_t)(tu_rand_u64() % (1u << c->zbits));
        }
        q->s2_scale = malloc(2 * n2);
        q->s2_zero = malloc(2 * n2);
        q->z2_scale = malloc(2 * n2);
        q->z2_zero = malloc(2 * n2);
        const float zspan = (float)qmax / (float)((1u << c->zbits) - 1u + 1u);
        for (size_t i = 0; i < n2; i++) {
            q->s2_scale[i] = h(0.002f + 0.02f * tu_rand_uniform());
            q->s2_zero[i] = h(-1.0f + 0.9f * tu_rand_uniform()); /* scales stay in fp16's normal range */
            q->z2_scale[i] = h(zspan * (0.6f + 0.8f * tu_rand_uniform()));
            q->z2_zero[i] = h(tu_rand_uniform() - 0.5f);
        }
    } else {
        q->scale_f16 = malloc(2 * ns);
        q->zero_f16 = malloc(2 * ns);
        for (size_t i = 0; i < ns; i++) {
            q->scale_f16[i] = h(0.002f + 0.03f * tu_rand_uniform());
            q->zero_f16[i] = h((float)qmax * tu_rand_uniform());
        }
    }
    q->row_ptr = calloc((size_t)R + 1, sizeof(uint32_t));
    tu_spqr_random_outliers(q, c->ol_frac, 0.3f);
}

/* dense float32 weights in PERMUTED column order, exactly per qlayer.h;
 * mag (if not NULL) receives |scale|*(|code|+|zero|) + |outlier|, the size of
 * the terms the kernels actually add (they apply the zero point per group) */
static float *dequant_perm(const spqr_qlayer *q, float **mag) {
    const int R = q->rows, C = q->cols;
    float *w = malloc(sizeof(float) * (size_t)R * C);
    float *m = malloc(sizeof(float) * (size_t)R * C);
    *mag = m;
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < C; j++) {
            const int g = j / q->beta1;
            float scale, zero;
            if (q->beta2 > 0) {
                const int rb = r / q->beta2;
                const size_t i2 = (size_t)g * q->nrb + rb, i1 = (size_t)g * R + r;
                scale = spqr_f16_to_f32(q->s2_scale[i2]) *
                        ((float)q->scale_code[i1] - spqr_f16_to_f32(q->s2_zero[i2]));
                zero = spqr_f16_to_f32(q->z2_scale[i2]) *
                       ((float)q->zero_code[i1] - spqr_f16_to_f32(q->z2_zero[i2]));
            } else {
                scale = spqr_f16_to_f32(q->scale_f16[(size_t)g * R + r]);
                zero = spqr_f16_to_f32(q->zero_f16[(size_t)g * R + r]);
            }
            w[(size_t)r * C + j] = scale * ((float)q->codes[(size_t)r * C + j] - zero);
            m[(size_t)r * C + j] = fabsf(scale) * ((float)q->codes[(size_t)r * C + j] + fabsf(zero));
        }
        for (uint32_t k = q->row_ptr[r]; k < q->row_ptr[r + 1]; k++) {
            float *p = &w[(size_t)r * C + q->ol_col[k]];
            *p = *p + spqr_f16_to_f32(q->ol_val[k]);
            m[(size_t)r * C + q->ol_col[k]] += fabsf(spqr_f16_to_f32(q->ol_val[k]));
        }
    }
    return w;
}

/* ref[t][r] (double) and asum[t][r] = sum mag*|x| */
static void cpu_ref(const spqr_qlayer *q, const float *wp, const float *mag, const float *x, int n_tok,
                    double *ref, double *asum) {
    const int R = q->rows, C = q->cols;
    double *xp = malloc(sizeof(double) * C);
    for (int t = 0; t < n_tok; t++) {
        for (int j = 0; j < C; j++) xp[j] = x[(size_t)t * C + q->perm[j]];
        for (int r = 0; r < R; r++) {
            const float *wr = wp + (size_t)r * C, *mr = mag + (size_t)r * C;
            double s = 0, a = 0;
            for (int j = 0; j < C; j++) {
                s += (double)wr[j] * xp[j];
                a += (double)mr[j] * fabs(xp[j]);
            }
            ref[(size_t)t * R + r] = s;
            asum[(size_t)t * R + r] = a;
        }
    }
    free(xp);
}

typedef struct gpu_case {
    spqr_cuda_qlinear *W;
    float *dX, *dY;
    float *x, *y;
    double *ref, *asum;
    int max_tok;
} gpu_case;

static int g_checks;
static double g_worst_rel[3], g_worst_elem[3];

/* run one variant and compare; returns 0 on success */
static int check_variant(const spqr_qlayer *q, gpu_case *gc, int n_tok, int kernel, int nsplit,
                         int max_tokens, int no_pdl, const char *tag) {
    /* precision class of the kernel that runs */
    spqr_cuda_qlinear_info info;
    spqr_cuda_qlinear_get_info(gc->W, &info);
    const int ref = kernel == SPQR_CUDA_KERNEL_REF || (kernel == SPQR_CUDA_KERNEL_AUTO && !info.fast);
    const int gemv = !ref && (kernel == SPQR_CUDA_KERNEL_GEMV || (kernel == SPQR_CUDA_KERNEL_AUTO && n_tok == 1));
    const int cls = !info.exact_stats ? 2 : ref ? 0 : gemv ? 1 : 2; /* 0 exact, 1 batch-1 kernel, 2 fp16 */
    static const double tol_e[3] = {TOL_ELEM, TOL_ELEM_GEMV, TOL_ELEM_F16}, tol_r[3] = {TOL_REL, TOL_REL_GEMV, TOL_REL_F16};
    const double tol_elem = tol_e[cls], tol_rel = tol_r[cls];
    const int R = q->rows;
    const size_t ny = (size_t)n_tok * R;
    assert_int_equal(spqr_cuda_memset(gc->dY, 0xff, ny * sizeof(float)), SPQR_OK); /* NaN poison */
    spqr_cuda_qgemm_opts o = {kernel, nsplit, max_tokens, no_pdl};
    spqr_status st = spqr_cuda_qgemm_ex(gc->W, gc->dX, n_tok, gc->dY, &o);
    if (st != SPQR_OK) {
        printf("FAIL %s: qgemm returned %s: %s\n", tag, spqr_status_string(st), spqr_last_error());
        return 1;
    }
    st = spqr_cuda_synchronize();
    if (st != SPQR_OK) {
        printf("FAIL %s: %s\n", tag, spqr_last_error());
        return 1;
    }
    assert_int_equal(spqr_cuda_memcpy_d2h(gc->y, gc->dY, ny * sizeof(float)), SPQR_OK);
    double e2 = 0, r2 = 0, worst = 0;
    size_t bad = 0;
    for (size_t i = 0; i < ny; i++) {
        const double d = (double)gc->y[i] - gc->ref[i];
        if (!isfinite(gc->y[i])) {
            bad++;
            continue;
        }
        e2 += d * d;
        r2 += gc->ref[i] * gc->ref[i];
        const double rel = fabs(d) / (gc->asum[i] + 1e-30);
        if (fabs(d) > 1e-30 && rel > worst) worst = rel;
    }
    const double rel = r2 > 0 ? sqrt(e2 / r2) : sqrt(e2);
    g_checks++;
    double *wr = &g_worst_rel[cls], *we = &g_worst_elem[cls];
    if (rel > *wr) *wr = rel;
    if (worst > *we) *we = worst;
    if (bad || worst > tol_elem || rel > tol_rel) {
        printf("FAIL %s: %zu non-finite/unwritten, worst elem err %.3g (tol %.0e), rel L2 %.3g (tol %.0e)\n",
               tag, bad, worst, tol_elem, rel, tol_rel);
        return 1;
    }
    return 0;
}

static int run_config(const cfg *c, const int *toks, int ntoks, int thorough) {
    spqr_qlayer q;
    layer_random(&q, c);
    float *mag = NULL;
    float *wp = dequant_perm(&q, &mag);
    int max_tok = 0;
    for (int i = 0; i < ntoks; i++)
        if (toks[i] > max_tok) max_tok = toks[i];
    gpu_case gc;
    memset(&gc, 0, sizeof gc);
    spqr_status st = spqr_cuda_qlinear_upload(&q, &gc.W);
    if (st != SPQR_OK) {
        printf("FAIL upload %dx%d: %s\n", c->rows, c->cols, spqr_last_error());
        free(wp);
        free(mag);
        layer_free(&q);
        return 1;
    }
    const size_t nx = (size_t)max_tok * c->cols, ny = (size_t)max_tok * c->rows;
    gc.x = malloc(sizeof(float) * nx);
    gc.y = malloc(sizeof(float) * ny);
    gc.ref = malloc(sizeof(double) * ny);
    gc.asum = malloc(sizeof(double) * ny);
    for (size_t i = 0; i < nx; i++) gc.x[i] = tu_rand_normal();
    assert_int_equal(spqr_cuda_malloc((void **)&gc.dX, nx * sizeof(float)), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&gc.dY, ny * sizeof(float)), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_h2d(gc.dX, gc.x, nx * sizeof(float)), SPQR_OK);
    cpu_ref(&q, wp, mag, gc.x, max_tok, gc.ref, gc.asum);

    int fails = 0;
    spqr_cuda_qlinear_info info;
    spqr_cuda_qlinear_get_info(gc.W, &info);
    const int tc = info.fast; /* tensor-core kernels apply */
    if (tc != (c->beta1 == 8 || c->beta1 % 16 == 0)) {
        printf("FAIL %dx%d b1=%d: fast layout %d\n", c->rows, c->cols, c->beta1, tc);
        fails++;
    }
    for (int i = 0; i < ntoks; i++) {
        const int n = toks[i];
        char tag[256];
        snprintf(tag, sizeof tag, "%dx%d w%d b1=%d b2=%d s%d/z%d ol=%.3f n_tok=%d", c->rows, c->cols,
                 c->wbits, c->beta1, c->beta2, c->sbits, c->zbits, c->ol_frac, n);
        char t2[320];
        snprintf(t2, sizeof t2, "%s auto", tag);
        fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_AUTO, 0, 0, 0, t2);
        if (!thorough) continue;
        snprintf(t2, sizeof t2, "%s ref", tag);
        if (n <= 7) fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_REF, 0, 0, 0, t2);
        if (!tc) {
            spqr_cuda_qgemm_opts o = {SPQR_CUDA_KERNEL_GEMM, 0, 0, 0};
            if (spqr_cuda_qgemm_ex(gc.W, gc.dX, n, gc.dY, &o) != SPQR_ERR_UNSUPPORTED) {
                printf("FAIL %s: GEMM without the fast layout was not refused\n", tag);
                fails++;
            }
            continue;
        }
        if (n <= 2) {
            snprintf(t2, sizeof t2, "%s gemv", tag);
            fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMV, 0, 0, 0, t2);
            snprintf(t2, sizeof t2, "%s gemv split=1 nopdl", tag);
            fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMV, 1, 0, 1, t2);
            snprintf(t2, sizeof t2, "%s gemv split=3", tag);
            fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMV, 3, 0, 0, t2);
            snprintf(t2, sizeof t2, "%s gemv split=7", tag);
            fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMV, 7, 0, 0, t2);
        }
        static const int mts[4] = {8, 16, 32, 64};
        for (int m = 0; m < 4; m++) {
            snprintf(t2, sizeof t2, "%s gemm max_tokens=%d", tag, mts[m]);
            fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMM, 0, mts[m], 0, t2);
        }
        snprintf(t2, sizeof t2, "%s gemm split=1", tag);
        fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMM, 1, 0, 0, t2);
        snprintf(t2, sizeof t2, "%s gemm split=5", tag);
        fails += check_variant(&q, &gc, n, SPQR_CUDA_KERNEL_GEMM, 5, 0, 1, t2);
    }
    spqr_cuda_free(gc.dX);
    spqr_cuda_free(gc.dY);
    spqr_cuda_qlinear_free(gc.W);
    free(gc.x);
    free(gc.y);
    free(gc.ref);
    free(gc.asum);
    free(wp);
    free(mag);
    layer_free(&q);
    return fails;
}

static void report(const char *what) {
    static const char *name[3] = {"reference (exact statistics)", "batch-1 kernel", "fp16 (batch-T kernel, or fp16 statistics)"};
    static const double te[3] = {TOL_ELEM, TOL_ELEM_GEMV, TOL_ELEM_F16}, tr[3] = {TOL_REL, TOL_REL_GEMV, TOL_REL_F16};
    printf("%s: %d comparisons\n", what, g_checks);
    for (int c = 0; c < 3; c++) {
        printf("  %s: worst elem err %.3g (tol %.0e), worst rel L2 %.3g (tol %.0e)\n", name[c], g_worst_elem[c], te[c],
               g_worst_rel[c], tr[c]);
        g_worst_elem[c] = g_worst_rel[c] = 0;
    }
    g_checks = 0;
}

/* ---- tests --------------------------------------------------------------- */

static void test_device(void **state) {
    (void)state;
    if (!tu_have_gpu()) return;
    size_t f = 0, t = 0;
    assert_int_equal(spqr_cuda_mem_info(&f, &t), SPQR_OK);
    assert_true(f > 0 && t >= f);
    setenv("SPQR_GPU_MEMORY_MIB", "100", 1); /* the cap applies to the free figure only */
    size_t f2 = 0, t2 = 0;
    assert_int_equal(spqr_cuda_mem_info(&f2, &t2), SPQR_OK);
    unsetenv("SPQR_GPU_MEMORY_MIB");
    assert_true(f2 <= (size_t)100 << 20 && t2 == t);
}

/* every wbits x beta1 x beta2 x outliers, small odd shapes, all variants */
static void test_grid(void **state) {
    (void)state;
    if (!tu_have_gpu()) return;
    tu_seed(1234);
    static const int b1s[] = {8, 16, 24, 32, 48, 128, 5, 12};
    static const int b2s[] = {0, 16, 32, 3};
    static const int toks[] = {1, 2, 7, 16, 33};
    int fails = 0, idx = 0;
    const int quick = getenv("SPQR_TEST_QUICK") != NULL; /* every 9th config */
    for (int wb = 2; wb <= 8; wb++)
        for (size_t i1 = 0; i1 < sizeof b1s / sizeof *b1s; i1++)
            for (size_t i2 = 0; i2 < sizeof b2s / sizeof *b2s; i2++)
                for (int ol = 0; ol < 2; ol++, idx++) {
                    cfg c = {17 + 13 * (idx % 4), 300 + 37 * (idx % 5), wb, b1s[i1], b2s[i2],
                             1 + idx % 6, 1 + (idx / 4) % 4, ol ? 0.03 : 0};
                    if (quick && idx % 9) continue;
                    if (!(b1s[i1] == 8 || b1s[i1] % 16 == 0)) { /* reference path only: fewer tokens */
                        static const int t2[] = {1, 3};
                        fails += run_config(&c, t2, 2, 1);
                    } else {
                        fails += run_config(&c, toks, 5, 1);
                    }
                }
    report("grid");
    assert_int_equal(fails, 0);
}

/* odd and larger shapes, batches up to 64, more split factors */
static void test_shapes(void **state) {
    (void)state;
    if (!tu_have_gpu()) return;
    tu_seed(99);
    static const int toks[] = {1, 2, 7, 16, 33, 64};
    static const int shapes[][2] = {{1, 1}, {7, 17}, {17, 7}, {1, 4097}, {4097, 1}, {172, 4097},
                                    {4097, 172}, {256, 1024}, {33, 2056}, {160, 65600}};
    int fails = 0;
    const int quick = getenv("SPQR_TEST_QUICK") != NULL;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        if (quick && (s == 5 || s == 6 || s == 9)) continue;
        for (int v = 0; v < 4; v++) {
            const int wb = 2 + (int)((s * 4 + v) % 7);
            const int b1 = (v == 0) ? 16 : (v == 1) ? 8 : (v == 2) ? 48 : 128;
            cfg c = {shapes[s][0], shapes[s][1], wb, b1, (v & 1) ? 0 : 16, 3, 3, 0.01};
            const int big = (size_t)c.rows * c.cols > 400000;
            static const int tsmall[] = {1, 16};
            fails += run_config(&c, big ? tsmall : toks, big ? 2 : 6, !big || v < 2);
        }
    }
    { /* dense outliers: more than the per-chunk staging capacity (64 per 16x256) */
        static const int t3[] = {1, 5, 16};
        cfg c = {40, 700, 3, 16, 16, 3, 3, 0.15};
        fails += run_config(&c, t3, 3, 1);
        cfg c2 = {33, 530, 4, 24, 0, 3, 3, 0.12};
        fails += run_config(&c2, t3, 3, 1);
    }
    report("shapes");
    assert_int_equal(fails, 0);
}

static void test_errors(void **state) {
    (void)state;
    if (!tu_have_gpu()) {
        spqr_cuda_qlinear *w = (spqr_cuda_qlinear *)1;
        spqr_qlayer q;
        memset(&q, 0, sizeof q);
        assert_int_not_equal(spqr_cuda_qlinear_upload(&q, &w), SPQR_OK);
        assert_null(w);
        return;
    }
    spqr_cuda_qlinear *w = NULL;
    assert_int_equal(spqr_cuda_qlinear_upload(NULL, &w), SPQR_ERR_INVALID_ARG);
    spqr_qlayer q;
    cfg c = {20, 40, 4, 16, 16, 3, 3, 0};
    tu_seed(5);
    layer_random(&q, &c);
    q.wbits = 9;
    assert_int_equal(spqr_cuda_qlinear_upload(&q, &w), SPQR_ERR_INVALID_ARG);
    q.wbits = 4;
    q.perm[3] = 40;
    assert_int_equal(spqr_cuda_qlinear_upload(&q, &w), SPQR_ERR_INVALID_ARG);
    printf("expected error: %s\n", spqr_last_error());
    q.perm[3] = 3;
    assert_int_equal(spqr_cuda_qlinear_upload(&q, &w), SPQR_OK);
    /* the same layer with the free memory capped below the upload's reserve */
    spqr_cuda_qlinear *w2 = (spqr_cuda_qlinear *)1;
    setenv("SPQR_GPU_MEMORY_MIB", "32", 1);
    assert_int_equal(spqr_cuda_qlinear_upload(&q, &w2), SPQR_ERR_NO_DEVICE);
    unsetenv("SPQR_GPU_MEMORY_MIB");
    printf("expected error: %s\n", spqr_last_error());
    assert_null(w2);
    float *d = NULL;
    assert_int_equal(spqr_cuda_malloc((void **)&d, 64 * sizeof(float)), SPQR_OK);
    assert_int_equal(spqr_cuda_qgemm(w, d, -1, d), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cuda_qgemm(w, d, 0, d), SPQR_OK);
    assert_int_equal(spqr_cuda_qgemm(w, NULL, 1, d), SPQR_ERR_INVALID_ARG);
    spqr_cuda_free(d);
    spqr_cuda_qlinear_free(w);
    layer_free(&q);

    /* a layer that cannot fit: fails cleanly before touching the arrays */
    spqr_qlayer big;
    memset(&big, 0, sizeof big);
    big.rows = 1 << 20;
    big.cols = 1 << 20;
    big.wbits = 4;
    big.beta1 = 16;
    big.beta2 = 0;
    big.ngroups = big.cols / 16;
    big.perm = (int32_t *)8; /* never dereferenced */
    big.codes = (uint8_t *)8;
    big.scale_f16 = (uint16_t *)8;
    big.zero_f16 = (uint16_t *)8;
    w = NULL;
    assert_int_equal(spqr_cuda_qlinear_upload(&big, &w), SPQR_ERR_NO_DEVICE);
    assert_null(w);
    printf("expected error: %s\n", spqr_last_error());
}

static void test_helpers(void **state) {
    (void)state;
    if (!tu_have_gpu()) return;
    const int R = 37, C = 129, N = 5;
    float *w = malloc(sizeof(float) * R * C), *x = malloc(sizeof(float) * N * C), *y = malloc(sizeof(float) * N * R);
    tu_seed(7);
    for (int i = 0; i < R * C; i++) w[i] = tu_rand_normal();
    for (int i = 0; i < N * C; i++) x[i] = tu_rand_normal();
    float *dw, *dx, *dy;
    uint16_t *hw, *hx, *hy;
    assert_int_equal(spqr_cuda_malloc((void **)&dw, sizeof(float) * R * C), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&dx, sizeof(float) * N * C), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&dy, sizeof(float) * N * R), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&hw, 2 * R * C), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&hx, 2 * N * C), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&hy, 2 * N * R), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_h2d(dw, w, sizeof(float) * R * C), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_h2d(dx, x, sizeof(float) * N * C), SPQR_OK);
    assert_int_equal(spqr_cuda_dense_gemm(SPQR_CUDA_F32, dw, dx, dy, R, C, N), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_d2h(y, dy, sizeof(float) * N * R), SPQR_OK);
    double e32 = 0, e16 = 0;
    uint16_t *y16 = malloc(2 * N * R);
    assert_int_equal(spqr_cuda_f32_to_f16(dw, hw, (size_t)R * C), SPQR_OK);
    assert_int_equal(spqr_cuda_f32_to_f16(dx, hx, (size_t)N * C), SPQR_OK);
    assert_int_equal(spqr_cuda_dense_gemm(SPQR_CUDA_F16, hw, hx, hy, R, C, N), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_d2h(y16, hy, 2 * N * R), SPQR_OK);
    for (int t = 0; t < N; t++)
        for (int r = 0; r < R; r++) {
            double s = 0, a = 0;
            for (int c = 0; c < C; c++) {
                s += (double)w[r * C + c] * x[t * C + c];
                a += fabs((double)w[r * C + c] * x[t * C + c]);
            }
            e32 = fmax(e32, fabs(y[t * R + r] - s) / a);
            e16 = fmax(e16, fabs(spqr_f16_to_f32(y16[t * R + r]) - s) / a);
        }
    printf("dense gemm: fp32 worst %.3g, fp16 worst %.3g (relative to sum |w x|)\n", e32, e16);
    assert_true(e32 < 1e-5);
    assert_true(e16 < 5e-3);
    spqr_bench_timer *tm;
    float ms = -1;
    assert_int_equal(spqr_bench_timer_new(&tm), SPQR_OK);
    assert_int_equal(spqr_bench_timer_start(tm), SPQR_OK);
    assert_int_equal(spqr_bench_fill_normal(dw, (size_t)R * C, 1), SPQR_OK);
    assert_int_equal(spqr_bench_timer_stop(tm, &ms), SPQR_OK);
    assert_true(ms >= 0);
    spqr_bench_timer_free(tm);
    spqr_cuda_free(dw);
    spqr_cuda_free(dx);
    spqr_cuda_free(dy);
    spqr_cuda_free(hw);
    spqr_cuda_free(hx);
    spqr_cuda_free(hy);
    free(w);
    free(x);
    free(y);
    free(y16);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
