/* test_cuda_cluscomp.c - the ClusComp CUDA kernels against a host reference.
 *
 * Layers are built here by hand (spqr_cc_layer fields filled directly, the
 * index stream packed LSB-first by pack_field below, exactly
 * ceil(fields*ibits/8) bytes long), so the test depends on nothing but the
 * definition in cluscomp.h:
 *     W[b*d + t][j] = C[idx(b, j)][t],  idx(b, j) = field b*cols + j.
 * The reference is computed on the host in double precision; for every
 * output S[t][r] = sum_j |W[r][j] x[t][j]| is the size of the terms.
 *
 * Shapes: rows not a multiple of d, n not a power of two, ibits 1, 2, 10,
 * 12, 16, 17 and 24, d in {1, 2, 3, 4, 8, 12, 16, 32, 64}, a wide layer
 * (20001 columns: several column slices for batches > 1), T in
 * {1, 2, 3, 8, 17, 64}. Every kernel is run on each:
 *  - lookup kernel (automatic plan; codebook forced to global memory; a
 *    forced odd plan: 4 warps, 2 warps per row block, 3 column slices, no
 *    PDL; 2 tokens per pass; codebook pieces of about n/3 entries, with the
 *    automatic and the odd plan):
 *    fp16 codebook values and fp32 inputs exactly, fp32 sums:
 *    |y - ref| <= 1e-4 * S (a bound: <= ~700 sequential fp32 additions per
 *    lane here, 2^-24 each), relative L2 <= 1e-5;
 *  - reference kernel (double sums): |y - ref| <= 1e-6 * S;
 *  - dequantize + cuBLAS (fp16 inputs and outputs, fp32 accumulation, the
 *    numerics of a cuBLAS fp16 GEMM): |y - ref| <= 2e-3 * S (x and y each
 *    rounded to fp16: 2 * 2^-11), relative L2 <= 2e-3;
 *  - automatic choice: the tolerance of the kernel it picks (lookup for
 *    T <= 16, cuBLAS above).
 * The lookup kernel must also be bitwise reproducible (run twice).
 * SPQR_TEST_QUICK=1 runs the small shapes only (for compute-sanitizer).
 * Without a CUDA device, or in builds without CUDA, the tests are skipped.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/cluscomp/cluscomp.h"
#include "formats/cluscomp/cuda/cc_cuda.h"
#include "formats/cluscomp/cuda/cc_cuda_ex.h"
#include "kernels/cuda/cuda_rt.h"
#include "testutil.h"

#define TOL_LOOKUP 1e-4
#define TOL_LOOKUP_L2 1e-5
#define TOL_REF 1e-6
#define TOL_F16 2e-3
#define TOL_F16_L2 2e-3


/* ---- layers built by hand ---------------------------------------------------- */

typedef struct hlayer {
    spqr_cc_layer L;
    uint16_t *cb;  /* [n][d] fp16 */
    float *cb32;   /* [n][d] */
    uint8_t *idx;  /* packed stream */
    uint32_t *ids; /* [nb][cols] */
} hlayer;

