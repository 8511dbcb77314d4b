/* ccgemm.c - the ClusComp product driver (variant dispatch, passes, threads,
 * scratch), the large-batch path (dequantized tiles + sgemm) and the scalar
 * reference. */
#include "ccgemm_internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#define TILE_BYTES ((size_t)16 << 20) /* dequantized weights per sgemm tile */
#define ITEM_BLOCKS 32                /* row blocks per work item            */

static spqr_status check_args(const spqr_cc_layer *L, const float *X, int T, float *Y, const char *who) {
    if (!L || !L->cb32 || !L->idx || T < 0 || (T > 0 && (!X || !Y)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: bad arguments", who);
    return SPQR_OK;
}

/* ---- scalar reference ------------------------------------------------------------ */

spqr_status spqr_cc_gemm_ref(const spqr_cc_layer *L, const float *X, int T, float *Y) {
    spqr_status st = check_args(L, X, T, Y, "spqr_cc_gemm_ref");
    if (st || T == 0) return st;
    const int64_t d = L->d, C = L->cols, R = L->rows;
    int failed = 0;
#pragma omp parallel num_threads(spqr_num_threads())
    {
        float *w = spqr_malloc_array((size_t)(d * C), sizeof(float)); /* the block's rows */
        if (!w) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < L->nb; b++) {
            if (!w) continue;
            const int64_t nr = R - b * d < d ? R - b * d : d;
            for (int64_t j = 0; j < C; j++) {
                const float *e = L->cb32 + (size_t)spqr_cc_get_field(L->idx, b * C + j, L->ibits) * (size_t)d;
                for (int64_t u = 0; u < nr; u++) w[u * C + j] = e[u];
            }
            for (int t = 0; t < T; t++) {
                const float *x = X + (size_t)t * (size_t)C;
                for (int64_t u = 0; u < nr; u++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j < C; j++) acc += (double)w[u * C + j] * (double)x[j];
                    Y[(size_t)t * (size_t)R + (size_t)(b * d + u)] = (float)acc;
                }
            }
        }
        free(w);
    }
    if (failed) return spqr_fail(SPQR_ERR_NOMEM, "spqr_cc_gemm_ref: out of memory");
    return SPQR_OK;
}

/* ---- large batches: dequantized tiles + sgemm --------------------------------------- */

/* Wt [cols][nr] (ld nr) = the transposed rows [b0*d, b0*d + nr) of W, for
 * columns [j0, j1). Consecutive blocks fill a row of Wt contiguously. */
static void fill_tile_t(const spqr_cc_layer *L, int64_t b0, int64_t nr, int64_t j0, int64_t j1, float *Wt) {
    const int64_t d = L->d, C = L->cols;
    const int64_t nbk = (nr + d - 1) / d;
    for (int64_t k = 0; k < nbk; k++) {
        const int64_t b = b0 + k, w = nr - k * d < d ? nr - k * d : d;
        const int64_t f0 = b * C;
        float *dst = Wt + k * d;
        if (d == 4 && w == 4)
            for (int64_t j = j0; j < j1; j++)
                memcpy(dst + j * nr, L->cb32 + (size_t)spqr_cc_get_field(L->idx, f0 + j, L->ibits) * 4, 16);
        else if (d == 8 && w == 8)
            for (int64_t j = j0; j < j1; j++)
                memcpy(dst + j * nr, L->cb32 + (size_t)spqr_cc_get_field(L->idx, f0 + j, L->ibits) * 8, 32);
        else
            for (int64_t j = j0; j < j1; j++) {
                const float *e = L->cb32 + (size_t)spqr_cc_get_field(L->idx, f0 + j, L->ibits) * (size_t)d;
                for (int64_t u = 0; u < w; u++) dst[j * nr + u] = e[u];
            }
    }
}

spqr_status spqr_cc_gemm_sgemm(const spqr_cc_layer *L, const float *X, int T, float *Y) {
    spqr_status st = check_args(L, X, T, Y, "spqr_cc_gemm");
    if (st || T == 0) return st;
    const int64_t d = L->d, C = L->cols, R = L->rows;
    int64_t rt = (int64_t)(TILE_BYTES / ((size_t)C * sizeof(float))) / d * d; /* rows per tile */
    if (rt < d) rt = d;
    if (rt > (int64_t)L->nb * d) rt = (int64_t)L->nb * d;
    float *Wt = spqr_cpu_scratch((size_t)rt * (size_t)C * sizeof(float));
    if (!Wt) return spqr_fail(SPQR_ERR_NOMEM, "spqr_cc_gemm: out of memory (%lld x %lld tile)", (long long)rt, (long long)C);
    const int64_t JC = 64; /* columns per fill item: each thread writes whole rows of Wt */
    for (int64_t r0 = 0; r0 < R; r0 += rt) {
        const int64_t nr = R - r0 < rt ? R - r0 : rt;
        const int64_t nitems = (C + JC - 1) / JC;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
        for (int64_t it = 0; it < nitems; it++) {
            const int64_t j0 = it * JC, j1 = j0 + JC < C ? j0 + JC : C;
            fill_tile_t(L, r0 / d, nr, j0, j1, Wt);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, (int)nr, (int)C, 1.0f, X, (int)C, Wt, (int)nr,
                    0.0f, Y + r0, (int)R);
    }
    return SPQR_OK;
}

