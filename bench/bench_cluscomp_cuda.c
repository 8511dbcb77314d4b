/* bench_cluscomp_cuda.c - ClusComp CUDA kernels vs cuBLAS fp16 on LLaMA-7B
 * layer shapes.
 *
 *   bench_cluscomp_cuda [--quick] [--sweep] [--reps N]
 *
 * Shapes 4096x4096 (q/k/v/o), 11008x4096 (gate/up), 4096x11008 (down);
 * sub-vector dimension d in {4, 8}; codebooks of n = 4096 entries (12-bit
 * indices; fp16 codebook of 32 KiB at d = 4, 64 KiB at d = 8: held in
 * shared memory) and n = 65536 (16-bit; 512 KiB / 1 MiB: too large for
 * shared memory, the lookup kernel works on codebook pieces, and the same
 * layer is also timed with the codebook read through L1/L2). Indices
 * uniform random, codebook values normal(0, 0.02) in fp16. Batches 1, 8,
 * 16, 32, 64: the lookup kernel (in passes of <= 8 tokens) and, from 8
 * tokens on, the dequantize + cuBLAS path.
 *
 * Per configuration:
 *  1. correctness: the lookup kernel against the reference kernel (batch 1
 *     and 8, relative L2, tolerance 1e-5: both use the exact fp16 codebook
 *     and fp32 inputs) and the dequantize + cuBLAS path at batch 64
 *     (tolerance 2e-3: fp16 inputs and outputs);
 *  --sweep (4096x4096): warps per block, PDL, piece sizes at batch 1 and
 *     column slices at batch 8;
 *  2. timing with CUDA events: warm-up, then the median of --reps samples,
 *     each running the op once on each of several copies of the layer
 *     (rotated so that the 50 MB L2 cannot hold them);
 *  3. cuBLAS fp16 (cublasGemmEx, fp16 weights/inputs/outputs, fp32
 *     accumulation, through spqr_cuda_dense_gemm) on the same shape in the
 *     same run, with as many weight copies.
 * Bytes moved = device index stream + fp16 codebook (counted once per
 * call) + X (fp32) + Y (fp32); cuBLAS: 2*rows*cols + 2*T*(rows+cols).
 * Target: batch 1 faster than cuBLAS fp16.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_util.h"
#include "formats/cluscomp/cluscomp.h"
#include "formats/cluscomp/cuda/cc_cuda.h"
#include "formats/cluscomp/cuda/cc_cuda_ex.h"
#include "kernels/cuda/cuda_rt.h"

#define CHECK(call)                                                                           \
    do {                                                                                      \
        spqr_status st_ = (call);                                                             \
        if (st_ != SPQR_OK) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, spqr_last_error()); \
            exit(1);                                                                          \
        }                                                                                     \
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

/* ---- a random layer, built by hand (cluscomp.h's definition) ------------------ */
typedef struct hlayer {
    spqr_cc_layer L;
    uint16_t *cb;
    uint8_t *idx;
} hlayer;

