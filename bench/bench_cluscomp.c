/* bench_cluscomp.c - speed of the ClusComp codebook kernels (CPU) vs dense
 * baselines measured in the same run.
 *
 * For the LLaMA-7B linear shapes and several (d, n) codebooks (uniform random
 * indices, uniform codebook): time per matrix-vector product, the bytes it
 * moves (index stream + fp32 codebook + x + y) per second, and the speed-up
 * over dense float32 and bf16 gemv (spqr_dense_gemv), measured interleaved
 * call by call with the baselines so that all see the same machine load
 * (this machine is shared); then 8 tokens per call; then prefill (512
 * tokens: the fused kernels, the dequantized-tiles + sgemm alternative and
 * the dense bf16 format's product). Every timed call reads a different copy
 * of the layer (its own codebook too), with enough copies that the working
 * set is several times the last-level cache. Prints markdown tables.
 *
 * Usage: bench_cluscomp [--quick]   (SPQR_KERNEL=ref|avx2|avx512 to force)
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qformat.h"
#include "formats/cluscomp/cluscomp.h"
#include "formats/cluscomp/cpu/ccgemm.h"
#include "kernels/cpu/cpu.h"

#define WORKSET ((size_t)192 << 20) /* bytes each timed series cycles through */

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static inline uint64_t rng(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}
static float urand(void) { return (float)(rng() >> 40) * (1.0f / 16777216.0f); }