static int index_bits(int n) {
    int b = 1;
    while (((int64_t)1 << b) < n) b++;
    return b;
}
static void pack_field(uint8_t *buf, uint64_t i, int ib, uint32_t v) {
    for (int k = 0; k < ib; k++)
        if ((v >> k) & 1u) {
            const uint64_t bit = i * (uint64_t)ib + (uint64_t)k;
            buf[bit >> 3] |= (uint8_t)(1u << (bit & 7));
        }
}
static void hlayer_make(hlayer *h, int rows, int cols, int d, int n) {
    memset(h, 0, sizeof *h);
    const int nb = (rows + d - 1) / d, ib = index_bits(n);
    const uint64_t fields = (uint64_t)nb * cols;
    const size_t nbytes = (size_t)((fields * ib + 7) / 8);
    h->cb = malloc(sizeof(uint16_t) * (size_t)n * d);
    h->cb32 = malloc(sizeof(float) * (size_t)n * d);
    for (size_t i = 0; i < (size_t)n * d; i++) {
        h->cb[i] = spqr_f32_to_f16(0.5f * tu_rand_normal());
        h->cb32[i] = spqr_f16_to_f32(h->cb[i]);
    }
    h->ids = malloc(sizeof(uint32_t) * (fields ? fields : 1));
    h->idx = calloc(nbytes ? nbytes : 1, 1);
    for (uint64_t i = 0; i < fields; i++) {
        uint32_t v = (uint32_t)(tu_rand_u64() % (uint64_t)n);
        if (i % 97 == 5) v = (uint32_t)n - 1; /* the largest index occurs */
        h->ids[i] = v;
        pack_field(h->idx, i, ib, v);
    }
    spqr_cc_layer *L = &h->L;
    L->rows = rows;
    L->cols = cols;
    L->d = d;
    L->n = n;
    L->ibits = ib;
    L->nb = nb;
    L->cb_share = 1;
    L->codebook = h->cb;
    L->idx = h->idx;
    L->idx_bytes = nbytes; /* exactly the bytes of the fields */
    L->cb32 = h->cb32;
}
static void hlayer_free(hlayer *h) {
    free(h->cb);
    free(h->cb32);
    free(h->idx);
    free(h->ids);
}

/* ref[t][r] and S[t][r] in double */
static void host_ref(const hlayer *h, const float *X, int T, double *ref, double *S) {
    const spqr_cc_layer *L = &h->L;
    const int R = L->rows, C = L->cols, d = L->d;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            const int b = r / d, k = r % d;
            const uint32_t *id = h->ids + (size_t)b * C;
            const float *x = X + (size_t)t * C;
            double s = 0, a = 0;
            for (int j = 0; j < C; j++) {
                const double p = (double)h->cb32[(size_t)id[j] * d + k] * (double)x[j];
                s += p;
                a += fabs(p);
            }
            ref[(size_t)t * R + r] = s;
            S[(size_t)t * R + r] = a;
        }
}

/* violations of |y - ref| <= tol * S; worst ratio and relative L2 out */
static int compare(const float *y, const double *ref, const double *S, size_t m, double tol, double *worst,
                   double *rel) {
    int bad = 0;
    double e2 = 0, r2 = 0;
    *worst = 0;
    for (size_t i = 0; i < m; i++) {
        const double e = fabs((double)y[i] - ref[i]);
        if (!isfinite(y[i]) || e > tol * S[i] + 1e-30) bad++;
        const double q = S[i] > 0 ? e / S[i] : (e > 0 ? INFINITY : 0);
        if (q > *worst || !isfinite(y[i])) *worst = isfinite(y[i]) ? q : INFINITY;
        e2 += e * e;
        r2 += ref[i] * ref[i];
    }
    *rel = r2 > 0 ? sqrt(e2 / r2) : sqrt(e2);
    return bad;
}

typedef struct variant {
    const char *name;
    spqr_cc_cuda_opts o;
} variant;

/* piece = -2 below: pieces of about n/3 entries (set per layer) */
static const variant g_variants[] = {
    {"auto", {SPQR_CC_KERNEL_AUTO, 0, 0, 0, 0, 0, 0, 0}},
    {"lookup", {SPQR_CC_KERNEL_LOOKUP, 0, 0, 0, 0, 0, 0, 0}},
    {"global", {SPQR_CC_KERNEL_LOOKUP, 1, 0, 0, 0, 0, 0, 0}},
    {"odd", {SPQR_CC_KERNEL_LOOKUP, 0, 4, 2, 3, 0, -1, 1}},
    {"tt2", {SPQR_CC_KERNEL_LOOKUP, 0, 8, 0, 0, 2, 0, 0}},
    {"piece", {SPQR_CC_KERNEL_LOOKUP, 0, 0, 0, 0, 0, -2, 0}},
    {"piece-odd", {SPQR_CC_KERNEL_LOOKUP, 0, 4, 2, 3, 0, -2, 1}},
    {"deq", {SPQR_CC_KERNEL_DEQ, 0, 0, 0, 0, 0, 0, 0}},
    {"ref", {SPQR_CC_KERNEL_REF, 0, 0, 0, 0, 0, 0, 0}},
};

