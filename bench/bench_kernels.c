/* bench_kernels.c - speed of the packed SpQR kernels vs dense baselines.
 *
 * Prints the copy bandwidth of this machine (measured now), then for the
 * LLaMA-7B linear shapes at 3 and 4 bits (beta1 = beta2 = 16, 3-bit stats,
 * 1% random outliers): time per matrix-vector product (median), the bytes it
 * must read (packed sections + x) per second, that as a share of the copy
 * bandwidth, and the speed-up over dense float32 and bf16 gemv measured in
 * the same run; then a batch of 16 tokens vs OpenBLAS sgemm on float32.
 * Every timed call reads a different copy of the weights, with enough copies
 * that the working set is several times the last-level cache.
 *
 * Usage: bench_kernels [--quick]   (SPQR_KERNEL=ref|avx2|avx512 to force)
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/spqr/packed.h"
#include "formats/spqr/cpu/qgemm.h"
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
        fprintf(stderr, "bench_kernels: out of memory (%zu bytes)\n", n);
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

/* ---- copy bandwidth ----------------------------------------------------------- */

static double copy_bandwidth(void) {
    const size_t n = (size_t)256 << 20; /* bytes per buffer */
    char *a = xalloc(n), *b = xalloc(n);
    const int nth = spqr_num_threads();
#pragma omp parallel for num_threads(nth)
    for (int t = 0; t < nth; t++) {
        size_t lo = n / nth * t, hi = t == nth - 1 ? n : n / nth * (t + 1);
        memset(a + lo, 1, hi - lo);
        memset(b + lo, 2, hi - lo);
    }
    double best = 0;
    for (int it = 0; it < 6; it++) {
        double t0 = spqr_now();
#pragma omp parallel for num_threads(nth)
        for (int t = 0; t < nth; t++) {
            size_t lo = n / nth * t, hi = t == nth - 1 ? n : n / nth * (t + 1);
            memcpy(b + lo, a + lo, hi - lo);
        }
        double dt = spqr_now() - t0, bw = 2.0 * (double)n / dt / 1e9;
        if (bw > best) best = bw;
    }
    free(a);
    free(b);
    return best;
}

/* ---- random layers ------------------------------------------------------------- */

/* A random bilevel layer (malloc'd arrays; freed by ql_free). */
static void ql_random(spqr_qlayer *q, int rows, int cols, int wbits, double ol) {
    memset(q, 0, sizeof *q);
    const int b1 = 16, b2 = 16;
    q->rows = rows;
    q->cols = cols;
    q->wbits = wbits;
    q->beta1 = b1;
    q->beta2 = b2;
    q->sbits = q->zbits = 3;
    q->ngroups = (cols + b1 - 1) / b1;
    q->nrb = (rows + b2 - 1) / b2;
    const size_t G = (size_t)q->ngroups, N2 = G * (size_t)q->nrb;
    q->perm = malloc((size_t)cols * sizeof(int32_t));
    q->codes = malloc((size_t)rows * cols);
    q->scale_code = malloc(G * rows);
    q->zero_code = malloc(G * rows);
    q->s2_scale = malloc(N2 * 2);
    q->s2_zero = malloc(N2 * 2);
    q->z2_scale = malloc(N2 * 2);
    q->z2_zero = malloc(N2 * 2);
    q->row_ptr = malloc(((size_t)rows + 1) * 4);
    if (!q->perm || !q->codes || !q->scale_code || !q->zero_code || !q->s2_scale || !q->s2_zero || !q->z2_scale ||
        !q->z2_zero || !q->row_ptr) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    for (int j = 0; j < cols; j++) q->perm[j] = j;
    for (int j = cols - 1; j > 0; j--) {
        int k = (int)(rng() % (uint64_t)(j + 1));
        int32_t t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    const uint64_t m = (1u << wbits) - 1;
    for (size_t i = 0; i < (size_t)rows * cols; i += 8) {
        uint64_t r = rng();
        for (size_t k = 0; k < 8 && i + k < (size_t)rows * cols; k++) q->codes[i + k] = (uint8_t)((r >> (8 * k)) & m);
    }
    for (size_t i = 0; i < G * rows; i++) {
        q->scale_code[i] = (uint8_t)(rng() & 7);
        q->zero_code[i] = (uint8_t)(rng() & 7);
    }
    for (size_t i = 0; i < N2; i++) {
        q->s2_scale[i] = spqr_f32_to_f16(0.001f + 0.002f * urand());
        q->s2_zero[i] = spqr_f32_to_f16(-1.0f);
        q->z2_scale[i] = spqr_f32_to_f16((float)m / 7.0f);
        q->z2_zero[i] = spqr_f32_to_f16(0.0f);
    }
    const int64_t per_row = (int64_t)(ol * cols + 0.5);
    q->n_outliers = per_row * rows;
    q->ol_col = malloc((size_t)q->n_outliers * 4 + 4);
    q->ol_val = malloc((size_t)q->n_outliers * 2 + 2);
    if (!q->ol_col || !q->ol_val) exit(1);
    /* per_row distinct random columns per row, ascending: a random stride walk */
    int64_t k = 0;
    q->row_ptr[0] = 0;
    for (int r = 0; r < rows; r++) {
        int64_t step = cols / (per_row ? per_row : 1);
        for (int64_t i = 0; i < per_row; i++)
            q->ol_col[k++] = (uint32_t)(i * step + (int64_t)(rng() % (uint64_t)step));
        q->row_ptr[r + 1] = (uint32_t)k;
    }
    for (int64_t i = 0; i < q->n_outliers; i++) q->ol_val[i] = spqr_f32_to_f16(0.05f * (urand() - 0.5f));
}

/* n independent copies of p (own buffers, viewed through from_sections). */
typedef struct pcopies {
    spqr_packed *p;
    void **bufs;
    int n, nsec;
} pcopies;

static void make_copies(const spqr_packed *src, int n, pcopies *c) {
    spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS], d[SPQR_PACKED_MAX_SECTIONS];
    int ns = spqr_packed_sections(src, s, SPQR_PACKED_MAX_SECTIONS);
    spqr_packed_geom g;
    spqr_packed_geometry(src, &g);
    c->n = n;
    c->nsec = ns;
    c->p = calloc((size_t)n, sizeof(spqr_packed));
    c->bufs = calloc((size_t)n * ns, sizeof(void *));
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < ns; k++) {
            void *b = xalloc(s[k].bytes);
            if (s[k].bytes) memcpy(b, s[k].data, s[k].bytes);
            c->bufs[i * ns + k] = b;
            d[k] = s[k];
            d[k].data = b;
        }
        if (spqr_packed_from_sections(&g, d, ns, &c->p[i]) != SPQR_OK) {
            fprintf(stderr, "bench_kernels: %s\n", spqr_last_error());
            exit(1);
        }
    }
}

