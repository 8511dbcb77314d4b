/* bench_cuda.c - SpQR CUDA kernels vs cuBLAS fp16 on LLaMA layer shapes.
 *
 *   bench_cuda [--quick] [--sweep] [--reps N]
 *
 * For each shape (LLaMA-7B and 70B linear layers) and wbits 3 and 4
 * (beta1 = beta2 = 16, sbits = zbits = 3, 1% outliers):
 *  1. correctness: the tensor-core kernel against the CUDA-core reference
 *     kernel (batch 1 and 16) and, for 64 sampled rows, against a CPU
 *     dequantization in double precision (relative L2 <= 2e-3: fp16 weights
 *     and inputs, fp32 accumulation);
 *  2. timing with CUDA events: warm-up, then the median of --reps samples,
 *     each sample running the op once on each of several copies of the
 *     weights (rotated so that the 50 MB L2 cannot hold them);
 *  3. cuBLAS fp16 GEMM (cublasGemmEx, fp16 in/out, fp32 accumulation) on the
 *     same shapes in the same run, and the device copy bandwidth (cudaMemcpy
 *     device-to-device and a copy kernel, counting bytes read + written).
 * Achieved bandwidth = (layer bytes + X + Y) / time.
 * Targets: batch 1: >= 3.0x cuBLAS and >= 80% of copy bandwidth;
 *          batch 16: >= 2.5x cuBLAS.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/spqr/cuda/spqr_cuda.h"
#include "cuda_util.h"
#include "formats/spqr/qlayer.h"

#define CHECK(call)                                                                        \
    do {                                                                                   \
        spqr_status st_ = (call);                                                          \
        if (st_ != SPQR_OK) {                                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, spqr_last_error()); \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

static uint64_t g_rng = 88172645463325252ull;
static inline uint64_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
static inline float rndu(void) { return (float)((rnd() >> 40) * (1.0 / 16777216.0)); }
static float rndn(void) {
    float u1 = rndu(), u2 = rndu();
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}
static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void layer_free(spqr_qlayer *q) { spqr_qlayer_free(q); }

static double g_ol_frac = 0.01;
/* random SpQR layer: beta1 = beta2 = 16, 3-bit stats, 1% outliers */
static void layer_make(spqr_qlayer *q, int rows, int cols, int wbits) {
    memset(q, 0, sizeof *q);
    q->rows = rows;
    q->cols = cols;
    q->wbits = wbits;
    q->beta1 = 16;
    q->beta2 = 16;
    q->sbits = 3;
    q->zbits = 3;
    q->ngroups = (cols + 15) / 16;
    q->nrb = (rows + 15) / 16;
    const size_t n = (size_t)rows * cols, ns = (size_t)q->ngroups * rows, n2 = (size_t)q->ngroups * q->nrb;
    q->perm = malloc(sizeof(int32_t) * cols);
    for (int j = 0; j < cols; j++) q->perm[j] = j;
    for (int j = cols - 1; j > 0; j--) {
        int k = (int)(rnd() % (uint64_t)(j + 1)), t = q->perm[j];
        q->perm[j] = q->perm[k];
        q->perm[k] = t;
    }
    q->codes = malloc(n + 8);
    const uint64_t m8 = 0x0101010101010101ull * ((1u << wbits) - 1u);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rnd() & m8;
        memcpy(q->codes + i, &v, 8);
    }
    q->scale_code = malloc(ns + 8);
    q->zero_code = malloc(ns + 8);
    for (size_t i = 0; i < ns; i += 8) {
        uint64_t a = rnd() & 0x0707070707070707ull, b = rnd() & 0x0707070707070707ull;
        memcpy(q->scale_code + i, &a, 8);
        memcpy(q->zero_code + i, &b, 8);
    }
    q->s2_scale = malloc(2 * n2);
    q->s2_zero = malloc(2 * n2);
    q->z2_scale = malloc(2 * n2);
    q->z2_zero = malloc(2 * n2);
    for (size_t i = 0; i < n2; i++) {
        q->s2_scale[i] = spqr_f32_to_f16(0.001f + 0.004f * rndu());
        q->s2_zero[i] = spqr_f32_to_f16(-1.0f + rndu());
        q->z2_scale[i] = spqr_f32_to_f16((float)(1 << wbits) / 8.0f * (0.8f + 0.4f * rndu()));
        q->z2_zero[i] = spqr_f32_to_f16(rndu() - 0.5f);
    }
    const int k = (int)(cols * g_ol_frac);
    q->row_ptr = malloc(sizeof(uint32_t) * ((size_t)rows + 1));
    q->ol_col = malloc(sizeof(uint32_t) * ((size_t)rows * k + 1));
    q->ol_val = malloc(sizeof(uint16_t) * ((size_t)rows * k + 1));
    size_t cnt = 0;
    q->row_ptr[0] = 0;
    uint32_t *tmp = malloc(sizeof(uint32_t) * (k + 1));
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < k; i++) tmp[i] = (uint32_t)(rnd() % (uint64_t)cols);
        qsort(tmp, (size_t)k, sizeof *tmp, cmp_u32);
        for (int i = 0; i < k; i++) {
            if (i && tmp[i] == tmp[i - 1]) continue;
            q->ol_col[cnt] = tmp[i];
            q->ol_val[cnt] = spqr_f32_to_f16(0.05f * rndn());
            cnt++;
        }
        q->row_ptr[r + 1] = (uint32_t)cnt;
    }
    free(tmp);
    q->n_outliers = (int64_t)cnt;
}