static int run_layer(int rows, int cols, int d, int n, const int *toks, int ntoks) {
    hlayer h;
    hlayer_make(&h, rows, cols, d, n);
    void *dev = NULL;
    size_t dev_bytes = 0;
    spqr_status st = spqr_cc_cuda_upload(&h.L, &dev, &dev_bytes);
    if (st != SPQR_OK) {
        printf("FAIL upload %dx%d d=%d n=%d: %s\n", rows, cols, d, n, spqr_last_error());
        hlayer_free(&h);
        return 1;
    }
    int fails = 0;
    if (dev_bytes != spqr_cc_cuda_estimate(&h.L)) {
        printf("FAIL: upload reported %zu bytes, estimate %zu\n", dev_bytes, spqr_cc_cuda_estimate(&h.L));
        fails++;
    }
    spqr_cc_cuda_info info;
    spqr_cc_cuda_get_info(dev, &info);
    int Tmax = 0;
    for (int i = 0; i < ntoks; i++)
        if (toks[i] > Tmax) Tmax = toks[i];
    float *X = malloc(sizeof(float) * (size_t)Tmax * cols), *Y = malloc(sizeof(float) * (size_t)Tmax * rows),
          *Y2 = malloc(sizeof(float) * (size_t)Tmax * rows);
    double *ref = malloc(sizeof(double) * (size_t)Tmax * rows), *S = malloc(sizeof(double) * (size_t)Tmax * rows);
    for (size_t i = 0; i < (size_t)Tmax * cols; i++) X[i] = tu_rand_normal();
    float *dX = NULL, *dY = NULL;
    assert_int_equal(spqr_cuda_malloc((void **)&dX, sizeof(float) * (size_t)Tmax * cols), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&dY, sizeof(float) * (size_t)Tmax * rows), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_h2d(dX, X, sizeof(float) * (size_t)Tmax * cols), SPQR_OK);
    host_ref(&h, X, Tmax, ref, S); /* token t's reference does not depend on T */
    char line[2048];
    for (int ti = 0; ti < ntoks; ti++) {
        const int T = toks[ti];
        const size_t m = (size_t)T * rows;
        int len = snprintf(line, sizeof line, "%5dx%-5d d=%-2d n=%-8d ib=%-2d cb=%s T=%-2d:", rows, cols, d, n,
                           h.L.ibits, info.mode == 0 ? "smem" : info.mode == 1 ? "glob" : "pcs ", T);
        for (size_t v = 0; v < sizeof g_variants / sizeof *g_variants; v++) {
            spqr_cc_cuda_opts ov = g_variants[v].o;
            if (ov.piece == -2) ov.piece = n / 3 + 1;
            const spqr_cc_cuda_opts *o = &ov;
            int k = o->kernel;
            if (k == SPQR_CC_KERNEL_AUTO) k = T >= SPQR_CC_CUDA_DEQ_MIN_T ? SPQR_CC_KERNEL_DEQ : SPQR_CC_KERNEL_LOOKUP;
            const double tol = k == SPQR_CC_KERNEL_REF ? TOL_REF : k == SPQR_CC_KERNEL_DEQ ? TOL_F16 : TOL_LOOKUP;
            const double tol2 = k == SPQR_CC_KERNEL_REF ? TOL_REF : k == SPQR_CC_KERNEL_DEQ ? TOL_F16_L2 : TOL_LOOKUP_L2;
            assert_int_equal(spqr_cuda_memset(dY, 0xff, sizeof(float) * m), SPQR_OK); /* NaN */
            st = spqr_cc_cuda_gemm_ex(dev, dX, T, dY, o);
            if (st == SPQR_OK) st = spqr_cuda_synchronize();
            if (st != SPQR_OK) {
                printf("FAIL %s: %s\n", g_variants[v].name, spqr_last_error());
                fails++;
                continue;
            }
            assert_int_equal(spqr_cuda_memcpy_d2h(Y, dY, sizeof(float) * m), SPQR_OK);
            double worst, rel;
            const int bad = compare(Y, ref, S, m, tol, &worst, &rel);
            const int ok = bad == 0 && rel <= tol2;
            len += snprintf(line + len, sizeof line - (size_t)len, " %s %.1e%s", g_variants[v].name, worst,
                            ok ? "" : "!");
            if (!ok) {
                printf("FAIL %dx%d d=%d n=%d T=%d %s: %d outputs beyond %.0e*S (worst %.3e*S), rel L2 %.3e\n", rows,
                       cols, d, n, T, g_variants[v].name, bad, tol, worst, rel);
                fails++;
            }
            if (k == SPQR_CC_KERNEL_LOOKUP) { /* bitwise reproducible */
                assert_int_equal(spqr_cc_cuda_gemm_ex(dev, dX, T, dY, o), SPQR_OK);
                assert_int_equal(spqr_cuda_memcpy_d2h(Y2, dY, sizeof(float) * m), SPQR_OK);
                if (memcmp(Y, Y2, sizeof(float) * m)) {
                    printf("FAIL %s T=%d: results differ between runs\n", g_variants[v].name, T);
                    fails++;
                }
            }
        }
        printf("%s\n", line);
    }
    spqr_cuda_free(dX);
    spqr_cuda_free(dY);
    spqr_cc_cuda_free(dev);
    free(X);
    free(Y);
    free(Y2);
    free(ref);
    free(S);
    hlayer_free(&h);
    return fails;
}