/* ---- fused passes ------------------------------------------------------------------- */

typedef void (*run_fn)(const spqr_cc_job *, int64_t, int64_t, uint32_t *);

static int pow2_at_least(int v) {
    int p = 1;
    while (p < v) p *= 2;
    return p;
}

spqr_status spqr_cc_gemm_fused(const spqr_cc_layer *L, const float *X, int T, float *Y) {
    spqr_status st = check_args(L, X, T, Y, "spqr_cc_gemm");
    if (st || T == 0) return st;
    const spqr_cpu_kind kind = spqr_cpu_kind_active();
    if (kind == SPQR_CPU_REF) return spqr_cc_gemm_ref(L, X, T, Y);
    const run_fn run = kind == SPQR_CPU_AVX512 ? spqr_cc_run_avx512 : spqr_cc_run_avx2;
    const int lanes = kind == SPQR_CPU_AVX512 ? 16 : 8, qmax = kind == SPQR_CPU_AVX512 ? 8 : 4;
    const int64_t C = L->cols, R = L->rows, nb = L->nb;

    const int64_t nitems = (nb + ITEM_BLOCKS - 1) / ITEM_BLOCKS;
    int nth = spqr_num_threads();
    if (nth > nitems) nth = (int)nitems;
    if ((int64_t)R * C < 65536) nth = 1;
    if (nth < 1) nth = 1;
    /* scratch: the prepared tokens of a pass (at most qmax registers of
     * `lanes` floats per column), then per-thread offsets */
    const size_t xq_b = T > 1 ? spqr_round64((size_t)C * (size_t)(qmax * lanes) * sizeof(float)) : 0;
    const size_t off_b = spqr_round64((size_t)SPQR_CC_GMAX * SPQR_CC_LDO * sizeof(uint32_t));
    char *scr = spqr_cpu_scratch(xq_b + (size_t)nth * off_b);
    if (!scr) return spqr_fail(SPQR_ERR_NOMEM, "spqr_cc_gemm: out of memory (scratch)");
    float *xq = (float *)(void *)scr;

    for (int c0 = 0; c0 < L->d; c0 += lanes) {
        const int dc = L->d - c0 < lanes ? L->d - c0 : lanes;
        const int vw = dc <= 4 ? 4 : dc <= 8 ? 8 : 16;
        const int ptmax = lanes / vw;
        for (int t0 = 0; t0 < T;) {
            const int left = T - t0;
            spqr_cc_job J = {.L = L, .cb = L->cb32 + c0, .cb16 = dc == vw ? L->codebook + c0 : NULL, .c0 = c0,
                             .dc = dc, .vw = vw};
            if (left == 1) {
                J.pt = 1;
                J.nq = 1;
                J.nt = 1;
            } else {
                J.pt = ptmax;
                J.nt = left < ptmax * qmax ? left : ptmax * qmax;
                J.nq = pow2_at_least((J.nt + ptmax - 1) / ptmax);
            }
            J.X = X + (size_t)t0 * (size_t)C;
            J.Y = Y + (size_t)t0 * (size_t)R;
            J.xq = J.pt > 1 ? xq : NULL;
            /* prepared tokens beyond ~1 MiB no longer stay in L2 across a group's chunks */
            J.chunk_outer = J.pt > 1 && (size_t)C * (size_t)(J.nq * lanes) * sizeof(float) > ((size_t)1 << 20);
            const spqr_cc_job *JP = &J;
#pragma omp parallel num_threads(nth)
            {
                if (JP->pt > 1) {
                    const int stride = JP->nq * lanes;
#pragma omp for schedule(static)
                    for (int64_t j = 0; j < C; j++) {
                        float *o = xq + (size_t)j * (size_t)stride;
                        for (int q = 0; q < JP->nq; q++)
                            for (int s = 0; s < JP->pt; s++) {
                                const int t = q * JP->pt + s;
                                const float v = t < JP->nt ? JP->X[(size_t)t * (size_t)C + (size_t)j] : 0.0f;
                                for (int u = 0; u < JP->vw; u++) o[q * lanes + s * JP->vw + u] = v;
                            }
                    }
                }
                uint32_t *offbuf = (uint32_t *)(void *)(scr + xq_b + (size_t)omp_get_thread_num() * off_b);
#pragma omp for schedule(dynamic, 1)
                for (int64_t it = 0; it < nitems; it++) {
                    const int64_t b0 = it * ITEM_BLOCKS, b1 = b0 + ITEM_BLOCKS < nb ? b0 + ITEM_BLOCKS : nb;
                    run(JP, b0, b1, offbuf);
                }
            }
            t0 += J.nt;
        }
    }
    return SPQR_OK;
}

spqr_status spqr_cc_gemm(const spqr_cc_layer *L, const float *X, int T, float *Y) {
    if (T >= SPQR_CC_SGEMM_MIN_T && spqr_cpu_kind_active() != SPQR_CPU_REF) return spqr_cc_gemm_sgemm(L, X, T, Y);
    return spqr_cc_gemm_fused(L, X, T, Y);
}
