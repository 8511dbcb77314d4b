/* bench_cluscomp.c - speed of the ClusComp codebook kernels (CPU) vs dense
 * baselines measured in the same run.
 *
 * For the LLaMA-7B linear shapes and several (d, n) codebooks (uniform random
 * indices, N(0, 0.02) codebook): time per matrix-vector product (median), the
 * bytes it reads and writes (index stream + fp32 codebook + x + y) per
 * second, and the speed-up over dense float32 and bf16 gemv
 * (spqr_dense_gemv); then 8 tokens per call; then prefill (512 tokens, the
 * sgemm path) against the dense bf16 format's product. Every timed call
 * reads a different copy of the layer (its own codebook too), with enough
 * copies that the working set is several times the last-level cache.
 * Prints markdown tables.
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

static double time_dense(const dense_set *s, int rows, int cols, const float *x, float *y, int iters) {
    double *t = malloc((size_t)iters * sizeof(double));
    for (int i = 0; i < s->n; i++) spqr_dense_gemv(s->dt, s->w[i], rows, cols, x, y); /* warm-up */
    for (int i = 0; i < iters; i++) {
        double t0 = spqr_now();
        spqr_dense_gemv(s->dt, s->w[i % s->n], rows, cols, x, y);
        t[i] = spqr_now() - t0;
    }
    double m = median(t, iters);
    free(t);
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

static double time_cc(spqr_cc_layer **c, int n, const float *X, int T, float *Y, int iters) {
    double *t = malloc((size_t)iters * sizeof(double));
    for (int i = 0; i < n && i < (T >= 64 ? 1 : 4); i++) spqr_cc_gemm(c[i], X, T, Y); /* warm-up (scratch) */
    for (int i = 0; i < iters; i++) {
        double t0 = spqr_now();
        spqr_cc_gemm(c[i % n], X, T, Y);
        t[i] = spqr_now() - t0;
    }
    double m = median(t, iters);
    free(t);
    return m;
}

int main(int argc, char **argv) {
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    const int iters = quick ? 20 : 100;
    openblas_set_num_threads(spqr_num_threads());
    printf("bench_cluscomp: variant %s, %d threads\n\n", spqr_kernel_name(), spqr_num_threads());

    static const int shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    static const int cfgs[][2] = {{4, 4096}, {4, 65536}, {8, 4096}, {8, 65536}, {2, 256}, {16, 65536}};
    const int ncfg = (int)(sizeof cfgs / sizeof *cfgs);
    const int T8 = 8, TP = 512;
    typedef struct row {
        int R, C, d, n, ibits;
        double bpw, mb, t1, gbs, t8, t_f32, t_bf16, t_bf16_8;
    } row;
    row rows[3 * 8];
    int nr = 0;
    double t_pre_cc[3][2], t_pre_bf16[3];
    for (int si = 0; si < 3; si++) {
        const int R = shapes[si][0], C = shapes[si][1];
        float *x = xalloc((size_t)C * TP * sizeof(float)), *y = xalloc((size_t)R * TP * sizeof(float));
        for (size_t i = 0; i < (size_t)C * TP; i++) x[i] = urand() - 0.5f;
        dense_set f32, bf16;
        dense_make(&f32, SPQR_DT_F32, R, C);
        const double t_f32 = time_dense(&f32, R, C, x, y, iters);
        dense_free(&f32);
        dense_make(&bf16, SPQR_DT_BF16, R, C);
        const double t_bf16 = time_dense(&bf16, R, C, x, y, iters);
        for (int k = 0; k < ncfg; k++) {
            const int d = cfgs[k][0], n = cfgs[k][1];
            spqr_cc_layer *first = cc_random(R, C, d, n);
            const double bytes1 = cc_traffic(first, 1);
            const int nc = ncopies_for((size_t)bytes1);
            spqr_cc_layer **c = malloc(sizeof(*c) * (size_t)nc);
            c[0] = first;
            for (int i = 1; i < nc; i++) c[i] = cc_random(R, C, d, n);
            row *w = &rows[nr++];
            *w = (row){.R = R, .C = C, .d = d, .n = n, .ibits = first->ibits};
            w->bpw = spqr_qformat_cluscomp.formula_bits(first);
            w->mb = (double)spqr_qformat_cluscomp.bytes(first) / 1e6;
            w->t1 = time_cc(c, nc, x, 1, y, iters * 2);
            w->gbs = bytes1 / w->t1 / 1e9;
            w->t8 = time_cc(c, nc, x, T8, y, quick ? 10 : 40);
            w->t_f32 = t_f32;
            w->t_bf16 = t_bf16;
            if (k == 0 || k == 3) /* prefill: the sgemm path */
                t_pre_cc[si][k == 3] = time_cc(c, nc, x, TP, y, quick ? 2 : 4);
            for (int i = 0; i < nc; i++) spqr_cc_layer_free(c[i]);
            free(c);
        }
        /* OpenBLAS last: its threads keep spinning after a call */
        const double t8 = time_dense_fmt(&bf16, R, C, x, T8, y, quick ? 5 : 15);
        for (int i = 0; i < nr; i++)
            if (rows[i].R == R && rows[i].C == C) rows[i].t_bf16_8 = t8;
        t_pre_bf16[si] = time_dense_fmt(&bf16, R, C, x, TP, y, quick ? 2 : 4);
        dense_free(&bf16);
        free(x);
        free(y);
    }

    printf("| shape | d | n | ibits | bits/w | MB | T=1 us | GB/s | x bf16 | x f32 | bf16 us | f32 us | T=8 us | "
           "us/tok | x bf16 T=8 |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nr; i++) {
        const row *w = &rows[i];
        printf("| %dx%d | %d | %d | %d | %.3f | %.2f | %.1f | %.1f | %.2fx | %.2fx | %.1f | %.1f | %.1f | %.1f | %.2fx |\n",
               w->R, w->C, w->d, w->n, w->ibits, w->bpw, w->mb, w->t1 * 1e6, w->gbs, w->t_bf16 / w->t1,
               w->t_f32 / w->t1, w->t_bf16 * 1e6, w->t_f32 * 1e6, w->t8 * 1e6, w->t8 * 1e6 / T8,
               w->t_bf16_8 / w->t8);
    }
    printf("\nprefill, %d tokens (dequantized tiles + sgemm vs the dense bf16 format's widen + sgemm):\n\n", TP);
    printf("| shape | d4 n4096 ms | d8 n65536 ms | dense bf16 ms |\n|---|---|---|---|\n");
    for (int si = 0; si < 3; si++)
        printf("| %dx%d | %.1f | %.1f | %.1f |\n", shapes[si][0], shapes[si][1], t_pre_cc[si][0] * 1e3,
               t_pre_cc[si][1] * 1e3, t_pre_bf16[si] * 1e3);
    {
        double la[3] = {0, 0, 0};
        FILE *f = fopen("/proc/loadavg", "r");
        if (f) {
            if (fscanf(f, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = -1;
            fclose(f);
        }
        printf("\nload average at the end (other processes share these cores): %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    }
    printf("T=1 us: median time of one codebook matrix-vector product; GB/s: (index stream + fp32 codebook + x + y)\n"
           "/ time; x bf16 / x f32: speed-up over dense gemv of the same shape (bf16 us, f32 us); bits/w: the format's\n"
           "formula (indices + fp16 codebook); MB: stored bytes; T=8: 8 tokens in one call vs the dense bf16 format's\n"
           "product of 8 tokens (widen + sgemm).\n");
    spqr_kernel_scratch_release();
    return 0;
}