static void test_shapes(void **state) {
    (void)state;
    if (!tu_have_gpu()) skip();
    tu_seed(1234);
    static const int toks[] = {1, 2, 3, 8, 17, 64};
    static const int shapes[][4] = {
        /* rows, cols, d, n */
        {1, 1, 1, 1},          /* ibits 1, one index value */
        {7, 17, 2, 2},         /* ibits 1 */
        {33, 130, 4, 3},       /* ibits 2, rows % d != 0, cols just over a chunk */
        {100, 257, 8, 1000},   /* ibits 10 */
        {257, 300, 16, 4096},  /* ibits 12, 16 rows per block */
        {4099, 300, 8, 256},   /* many row blocks */
        {64, 129, 8, 65536},   /* ibits 16: codebook (1 MiB) in global memory */
        {50, 200, 4, 70000},   /* ibits 17 */
        {130, 4097, 3, 300},   /* d = 3: three 1-wide lookups */
        {96, 500, 12, 5000},   /* d = 12: three 4-wide lookups */
        {70, 300, 32, 100},    /* d = 32: two 16-wide lookups */
        {130, 256, 64, 77},    /* d = 64 */
        {37, 20001, 4, 4096},  /* wide: column slices for T > 1 */
        {9, 5, 1, 4097},       /* d = 1, ibits 13, less than a chunk */
    };
    static const int tquick[] = {1, 3, 17};
    const int quick = getenv("SPQR_TEST_QUICK") != NULL; /* for compute-sanitizer */
    int fails = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        if (quick && (shapes[s][0] * shapes[s][1] > 100000)) continue;
        fails += run_layer(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], quick ? tquick : toks,
                           quick ? 3 : 6);
    }
    /* ibits 24 (n = 2^23 + 5, a 16 MiB codebook) */
    static const int t24[] = {1, 3, 17};
    if (!quick) fails += run_layer(23, 64, 1, (1 << 23) + 5, t24, 3);
    assert_int_equal(fails, 0);
}