static void hlayer_make(hlayer *h, int rows, int cols, int d, int n) {
    memset(h, 0, sizeof *h);
    int ib = 1;
    while ((1 << ib) < n) ib++;
    const int nb = (rows + d - 1) / d;
    const uint64_t fields = (uint64_t)nb * cols;
    const size_t nbytes = (size_t)((fields * ib + 7) / 8);
    h->cb = malloc(2 * (size_t)n * d);
    for (size_t i = 0; i < (size_t)n * d; i++) h->cb[i] = spqr_f32_to_f16(0.02f * rndn());
    h->idx = calloc(nbytes + 8, 1);
    uint64_t acc = 0;
    int have = 0;
    size_t o = 0;
    for (uint64_t i = 0; i < fields; i++) {
        const uint64_t v = rnd() % (uint64_t)n;
        acc |= v << have;
        have += ib;
        while (have >= 8) {
            h->idx[o++] = (uint8_t)acc;
            acc >>= 8;
            have -= 8;
        }
    }
    if (have) h->idx[o++] = (uint8_t)acc;
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
    L->idx_bytes = nbytes;
}
static void hlayer_free(hlayer *h) {
    free(h->cb);
    free(h->idx);
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

/* ---- timing --------------------------------------------------------------------- */
typedef struct op_ctx {
    void **W;
    uint16_t **W16;
    int ncopies;
    const float *dX;
    const uint16_t *dX16;
    float *dY;
    uint16_t *dY16;
    int rows, cols, T;
    spqr_cc_cuda_opts o;
} op_ctx;

static void op_cc(op_ctx *c, int k) { CHECK(spqr_cc_cuda_gemm_ex(c->W[k], c->dX, c->T, c->dY, &c->o)); }
static void op_cublas(op_ctx *c, int k) {
    CHECK(spqr_cuda_dense_gemm(SPQR_CUDA_F16, c->W16[k], c->dX16, c->dY16, c->rows, c->cols, c->T));
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
    int rows, cols, d, n, ibits, T;
    double bpw, mb, us, us_cublas, gbs, gbs_cublas;
} row_t;

int main(int argc, char **argv) {
    int quick = 0, sweep = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--sweep")) sweep = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--sweep] [--reps N]\n", argv[0]);
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
    double bw_memcpy = 0, bw_kernel = 0;
    CHECK(spqr_bench_copy_bandwidth((size_t)512 << 20, 10, &bw_memcpy, &bw_kernel));
    printf("copy bandwidth (read+write): cudaMemcpy D2D %.0f GB/s, copy kernel %.0f GB/s\n", bw_memcpy, bw_kernel);

    static const int shapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    static const int dims[] = {4, 8};
    static const int cbn[] = {4096, 65536};
    const int nshapes = quick ? 1 : 3;
    const int maxT = 64;
    row_t out[3 * 2 * 2 * 2];
    int nout = 0, fails = 0;

    for (int si = 0; si < nshapes; si++) {
        const int R = shapes[si][0], C = shapes[si][1];
        float *dX = NULL, *dY = NULL, *dYr = NULL;
        uint16_t *dX16 = NULL, *dY16 = NULL;
        CHECK(spqr_cuda_malloc((void **)&dX, sizeof(float) * maxT * C));
        CHECK(spqr_cuda_malloc((void **)&dY, sizeof(float) * maxT * R));
        CHECK(spqr_cuda_malloc((void **)&dYr, sizeof(float) * maxT * R));
        CHECK(spqr_cuda_malloc((void **)&dX16, 2 * (size_t)maxT * C));
        CHECK(spqr_cuda_malloc((void **)&dY16, 2 * (size_t)maxT * R));
        CHECK(spqr_bench_fill_normal(dX, (size_t)maxT * C, 1000 + si));
        CHECK(spqr_cuda_f32_to_f16(dX, dX16, (size_t)maxT * C));
        float *hY = malloc(sizeof(float) * maxT * R), *hYr = malloc(sizeof(float) * maxT * R);
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
        /* cuBLAS times per batch size, measured once per shape */
        static const int Ts[] = {1, 8, 16, 32, 64};
        double us_cublas[5];
        {
            op_ctx c = {NULL, W16, nc16, dX, dX16, dY, dY16, R, C, 1, {0, 0, 0, 0, 0, 0, 0, 0}};
            for (int i = 0; i < 5; i++) {
                c.T = Ts[i];
                us_cublas[i] = time_op(op_cublas, &c);
            }
            printf("\n%dx%d cuBLAS fp16 (%d weight copies): T=1 %.2f us, T=8 %.2f us, T=16 %.2f us, T=32 %.2f us, "
                   "T=64 %.2f us\n",
                   R, C, nc16, us_cublas[0], us_cublas[1], us_cublas[2], us_cublas[3], us_cublas[4]);
        }

        for (int di = 0; di < 2; di++)
            for (int ni = 0; ni < 2; ni++) {
                const int d = dims[di], n = cbn[ni];
                hlayer h;
                hlayer_make(&h, R, C, d, n);
                void *W0 = NULL;
                size_t bytes = 0;
                CHECK(spqr_cc_cuda_upload(&h.L, &W0, &bytes));
                spqr_cc_cuda_info info;
                spqr_cc_cuda_get_info(W0, &info);
                int nc = (int)((3 * 50e6) / bytes) + 1;
                if (nc < 2) nc = 2;
                if (nc > 48) nc = 48;
                void **W = calloc((size_t)nc, sizeof *W);
                W[0] = W0;
                for (int k = 1; k < nc; k++) CHECK(spqr_cc_cuda_clone(W0, &W[k]));
                const double moved_w = (double)info.bytes_idx + (double)info.n * d * 2;
                const double bpw = 8.0 * moved_w / ((double)R * C);

                /* correctness */
                spqr_cc_cuda_opts ref = {SPQR_CC_KERNEL_REF, 0, 0, 0, 0, 0, 0, 0};
                spqr_cc_cuda_opts deq = {SPQR_CC_KERNEL_DEQ, 0, 0, 0, 0, 0, 0, 0};
                double e1 = 0, e8 = 0, e64 = 0;
                const int cT[3] = {1, 8, 64};
                for (int i = 0; i < 3; i++) {
                    CHECK(spqr_cuda_memset(dY, 0xff, sizeof(float) * maxT * R));
                    if (cT[i] == 64)
                        CHECK(spqr_cc_cuda_gemm_ex(W0, dX, cT[i], dY, &deq));
                    else
                        CHECK(spqr_cc_cuda_gemm(W0, dX, cT[i], dY));
                    CHECK(spqr_cc_cuda_gemm_ex(W0, dX, cT[i], dYr, &ref));
                    CHECK(spqr_cuda_synchronize());
                    CHECK(spqr_cuda_memcpy_d2h(hY, dY, sizeof(float) * cT[i] * R));
                    CHECK(spqr_cuda_memcpy_d2h(hYr, dYr, sizeof(float) * cT[i] * R));
                    const double e = rel_l2(hY, hYr, (size_t)cT[i] * R);
                    if (i == 0) e1 = e;
                    else if (i == 1) e8 = e;
                    else e64 = e;
                }
                const int ok = e1 <= 1e-5 && e8 <= 1e-5 && e64 <= 2e-3;
                static const char *modes[] = {"codebook in shared memory", "codebook in global memory",
                                              "codebook pieces"};
                if (!ok) fails++;
                char p1[256], p8[256];
                CHECK(spqr_cc_cuda_plan_str(W0, 1, NULL, p1, sizeof p1));
                CHECK(spqr_cc_cuda_plan_str(W0, 8, NULL, p8, sizeof p8));
                printf("%dx%d d=%d n=%d (%d-bit, %s): %.3f bits/weight (index %.2f MB + codebook %.3f MB), %d copies; "
                       "rel L2 vs reference kernel: T=1 %.1e, T=8 %.1e, DEQ T=64 %.1e: %s\n"
                       "  plan T=1: %s\n  plan T=8: %s\n",
                       R, C, d, n, info.ibits, modes[info.mode], bpw, info.bytes_idx / 1e6, info.n * d * 2 / 1e6, nc, e1, e8, e64,
                       ok ? "ok" : "FAILED", p1, p8);

                op_ctx c = {W, NULL, nc, dX, dX16, dY, dY16, R, C, 1, {0, 0, 0, 0, 0, 0, 0, 0}};
                for (int i = 0; i < 5; i++) {
                    const int T = Ts[i];
                    c.T = T;
                    memset(&c.o, 0, sizeof c.o);
                    c.o.kernel = SPQR_CC_KERNEL_LOOKUP;
                    const double us = time_op(op_cc, &c);
                    double usd = 0, usg = 0;
                    if (T >= 8) {
                        c.o.kernel = SPQR_CC_KERNEL_DEQ;
                        usd = time_op(op_cc, &c);
                    }
                    if (T <= 8 && info.mode != 1) { /* the codebook read from global memory instead */
                        c.o.kernel = SPQR_CC_KERNEL_LOOKUP;
                        c.o.cb_global = 1;
                        usg = time_op(op_cc, &c);
                    }
                    const double mb = moved_w + 4.0 * T * (R + C);
                    const double mbc = 2.0 * R * C + 2.0 * T * (R + C);
                    printf("  T=%-2d lookup %8.2f us %6.0f GB/s | cuBLAS fp16 %8.2f us %6.0f GB/s | x%.2f", T, us,
                           mb / us * 1e-3, us_cublas[i], mbc / us_cublas[i] * 1e-3, us_cublas[i] / us);
                    if (usg > 0) printf(" | global codebook %8.2f us", usg);
                    if (T >= 8) printf(" | deq+cuBLAS %8.2f us", usd);
                    printf("\n");
                    if (T == 1 || T == 8) {
                        row_t *o = &out[nout++];
                        o->rows = R;
                        o->cols = C;
                        o->d = d;
                        o->n = n;
                        o->ibits = info.ibits;
                        o->T = T;
                        o->bpw = bpw;
                        o->mb = mb / 1e6;
                        o->us = us;
                        o->us_cublas = us_cublas[i];
                        o->gbs = mb / us * 1e-3;
                        o->gbs_cublas = mbc / us_cublas[i] * 1e-3;
                    }
                }
                if (sweep && si == 0) {
                    static const int nws[] = {8, 16, 32};
                    c.T = 1;
                    printf("  sweep T=1:");
                    for (int a = 0; a < 3; a++) {
                        spqr_cc_cuda_opts so = {SPQR_CC_KERNEL_LOOKUP, 0, nws[a], 0, 0, 0, 0, 0};
                        c.o = so;
                        printf(" nw=%d %.2f", nws[a], time_op(op_cc, &c));
                    }
                    {
                        spqr_cc_cuda_opts so = {SPQR_CC_KERNEL_LOOKUP, 0, 0, 0, 0, 0, 0, 1};
                        c.o = so;
                        printf(" no-PDL %.2f", time_op(op_cc, &c));
                    }
                    if (info.mode == 2)
                        for (int pc = 2; pc <= 16; pc *= 2) {
                            spqr_cc_cuda_opts so = {SPQR_CC_KERNEL_LOOKUP, 0, 0, 0, 0, 0, (n + pc - 1) / pc, 0};
                            c.o = so;
                            char pl[256];
                            CHECK(spqr_cc_cuda_plan_str(W0, 1, &so, pl, sizeof pl));
                            printf(" pieces<=%d(%s) %.2f", pc, strstr(pl, "nw="), time_op(op_cc, &c));
                        }
                    c.T = 8;
                    printf("\n  sweep T=8:");
                    for (int kg = 1; kg <= 8; kg *= 2) {
                        spqr_cc_cuda_opts so = {SPQR_CC_KERNEL_LOOKUP, 0, 0, 0, kg, 0, 0, 0};
                        c.o = so;
                        printf(" kg>=%d %.2f", kg, time_op(op_cc, &c));
                    }
                    printf("\n");
                    memset(&c.o, 0, sizeof c.o);
                }
                for (int k = 0; k < nc; k++) spqr_cc_cuda_free(W[k]);
                free(W);
                hlayer_free(&h);
            }
        for (int k = 0; k < nc16; k++) spqr_cuda_free(W16[k]);
        free(W16);
        spqr_cuda_free(dX);
        spqr_cuda_free(dY);
        spqr_cuda_free(dYr);
        spqr_cuda_free(dX16);
        spqr_cuda_free(dY16);
        free(hY);
        free(hYr);
    }

    printf("\n| shape | d | n (ibits) | bits/w | T | lookup us | GB/s | cuBLAS fp16 us | GB/s | speedup |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nout; i++) {
        const row_t *o = &out[i];
        printf("| %dx%d | %d | %d (%d) | %.2f | %d | %.2f | %.0f | %.2f | %.0f | %.2fx |\n", o->rows, o->cols, o->d,
               o->n, o->ibits, o->bpw, o->T, o->us, o->gbs, o->us_cublas, o->gbs_cublas, o->us_cublas / o->us);
    }
    spqr_bench_timer_free(g_tm);
    printf("\n%s\n", fails ? "CORRECTNESS FAILURES" : "all checks ok");
    return fails ? 1 : 0;
}