static void free_copies(pcopies *c) {
    for (int i = 0; i < c->n; i++) spqr_packed_free(&c->p[i]);
    for (int i = 0; i < c->n * c->nsec; i++) free(c->bufs[i]);
    free(c->p);
    free(c->bufs);
}

static int ncopies_for(size_t bytes) {
    size_t n = (WORKSET + bytes - 1) / bytes;
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* ---- timed series ----------------------------------------------------------------- */

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

static double time_sgemm(const dense_set *s, int rows, int cols, const float *X, int T, float *Y, int iters) {
    double *t = malloc((size_t)iters * sizeof(double));
    for (int i = 0; i < iters + 2; i++) {
        double t0 = spqr_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, rows, cols, 1.0f, X, cols, s->w[i % s->n], cols,
                    0.0f, Y, rows);
        if (i >= 2) t[i - 2] = spqr_now() - t0;
    }
    double m = median(t, iters);
    free(t);
    return m;
}

static double g_best; /* min time of the last time_q series */

static double time_q(const pcopies *c, const float *X, int T, float *Y, int iters) {
    double *t = malloc((size_t)iters * sizeof(double));
    for (int i = 0; i < c->n; i++) spqr_qgemm(&c->p[i], X, T, Y);
    for (int i = 0; i < iters; i++) {
        double t0 = spqr_now();
        spqr_qgemm(&c->p[i % c->n], X, T, Y);
        t[i] = spqr_now() - t0;
    }
    double m = median(t, iters);
    g_best = t[0];
    free(t);
    return m;
}