static void test_errors(void **state) {
    (void)state;
    if (!tu_have_gpu()) skip();
    tu_seed(7);
    void *dev = (void *)1;
    assert_int_equal(spqr_cc_cuda_upload(NULL, &dev, NULL), SPQR_ERR_INVALID_ARG);
    assert_null(dev);
    hlayer h;
    hlayer_make(&h, 10, 40, 4, 5); /* ibits 3 */
    assert_true(spqr_cc_cuda_estimate(&h.L) > 0);
    /* an index >= n */
    pack_field(h.idx, 17, 3, 7);
    assert_int_equal(spqr_cc_cuda_upload(&h.L, &dev, NULL), SPQR_ERR_INVALID_ARG);
    printf("expected error: %s\n", spqr_last_error());
    assert_null(dev);
    hlayer_free(&h);
    hlayer_make(&h, 10, 40, 4, 5);
    h.L.idx_bytes--; /* stream too short */
    assert_int_equal(spqr_cc_cuda_upload(&h.L, &dev, NULL), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_cuda_estimate(&h.L), 0);
    h.L.idx_bytes++;
    h.L.nb = 2;
    assert_int_equal(spqr_cc_cuda_upload(&h.L, &dev, NULL), SPQR_ERR_INVALID_ARG);
    h.L.nb = 3;
    h.L.ibits = 2; /* cannot index n = 5 */
    assert_int_equal(spqr_cc_cuda_upload(&h.L, &dev, NULL), SPQR_ERR_INVALID_ARG);
    h.L.ibits = 3;
    size_t bytes = 0;
    assert_int_equal(spqr_cc_cuda_upload(&h.L, &dev, &bytes), SPQR_OK);
    assert_true(bytes > 0);
    float *d = NULL;
    assert_int_equal(spqr_cuda_malloc((void **)&d, 40 * 4 * sizeof(float)), SPQR_OK);
    assert_int_equal(spqr_cuda_memset(d, 0, 40 * 4 * sizeof(float)), SPQR_OK);
    assert_int_equal(spqr_cc_cuda_gemm(dev, d, -1, d), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_cuda_gemm(NULL, d, 1, d), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_cc_cuda_gemm(dev, d, 0, d), SPQR_OK);
    /* a clone computes the same */
    void *c = NULL;
    assert_int_equal(spqr_cc_cuda_clone(dev, &c), SPQR_OK);
    float *x = NULL, *y1 = NULL, *y2 = NULL;
    float hx[40 * 2], h1[10 * 2], h2[10 * 2];
    for (int i = 0; i < 80; i++) hx[i] = tu_rand_normal();
    assert_int_equal(spqr_cuda_malloc((void **)&x, sizeof hx), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&y1, sizeof h1), SPQR_OK);
    assert_int_equal(spqr_cuda_malloc((void **)&y2, sizeof h2), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_h2d(x, hx, sizeof hx), SPQR_OK);
    spqr_cc_cuda_free(dev);
    assert_int_equal(spqr_cc_cuda_gemm(c, x, 2, y2), SPQR_OK);
    assert_int_equal(spqr_cc_cuda_upload(&h.L, &dev, NULL), SPQR_OK);
    assert_int_equal(spqr_cc_cuda_gemm(dev, x, 2, y1), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_d2h(h1, y1, sizeof h1), SPQR_OK);
    assert_int_equal(spqr_cuda_memcpy_d2h(h2, y2, sizeof h2), SPQR_OK);
    assert_memory_equal(h1, h2, sizeof h1);
    char plan[256];
    assert_int_equal(spqr_cc_cuda_plan_str(dev, 1, NULL, plan, sizeof plan), SPQR_OK);
    printf("plan (10x40, T=1): %s\n", plan);
    spqr_cc_cuda_opts bad = {SPQR_CC_KERNEL_LOOKUP, 0, 16, 3, 0, 0, 0, 0};
    assert_int_equal(spqr_cc_cuda_gemm_ex(dev, x, 1, y1, &bad), SPQR_ERR_INVALID_ARG);
    spqr_cc_cuda_free(c);
    spqr_cc_cuda_free(dev);
    spqr_cc_cuda_free(NULL);
    spqr_cuda_free(d);
    spqr_cuda_free(x);
    spqr_cuda_free(y1);
    spqr_cuda_free(y2);
    hlayer_free(&h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