/* CPU y for one row (double), per the qlayer.h definition */
static double cpu_row(const spqr_qlayer *q, int r, const float *x) {
    double s = 0;
    const int C = q->cols;
    double *wrow = calloc((size_t)C, sizeof(double));
    for (int j = 0; j < C; j++) {
        const int g = j / q->beta1, rb = r / q->beta2;
        const size_t i2 = (size_t)g * q->nrb + rb, i1 = (size_t)g * q->rows + r;
        const float scale = spqr_f16_to_f32(q->s2_scale[i2]) * ((float)q->scale_code[i1] - spqr_f16_to_f32(q->s2_zero[i2]));
        const float zero = spqr_f16_to_f32(q->z2_scale[i2]) * ((float)q->zero_code[i1] - spqr_f16_to_f32(q->z2_zero[i2]));
        wrow[j] = scale * ((float)q->codes[(size_t)r * C + j] - zero);
    }
    for (uint32_t k = q->row_ptr[r]; k < q->row_ptr[r + 1]; k++)
        wrow[q->ol_col[k]] = (float)wrow[q->ol_col[k]] + spqr_f16_to_f32(q->ol_val[k]);
    for (int j = 0; j < C; j++) s += (float)wrow[j] * (double)x[q->perm[j]];
    free(wrow);
    return s;
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(e / (r > 0 ? r : 1));
}

/* ---- timing ---------------------------------------------------------------- */
typedef struct op_ctx {
    spqr_cuda_qlinear **W;
    uint16_t **W16;
    int ncopies;
    const float *dX;
    const uint16_t *dX16;
    float *dY;
    uint16_t *dY16;
    int rows, cols, n_tok;
    int nsplit;
    int no_pdl;
} op_ctx;

static void op_spqr(op_ctx *c, int k) {
    spqr_cuda_qgemm_opts o = {0, c->nsplit, 0, c->no_pdl};
    CHECK(spqr_cuda_qgemm_ex(c->W[k], c->dX, c->n_tok, c->dY, &o));
}
static void op_cublas(op_ctx *c, int k) {
    CHECK(spqr_cuda_dense_gemm(SPQR_CUDA_F16, c->W16[k], c->dX16, c->dY16, c->rows, c->cols, c->n_tok));
}

static int g_reps = 30;
static spqr_bench_timer *g_tm;

/* median microseconds per call (spqr_bench_median_us over the copies) */
typedef struct op_call {
    void (*fn)(op_ctx *, int);
    op_ctx *c;
} op_call;
static void run_op(void *p, int k) {
    const op_call *o = p;
    o->fn(o->c, k);
}
static double time_op(void (*fn)(op_ctx *, int), op_ctx *c) {
    op_call o = {fn, c};
    double us = 0;
    CHECK(spqr_bench_median_us(g_tm, g_reps, c->ncopies, run_op, &o, &us));
    return us;
}