static void *xalloc(size_t n) {
    void *p = spqr_aligned_alloc(n);
    if (!p) {
        fprintf(stderr, "bench_cluscomp: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int ncopies_for(size_t bytes) {
    size_t n = (WORKSET + bytes - 1) / bytes;
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* ---- layers --------------------------------------------------------------------- */

static spqr_cc_layer *cc_random(int rows, int cols, int d, int n) {
    const int nb = (rows + d - 1) / d;
    float *cb = malloc(sizeof(float) * (size_t)n * d);
    uint32_t *idx = malloc(sizeof(uint32_t) * (size_t)nb * cols);
    if (!cb || !idx) exit(1);
    for (size_t i = 0; i < (size_t)n * d; i++) cb[i] = 0.04f * (urand() - 0.5f);
    for (size_t i = 0; i < (size_t)nb * cols; i++) idx[i] = (uint32_t)(rng() % (uint64_t)n);
    spqr_cc_layer *L = NULL;
    if (spqr_cc_layer_build(rows, cols, d, n, cb, idx, &L) != SPQR_OK) {
        fprintf(stderr, "bench_cluscomp: %s\n", spqr_last_error());
        exit(1);
    }
    free(cb);
    free(idx);
    return L;
}

/* Bytes one product touches: index stream, fp32 codebook, x and y. */
static double cc_traffic(const spqr_cc_layer *L, int T) {
    return (double)L->idx_bytes + (double)L->n * L->d * 4.0 + 4.0 * T * ((double)L->rows + L->cols);
}

typedef struct dense_set {
    void **w;
    int n;
    spqr_dtype dt;
} dense_set;

static void dense_make(dense_set *s, spqr_dtype dt, int rows, int cols) {
    const size_t es = dt == SPQR_DT_F32 ? 4 : 2, bytes = (size_t)rows * cols * es;
    s->n = ncopies_for(bytes);
    s->dt = dt;
    s->w = calloc((size_t)s->n, sizeof(void *));
    for (int i = 0; i < s->n; i++) {
        s->w[i] = xalloc(bytes);
        float *f = s->w[i];
        uint16_t *h = s->w[i];
#pragma omp parallel for
        for (int64_t k = 0; k < (int64_t)rows * cols; k++) {
            uint64_t x = (uint64_t)k * 0x9E3779B97F4A7C15ull + (uint64_t)i;
            float v = (float)((x >> 40) & 0xffff) * (1.0f / 65536.0f) - 0.5f;
            if (dt == SPQR_DT_F32) f[k] = v;
            else h[k] = spqr_f32_to_bf16(v);
        }
    }
}

static void dense_free(dense_set *s) {
    for (int i = 0; i < s->n; i++) free(s->w[i]);
    free(s->w);
}

/* One matrix-vector product per series, the series interleaved call by
 * call so that all of them see the same machine load: times[s][i]. */
typedef struct series {
    int kind;                 /* 0 dense gemv, 1 cluscomp */
    const dense_set *dense;
    spqr_cc_layer **cc;
    int ncc;
} series;

static void run_interleaved(const series *s, int ns, int rows, int cols, const float *x, float *y, int T, int iters,
                            double **times) {
    for (int k = 0; k < ns; k++) /* warm-up: scratch, page faults */
        for (int i = 0; i < 2; i++) {
            if (s[k].kind == 0) spqr_dense_gemv(s[k].dense->dt, s[k].dense->w[i % s[k].dense->n], rows, cols, x, y);
            else spqr_cc_gemm(s[k].cc[i % s[k].ncc], x, T, y);
        }
    for (int i = 0; i < iters; i++)
        for (int k = 0; k < ns; k++) {
            const double t0 = spqr_now();
            if (s[k].kind == 0) spqr_dense_gemv(s[k].dense->dt, s[k].dense->w[i % s[k].dense->n], rows, cols, x, y);
            else spqr_cc_gemm(s[k].cc[i % s[k].ncc], x, T, y);
            times[k][i] = spqr_now() - t0;
        }
}

/* median over i of a[i] / b[i] (paired: both measured back to back) */
static double paired_ratio(const double *a, const double *b, int n) {
    double *r = malloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) r[i] = a[i] / b[i];
    double m = median(r, n);
    free(r);
    return m;
}

static double min_of(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

/* the dense format's product (T > 1: bf16 widened in row chunks + sgemm) */
static double time_dense_fmt(const dense_set *s, int rows, int cols, const float *X, int T, float *Y, int iters) {
    double *t = malloc((size_t)iters * sizeof(double));
    for (int i = 0; i < iters + 1; i++) {
        spqr_dense d = {s->w[i % s->n], s->dt, rows, cols};
        double t0 = spqr_now();
        spqr_qformat_dense.gemm(&d, X, T, Y);
        if (i >= 1) t[i - 1] = spqr_now() - t0;
    }
    double m = median(t, iters);
    free(t);
    return m;
}

static double time_cc(spqr_cc_layer **c, int n, const float *X, int T, float *Y, int iters, int sgemm) {
    double *t = malloc((size_t)iters * sizeof(double));
    for (int i = 0; i < n && i < (T >= 64 ? 1 : 4); i++) spqr_cc_gemm(c[i], X, T, Y); /* warm-up (scratch) */
    for (int i = 0; i < iters; i++) {
        double t0 = spqr_now();
        if (sgemm) spqr_cc_gemm_sgemm(c[i % n], X, T, Y);
        else spqr_cc_gemm(c[i % n], X, T, Y);
        t[i] = spqr_now() - t0;
    }
    double m = median(t, iters);
    free(t);
    return m;
}

int main(int argc, char **argv) {
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    const int iters = quick ? 20 : 80;
    openblas_set_num_threads(spqr_num_threads());
    printf("bench_cluscomp: variant %s, %d threads\n\n", spqr_kernel_name(), spqr_num_threads());

    static const int shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    static const int cfgs[][2] = {{4, 4096}, {4, 16384}, {4, 65536}, {8, 4096}, {8, 65536}, {2, 256}, {16, 65536}};
    const int ncfg = (int)(sizeof cfgs / sizeof *cfgs);
    const int T8 = 8, TP = 512;
    typedef struct row {
        int R, C, d, n, ibits;
        double bpw, mb, t1, t1min, gbs, x_bf16, x_bf16_best, x_f32, t_f32, t_bf16, t8, t_bf16_8;
    } row;
    row rows[3 * 8];
    int nr = 0;
    double t_pre[3][4]; /* fused d4 n4096, fused d8 n65536, sgemm path d4 n4096, dense bf16 */
    double **tm = malloc(3 * sizeof(double *));
    for (int k = 0; k < 3; k++) tm[k] = malloc((size_t)iters * sizeof(double));
    for (int si = 0; si < 3; si++) {
        const int R = shapes[si][0], C = shapes[si][1];
        float *x = xalloc((size_t)C * TP * sizeof(float)), *y = xalloc((size_t)R * TP * sizeof(float));
        for (size_t i = 0; i < (size_t)C * TP; i++) x[i] = urand() - 0.5f;
        dense_set f32, bf16;
        dense_make(&f32, SPQR_DT_F32, R, C);
        dense_make(&bf16, SPQR_DT_BF16, R, C);
        for (int k = 0; k < ncfg; k++) {
            const int d = cfgs[k][0], n = cfgs[k][1];
            spqr_cc_layer *first = cc_random(R, C, d, n);
            const double bytes1 = cc_traffic(first, 1);
            const int nc = ncopies_for((size_t)bytes1);
            spqr_cc_layer **c = malloc(sizeof(*c) * (size_t)nc);
            c[0] = first;
            for (int i = 1; i < nc; i++) c[i] = cc_random(R, C, d, n);
            const series ser[3] = {{0, &bf16, NULL, 0}, {0, &f32, NULL, 0}, {1, NULL, c, nc}};
            run_interleaved(ser, 3, R, C, x, y, 1, iters, tm);
            row *w = &rows[nr++];
            *w = (row){.R = R, .C = C, .d = d, .n = n, .ibits = first->ibits};
            w->bpw = spqr_qformat_cluscomp.formula_bits(first);
            w->mb = (double)spqr_qformat_cluscomp.bytes(first) / 1e6;
            w->x_bf16 = paired_ratio(tm[0], tm[2], iters);
            w->x_f32 = paired_ratio(tm[1], tm[2], iters);
            w->x_bf16_best = min_of(tm[0], iters) / min_of(tm[2], iters);
            w->t1min = min_of(tm[2], iters);
            w->t1 = median(tm[2], iters);
            w->t_bf16 = median(tm[0], iters);
            w->t_f32 = median(tm[1], iters);
            w->gbs = bytes1 / w->t1 / 1e9;
            w->t8 = time_cc(c, nc, x, T8, y, quick ? 10 : 30, 0);
            if (d == 4 && n == 4096) {
                t_pre[si][0] = time_cc(c, nc, x, TP, y, quick ? 2 : 3, 0);
                t_pre[si][2] = time_cc(c, nc, x, TP, y, quick ? 2 : 3, 1);
            }
            if (d == 8 && n == 65536) t_pre[si][1] = time_cc(c, nc, x, TP, y, quick ? 2 : 3, 0);
            for (int i = 0; i < nc; i++) spqr_cc_layer_free(c[i]);
            free(c);
        }
        dense_free(&f32);
        /* OpenBLAS last: its threads keep spinning after a call */
        const double t8 = time_dense_fmt(&bf16, R, C, x, T8, y, quick ? 5 : 15);
        for (int i = 0; i < nr; i++)
            if (rows[i].R == R && rows[i].C == C) rows[i].t_bf16_8 = t8;
        t_pre[si][3] = time_dense_fmt(&bf16, R, C, x, TP, y, quick ? 2 : 3);
        dense_free(&bf16);
        free(x);
        free(y);
    }

    printf("| shape | d | n | ibits | bits/w | MB | T=1 us (best) | GB/s | x bf16 (best) | x f32 | bf16 us | f32 us "
           "| T=8 us | us/tok | x bf16 T=8 |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nr; i++) {
        const row *w = &rows[i];
        printf("| %dx%d | %d | %d | %d | %.3f | %.2f | %.0f (%.0f) | %.1f | %.2fx (%.2fx) | %.2fx | %.0f | %.0f | %.0f "
               "| %.0f | %.2fx |\n",
               w->R, w->C, w->d, w->n, w->ibits, w->bpw, w->mb, w->t1 * 1e6, w->t1min * 1e6, w->gbs, w->x_bf16,
               w->x_bf16_best, w->x_f32, w->t_bf16 * 1e6, w->t_f32 * 1e6, w->t8 * 1e6, w->t8 * 1e6 / T8,
               w->t_bf16_8 / w->t8);
    }
    printf("\nprefill, %d tokens (ms per call):\n\n", TP);
    printf("| shape | d4 n4096 fused | d8 n65536 fused | d4 n4096 tiles+sgemm | dense bf16 (widen+sgemm) |\n"
           "|---|---|---|---|---|\n");
    for (int si = 0; si < 3; si++)
        printf("| %dx%d | %.1f | %.1f | %.1f | %.1f |\n", shapes[si][0], shapes[si][1], t_pre[si][0] * 1e3,
               t_pre[si][1] * 1e3, t_pre[si][2] * 1e3, t_pre[si][3] * 1e3);
    {
        double la[3] = {0, 0, 0};
        FILE *f = fopen("/proc/loadavg", "r");
        if (f) {
            if (fscanf(f, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = -1;
            fclose(f);
        }
        printf("\nload average at the end (other processes share these cores): %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    }
    printf("T=1 us: median (best) of %d matrix-vector products, each on another copy of the layer, interleaved call by\n"
           "call with dense bf16 and f32 gemv of the same shape (bf16 us, f32 us: their medians); x bf16 / x f32: the\n"
           "median of the per-iteration time ratios (best: ratio of the best times); GB/s: (index stream + fp32\n"
           "codebook + x + y) / median time; bits/w: the format's formula (indices + fp16 codebook); MB: stored\n"
           "bytes; T=8: 8 tokens in one call (median) vs the dense bf16 format's product of 8 tokens (widen + sgemm).\n",
           iters);
    for (int k = 0; k < 3; k++) free(tm[k]);
    free(tm);
    spqr_kernel_scratch_release();
    return 0;
}