int main(int argc, char **argv) {
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    const int iters = quick ? 20 : 100;
    openblas_set_num_threads(spqr_num_threads());
    printf("bench_kernels: variant %s, %d threads\n", spqr_kernel_name(), spqr_num_threads());
    const double bw = copy_bandwidth();
    printf("copy bandwidth (read + write, 2 x 256 MiB, best of 6): %.1f GB/s\n\n", bw);

    static const int shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    typedef struct row {
        int R, C, bits;
        double mb, bpw, t_q, gbs, best_gbs, t_f32, t_bf16, t_q16, t_sg;
    } row;
    row rows[6];
    int nr = 0;
    for (int si = 0; si < 3; si++) {
        const int R = shapes[si][0], C = shapes[si][1];
        float *x = xalloc((size_t)C * 16 * sizeof(float)), *y = xalloc((size_t)R * 16 * sizeof(float));
        for (size_t i = 0; i < (size_t)C * 16; i++) x[i] = urand() - 0.5f;
        dense_set f32, bf16;
        dense_make(&f32, SPQR_DT_F32, R, C);
        const double t_f32 = time_dense(&f32, R, C, x, y, iters);
        dense_free(&f32);
        dense_make(&bf16, SPQR_DT_BF16, R, C);
        const double t_bf16 = time_dense(&bf16, R, C, x, y, iters);
        dense_free(&bf16);
        for (int bits = 3; bits <= 4; bits++) {
            spqr_qlayer q;
            ql_random(&q, R, C, bits, 0.01);
            spqr_packed p;
            if (spqr_pack(&q, &p) != SPQR_OK) {
                fprintf(stderr, "bench_kernels: %s\n", spqr_last_error());
                return 1;
            }
            spqr_qlayer_free(&q);
            const size_t pb = spqr_packed_bytes(&p);
            pcopies c;
            make_copies(&p, ncopies_for(pb), &c);
            spqr_packed_free(&p);
            row *w = &rows[nr++];
            w->R = R;
            w->C = C;
            w->bits = bits;
            w->mb = pb / 1e6;
            w->bpw = 8.0 * pb / ((double)R * C);
            w->t_q = time_q(&c, x, 1, y, iters * 2);
            w->gbs = ((double)pb + (double)C * 4) / w->t_q / 1e9;
            w->best_gbs = ((double)pb + (double)C * 4) / g_best / 1e9;
            w->t_q16 = time_q(&c, x, 16, y, quick ? 10 : 40);
            w->t_f32 = t_f32;
            w->t_bf16 = t_bf16;
            free_copies(&c);
        }
        free(x);
        free(y);
    }
    /* OpenBLAS last: its threads keep spinning after a call */
    for (int si = 0; si < 3; si++) {
        const int R = shapes[si][0], C = shapes[si][1];
        float *x = xalloc((size_t)C * 16 * sizeof(float)), *y = xalloc((size_t)R * 16 * sizeof(float));
        for (size_t i = 0; i < (size_t)C * 16; i++) x[i] = urand() - 0.5f;
        dense_set f32;
        dense_make(&f32, SPQR_DT_F32, R, C);
        const double t = time_sgemm(&f32, R, C, x, 16, y, quick ? 5 : 15);
        dense_free(&f32);
        for (int i = 0; i < nr; i++)
            if (rows[i].R == R && rows[i].C == C) rows[i].t_sg = t;
        free(x);
        free(y);
    }
    printf("%-11s %4s %6s %6s | %7s %6s %6s %5s | %7s %6s | %7s %6s | %8s %7s %8s %6s\n", "shape", "bits", "MB",
           "bits/w", "q us", "GB/s", "%copy", "best", "f32 us", "x f32", "bf16 us", "x bf16", "q16 us", "us/tok",
           "sgemm16", "x sg16");
    for (int i = 0; i < nr; i++) {
        const row *w = &rows[i];
        char shp[32];
        snprintf(shp, sizeof shp, "%dx%d", w->R, w->C);
        printf("%-11s %4d %6.2f %6.3f | %7.1f %6.1f %5.0f%% %4.0f%% | %7.1f %5.2fx | %7.1f %5.2fx | %8.1f %7.1f %8.1f "
               "%5.2fx\n",
               shp, w->bits, w->mb, w->bpw, w->t_q * 1e6, w->gbs, 100.0 * w->gbs / bw, 100.0 * w->best_gbs / bw,
               w->t_f32 * 1e6,
               w->t_f32 / w->t_q, w->t_bf16 * 1e6, w->t_bf16 / w->t_q, w->t_q16 * 1e6, w->t_q16 * 1e6 / 16,
               w->t_sg * 1e6, w->t_sg / w->t_q16);
    }
    {
        double la[3] = {0, 0, 0};
        FILE *f = fopen("/proc/loadavg", "r");
        if (f) {
            if (fscanf(f, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = -1;
            fclose(f);
        }
        printf("\nload average at the end (other processes share these cores): %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    }
    printf("q us: median time of one packed matrix-vector product; GB/s: (packed bytes + x) / time; best: %%copy\n"
           "of the fastest call;"
           " f32/bf16 us: dense gemv of the same shape; q16: 16 tokens in one call; sgemm16: OpenBLAS sgemm,\n"
           "16 tokens, float32 weights.\n");
    spqr_kernel_scratch_release();
    return 0;
}
