/* ccgemm.c - the ClusComp product driver (variant dispatch, passes, threads,
 * scratch), the dequantized-tiles + sgemm alternative and the scalar
 * reference. */
#include "ccgemm_internal.h"
#include "../../../kernels/cpu/blas_fixed.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#define TILE_BYTES ((size_t)2 << 20) /* dequantized weights per sgemm tile */

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

/* W [nr][cols] (row-major) = rows [b*d, b*d + nr) of the layer, from row
 * block b: each of the block's d rows is written front to back. */
static void fill_block_rows(const spqr_cc_layer *L, int64_t b, int64_t nr, float *W) {
    const int64_t d = L->d, C = L->cols, f0 = b * C;
    const int ib = L->ibits;
    const float *cb = L->cb32;
    if (d == 4 && nr == 4) {
        float *w0 = W, *w1 = W + C, *w2 = W + 2 * C, *w3 = W + 3 * C;
        for (int64_t j = 0; j < C; j++) {
            const float *e = cb + (size_t)spqr_cc_get_field(L->idx, f0 + j, ib) * 4;
            w0[j] = e[0];
            w1[j] = e[1];
            w2[j] = e[2];
            w3[j] = e[3];
        }
    } else if (d == 8 && nr == 8) {
        for (int64_t j = 0; j < C; j++) {
            const float *e = cb + (size_t)spqr_cc_get_field(L->idx, f0 + j, ib) * 8;
            for (int u = 0; u < 8; u++) W[u * C + j] = e[u];
        }
    } else {
        for (int64_t j = 0; j < C; j++) {
            const float *e = cb + (size_t)spqr_cc_get_field(L->idx, f0 + j, ib) * (size_t)d;
            for (int64_t u = 0; u < nr; u++) W[u * C + j] = e[u];
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
    float *W = spqr_cpu_scratch((size_t)rt * (size_t)C * sizeof(float));
    if (!W) return spqr_fail(SPQR_ERR_NOMEM, "spqr_cc_gemm: out of memory (%lld x %lld tile)", (long long)rt, (long long)C);
    for (int64_t r0 = 0; r0 < R; r0 += rt) {
        const int64_t nr = R - r0 < rt ? R - r0 : rt, nbk = (nr + d - 1) / d;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
        for (int64_t k = 0; k < nbk; k++)
            fill_block_rows(L, r0 / d + k, nr - k * d < d ? nr - k * d : d, W + (size_t)(k * d) * (size_t)C);
        spqr_sgemm_fixed(false, true, T, (int)nr, (int)C, 1.0f, X, (int)C, W, (int)C, 0.0f,
                    Y + r0, (int)R);
    }
    return SPQR_OK;
}

/* ---- fused passes ------------------------------------------------------------------- */

typedef void (*run_fn)(const spqr_cc_job *, int64_t, int64_t, uint32_t *, float *);

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

    const int64_t nitems = (nb + SPQR_CC_ITEM - 1) / SPQR_CC_ITEM;
    int nth = spqr_num_threads();
    if (nth > nitems) nth = (int)nitems;
    if ((int64_t)R * C < 65536) nth = 1;
    if (nth < 1) nth = 1;
    /* scratch: the prepared tokens of a pass (at most qmax registers of
     * `lanes` floats per column), then per-thread offsets */
    const size_t xq_b = T > 1 ? spqr_round64((size_t)C * (size_t)(qmax * lanes) * sizeof(float)) : 0;
    const size_t off_b = spqr_round64((size_t)SPQR_CC_GMAX * SPQR_CC_LDO * sizeof(uint32_t));
    const size_t acc_b = T > 1 ? (size_t)SPQR_CC_ITEM * (size_t)qmax * 16 * sizeof(float) : 0;
    const size_t th_b = off_b + acc_b; /* per thread */
    char *scr = spqr_cpu_scratch(xq_b + (size_t)nth * th_b);
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
            const int narrow_ok = J.cb16 && L->ibits < 16 && (int64_t)L->n * L->d <= 65536;
            if (kind == SPQR_CPU_AVX512 && J.cb16 && vw <= 8 && left <= 2) {
                J.packed = 1;
                J.pt = 1;
                J.nt = left;
                J.nq = pow2_at_least(left);
                J.narrow = narrow_ok;
            } else if (left == 1) {
                J.pt = 1;
                J.nq = 1;
                J.nt = 1;
                J.narrow = narrow_ok;
            } else {
                J.pt = ptmax;
                J.nt = left < ptmax * qmax ? left : ptmax * qmax;
                J.nq = pow2_at_least((J.nt + ptmax - 1) / ptmax);
            }
            J.X = X + (size_t)t0 * (size_t)C;
            J.Y = Y + (size_t)t0 * (size_t)R;
            J.xq = J.pt > 1 ? xq : NULL;
            /* a chunk's prepared tokens (or token rows) take at most ~24 KiB */
            J.cw = (int)(24576 / ((size_t)J.nq * (size_t)(J.pt > 1 ? lanes : 1) * sizeof(float))) / 16 * 16;
            if (J.cw > SPQR_CC_CW) J.cw = SPQR_CC_CW;
            if (J.cw < 16) J.cw = 16;
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
                char *mine = scr + xq_b + (size_t)omp_get_thread_num() * th_b;
                uint32_t *offbuf = (uint32_t *)(void *)mine;
                float *accbuf = (float *)(void *)(mine + off_b);
#pragma omp for schedule(dynamic, 1)
                for (int64_t it = 0; it < nitems; it++) {
                    const int64_t b0 = it * SPQR_CC_ITEM, b1 = b0 + SPQR_CC_ITEM < nb ? b0 + SPQR_CC_ITEM : nb;
                    run(JP, b0, b1, offbuf, accbuf);
                }
            }
            t0 += J.nt;
        }
    }
    return SPQR_OK;
}

/* The fused kernels at every batch size: on the development machine (Zen 5,
 * AVX-512) they beat dequantized tiles + OpenBLAS sgemm at every T measured
 * (single thread, 4096 x 4096, d = 4: 205-290 vs 350-370 us per token for
 * T = 16..512), since a 16-lane FMA of theirs does as much work as sgemm's
 * and nothing is widened to float32 first. */
spqr_status spqr_cc_gemm(const spqr_cc_layer *L, const float *X, int T, float *Y) {
    return spqr_cc_gemm_fused(L, X, T, Y);
}