typedef struct row_t {
    int rows, cols, bits, batch, split;
    double us, us_cublas, gbs, frac, bpw;
    int ok_ratio, ok_bw; /* -1: no target */
} row_t;

int main(int argc, char **argv) {
    int quick = 0, sweep = 0, one = 0, oR = 0, oC = 0, oB = 0, oT = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--one") && i + 4 < argc) {
            one = 1;
            oR = atoi(argv[i + 1]);
            oC = atoi(argv[i + 2]);
            oB = atoi(argv[i + 3]);
            oT = atoi(argv[i + 4]);
            i += 4;
        }
        else if (!strcmp(argv[i], "--sweep")) sweep = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ol") && i + 1 < argc) g_ol_frac = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--sweep] [--reps N] [--one rows cols bits n_tok]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 3) g_reps = 3;
    char name[256];
    if (spqr_cuda_available(name, sizeof name) != SPQR_OK) {
        printf("SKIP: no CUDA device (%s)\n", spqr_last_error());
        return 0;
    }
    printf("device: %s\n", name);
    CHECK(spqr_bench_timer_new(&g_tm));
    if (one) { /* one layer, a few calls (for profilers) */
        spqr_qlayer q;
        layer_make(&q, oR, oC, oB);
        spqr_cuda_qlinear *W = NULL;
        CHECK(spqr_cuda_qlinear_upload(&q, &W));
        float *dX = NULL, *dY = NULL;
        CHECK(spqr_cuda_malloc((void **)&dX, sizeof(float) * oT * oC));
        CHECK(spqr_cuda_malloc((void **)&dY, sizeof(float) * oT * oR));
        CHECK(spqr_bench_fill_normal(dX, (size_t)oT * oC, 5));
        for (int i = 0; i < 20; i++) CHECK(spqr_cuda_qgemm(W, dX, oT, dY));
        CHECK(spqr_cuda_synchronize());
        spqr_cuda_qlinear *Ws[2] = {W, NULL};
        CHECK(spqr_cuda_qlinear_clone(W, &Ws[1]));
        op_ctx c = {Ws, NULL, 2, dX, NULL, dY, NULL, oR, oC, oT, 0, 0};
        const double us = time_op(op_spqr, &c);
        printf("one: %dx%d %d-bit n_tok=%d outliers %.3f: %.2f us (split %d)\n", oR, oC, oB, oT, g_ol_frac, us,
               spqr_cuda_qgemm_auto_split(W, oT));
        spqr_cuda_qlinear_free(Ws[1]);
        spqr_cuda_qlinear_free(W);
        layer_free(&q);
        return 0;
    }
    double bw_memcpy = 0, bw_kernel = 0;
    CHECK(spqr_bench_copy_bandwidth((size_t)1 << 30, 20, &bw_memcpy, &bw_kernel));
    const double bw_copy = bw_memcpy > bw_kernel ? bw_memcpy : bw_kernel;
    printf("copy bandwidth (read+write): cudaMemcpy D2D %.0f GB/s, copy kernel %.0f GB/s -> reference %.0f GB/s\n",
           bw_memcpy, bw_kernel, bw_copy);

    static const int shapes_all[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008},
                                        {8192, 8192}, {28672, 8192}, {8192, 28672}};
    static const int batches[] = {1, 4, 16, 64};
    const int nshapes = quick ? 2 : 6;
    row_t rows_out[6 * 2 * 4];
    int nout = 0, fails = 0;
    const int maxb = 64;

    for (int si = 0; si < nshapes; si++) {
        const int R = shapes_all[si][0], C = shapes_all[si][1];
        /* inputs shared by both bit widths */
        float *dX = NULL, *dY = NULL, *dYr = NULL;
        uint16_t *dX16 = NULL, *dY16 = NULL;
        CHECK(spqr_cuda_malloc((void **)&dX, sizeof(float) * maxb * C));
        CHECK(spqr_cuda_malloc((void **)&dY, sizeof(float) * maxb * R));
        CHECK(spqr_cuda_malloc((void **)&dYr, sizeof(float) * maxb * R));
        CHECK(spqr_cuda_malloc((void **)&dX16, 2 * (size_t)maxb * C));
        CHECK(spqr_cuda_malloc((void **)&dY16, 2 * (size_t)maxb * R));
        CHECK(spqr_bench_fill_normal(dX, (size_t)maxb * C, 1000 + si));
        CHECK(spqr_cuda_f32_to_f16(dX, dX16, (size_t)maxb * C));
        float *hX = malloc(sizeof(float) * maxb * C), *hY = malloc(sizeof(float) * maxb * R),
              *hYr = malloc(sizeof(float) * maxb * R);
        CHECK(spqr_cuda_memcpy_d2h(hX, dX, sizeof(float) * maxb * C));
        /* dense fp16 weights for cuBLAS, several copies */
        const size_t b16 = 2 * (size_t)R * C;
        int nc16 = (int)((3 * 50e6) / b16) + 1;
        if (nc16 < 2) nc16 = 2;
        uint16_t **W16 = calloc((size_t)nc16, sizeof *W16);
        float *tmpf = NULL;
        CHECK(spqr_cuda_malloc((void **)&tmpf, sizeof(float) * R * C));
        for (int k = 0; k < nc16; k++) {
            CHECK(spqr_cuda_malloc((void **)&W16[k], b16));
            CHECK(spqr_bench_fill_normal(tmpf, (size_t)R * C, 77 + k));
            CHECK(spqr_cuda_f32_to_f16(tmpf, W16[k], (size_t)R * C));
        }
        spqr_cuda_free(tmpf);

        for (int bits = 3; bits <= 4; bits++) {
            spqr_qlayer q;
            layer_make(&q, R, C, bits);
            spqr_cuda_qlinear_info info;
            spqr_cuda_qlinear *W0 = NULL;
            CHECK(spqr_cuda_qlinear_upload(&q, &W0));
            spqr_cuda_qlinear_get_info(W0, &info);
            int nc = (int)((3 * 50e6) / info.bytes_total) + 1;
            if (nc < 2) nc = 2;
            if (nc > 24) nc = 24;
            spqr_cuda_qlinear **W = calloc((size_t)nc, sizeof *W);
            W[0] = W0;
            for (int k = 1; k < nc; k++) CHECK(spqr_cuda_qlinear_clone(W0, &W[k]));
            const double bpw = 8.0 * info.bytes_total / ((double)R * C);

            /* correctness: batch 1 and 16 (fp16 weights and activations, fp32 sums) */
            double worst = 0, worst16 = 0;
            const int cb[2] = {1, 16};
            for (int i = 0; i < 2; i++) {
                spqr_cuda_qgemm_opts ref = {SPQR_CUDA_KERNEL_REF, 0, 0, 0};
                CHECK(spqr_cuda_memset(dY, 0xff, sizeof(float) * maxb * R));
                CHECK(spqr_cuda_qgemm(W0, dX, cb[i], dY));
                CHECK(spqr_cuda_qgemm_ex(W0, dX, cb[i], dYr, &ref));
                CHECK(spqr_cuda_synchronize());
                CHECK(spqr_cuda_memcpy_d2h(hY, dY, sizeof(float) * cb[i] * R));
                CHECK(spqr_cuda_memcpy_d2h(hYr, dYr, sizeof(float) * cb[i] * R));
                const double e = rel_l2(hY, hYr, (size_t)cb[i] * R);
                if (i == 0) worst = e;
                else worst16 = e;
            }
            /* CPU check of sampled rows, batch 1 (hY holds batch 16 now; recompute) */
            CHECK(spqr_cuda_qgemm(W0, dX, 1, dY));
            CHECK(spqr_cuda_memcpy_d2h(hY, dY, sizeof(float) * R));
            double e2 = 0, r2 = 0;
            for (int s = 0; s < 64; s++) {
                const int r = (int)(rnd() % (uint64_t)R);
                const double ref = cpu_row(&q, r, hX);
                e2 += (hY[r] - ref) * (hY[r] - ref);
                r2 += ref * ref;
            }
            const double ecpu = sqrt(e2 / r2);
            const int ok = worst < 2e-3 && ecpu < 2e-3 && worst16 < 2e-3;
            if (!ok) fails++;
            printf("\n%dx%d %d-bit: %.3f bits/weight (%.1f MB, %lld outliers), %d copies; "
                   "check vs reference kernel rel L2 (fp16 weights and inputs, tol 2e-3): batch 1 %.2e, batch 16 %.2e; "
                   "batch 1 vs CPU (64 rows) %.2e: %s\n",
                   R, C, bits, bpw, info.bytes_total / 1e6, (long long)info.n_outliers, nc, worst, worst16, ecpu,
                   ok ? "ok" : "FAILED");

            for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
                const int B = batches[bi];
                op_ctx c = {W, W16, nc, dX, dX16, dY, dY16, R, C, B, 0, 0};
                const double us = time_op(op_spqr, &c);
                c.ncopies = nc16;
                const double usc = time_op(op_cublas, &c);
                c.ncopies = nc;
                row_t *o = &rows_out[nout++];
                o->rows = R;
                o->cols = C;
                o->bits = bits;
                o->batch = B;
                o->split = spqr_cuda_qgemm_auto_split(W0, B);
                o->us = us;
                o->us_cublas = usc;
                const double bytes = (double)info.bytes_total + 4.0 * B * (C + R);
                o->gbs = bytes / (us * 1e-6) / 1e9;
                o->frac = o->gbs / bw_copy;
                o->bpw = bpw;
                o->ok_ratio = (B == 1) ? usc / us >= 3.0 : (B == 16) ? usc / us >= 2.5 : -1;
                o->ok_bw = (B == 1) ? o->frac >= 0.8 : -1;
                printf("  batch %2d: spqr %8.2f us (split %d)  cuBLAS fp16 %8.2f us  x%.2f  %6.0f GB/s (%.0f%% of copy)\n",
                       B, us, o->split, usc, usc / us, o->gbs, 100 * o->frac);
                if (sweep && (B == 1 || B == 16)) {
                    static const int splits[] = {1, 2, 3, 4, 6, 8, 12, 16};
                    printf("    sweep nsplit:");
                    for (size_t k = 0; k < sizeof splits / sizeof *splits; k++) {
                        c.nsplit = splits[k];
                        printf(" %d:%.1f", splits[k], time_op(op_spqr, &c));
                    }
                    c.nsplit = 0;
                    c.no_pdl = 1;
                    printf(" | auto without PDL: %.1f us\n", time_op(op_spqr, &c));
                    c.no_pdl = 0;
                }
            }
            for (int k = 0; k < nc; k++) spqr_cuda_qlinear_free(W[k]);
            free(W);
            layer_free(&q);
        }
        for (int k = 0; k < nc16; k++) spqr_cuda_free(W16[k]);
        free(W16);
        spqr_cuda_free(dX);
        spqr_cuda_free(dY);
        spqr_cuda_free(dYr);
        spqr_cuda_free(dX16);
        spqr_cuda_free(dY16);
        free(hX);
        free(hY);
        free(hYr);
    }

    printf("\nSummary (%s; copy bandwidth %.0f GB/s; median of %d samples, weights rotated)\n", name, bw_copy,
           g_reps);
    printf("| shape (out x in) | bits | bits/w | batch | spqr us | cuBLAS fp16 us | speedup | GB/s | %% copy BW | target |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    int met = 0, total = 0;
    for (int i = 0; i < nout; i++) {
        const row_t *o = &rows_out[i];
        char tgt[64] = "-";
        if (o->batch == 1) {
            const int m = o->ok_ratio && o->ok_bw;
            snprintf(tgt, sizeof tgt, "%s (>=3.0x%s, >=80%%%s)", m ? "MET" : "missed", o->ok_ratio ? "" : " no",
                     o->ok_bw ? "" : " no");
            met += m;
            total++;
        } else if (o->batch == 16) {
            snprintf(tgt, sizeof tgt, "%s (>=2.5x)", o->ok_ratio ? "MET" : "missed");
            met += o->ok_ratio;
            total++;
        }
        printf("| %dx%d | %d | %.2f | %d | %.2f | %.2f | %.2fx | %.0f | %.0f%% | %s |\n", o->rows, o->cols, o->bits,
               o->bpw, o->batch, o->us, o->us_cublas, o->us_cublas / o->us, o->gbs, 100 * o->frac, tgt);
    }
    printf("targets met: %d of %d; correctness: %s\n", met, total, fails ? "FAILED" : "all ok");
    spqr_bench_timer_free(g_tm);
    return fails ? 1 : 0;
}
