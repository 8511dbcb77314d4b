/* qgemm.c - the SpQR packed-layer product driver (token passes, input
 * permutation, per-thread tile scratch) and its scalar reference kernel. */
#include "qgemm_internal.h"

#include <omp.h>
#include <stdlib.h>

size_t spqr_qg_scratch_bytes(const spqr_packed *W) {
    size_t cbuf = (size_t)SPQR_QG_CH * 16 * sizeof(float);
    size_t sbuf = (size_t)spqr_qg_chunk_groups(W) * 32 * sizeof(float);
    size_t state = (size_t)SPQR_QG_TB * 32 * sizeof(float);
    size_t s2f = W->beta2 > 0 ? (size_t)W->ngroups * 4 * sizeof(float) : 0; /* float copy of a row block's stats2 */
    size_t tstats = (size_t)W->ngroups * 32 * sizeof(float); /* a tile's scale and zero per group */
    size_t olbuf = (size_t)W->max_tile_outliers * sizeof(float); /* a tile's outlier products */
    return spqr_round64(cbuf) + spqr_round64(sbuf) + spqr_round64(state) + spqr_round64(s2f) + spqr_round64(tstats) + spqr_round64(olbuf);
}

/* ---- packed product -------------------------------------------------------- */

static inline uint32_t idx_at(const void *a, int wide, int64_t i) {
    return wide ? ((const uint32_t *)a)[i] : ((const uint16_t *)a)[i];
}

static spqr_status check_args(const spqr_packed *W, const float *X, int n_tok, float *Y) {
    if (!W || n_tok < 0 || (n_tok > 0 && (!X || !Y)) || !W->codes || !W->ol_row_ptr)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_qgemm: bad arguments");
    return SPQR_OK;
}

typedef void (*tile_fn)(const spqr_qg_job *, int64_t, void *);

spqr_status spqr_qgemm(const spqr_packed *W, const float *X, int n_tok, float *Y) {
    spqr_status st = check_args(W, X, n_tok, Y);
    if (st || n_tok == 0) return st;
    spqr_cpu_kind kind = spqr_cpu_kind_active();
    if (kind == SPQR_CPU_REF) return spqr_qgemm_ref(W, X, n_tok, Y);
    tile_fn fn = kind == SPQR_CPU_AVX512 ? spqr_qg_tile_avx512 : spqr_qg_tile_avx2;

    const int64_t C = W->cols, G = W->ngroups, R = W->rows, T = W->ntiles;
    const int tb = n_tok < SPQR_QG_TB ? n_tok : SPQR_QG_TB;
    int nth = spqr_num_threads();
    if (nth > T) nth = (int)T;
    if (nth < 1) nth = 1;
    const size_t xp_b = spqr_round64((size_t)tb * (size_t)C * sizeof(float));
    const size_t xs_b = spqr_round64((size_t)tb * (size_t)G * sizeof(float));
    const size_t th_b = spqr_qg_scratch_bytes(W);
    size_t total = xp_b + xs_b + (size_t)nth * th_b;
    char *scr = spqr_cpu_scratch(total);
    if (!scr) return spqr_fail(SPQR_ERR_NOMEM, "spqr_qgemm: out of memory (%zu bytes of scratch)", total);
    float *xp = (float *)scr, *xs = (float *)(scr + xp_b);
    int64_t chunk = T / ((int64_t)nth * 8);
    if (chunk < 1) chunk = 1;
    char *thr = scr + xp_b + xs_b;

    for (int t0 = 0; t0 < n_tok; t0 += SPQR_QG_TB) {
        const int nt = n_tok - t0 < SPQR_QG_TB ? n_tok - t0 : SPQR_QG_TB;
        spqr_qg_job job = {W, xp, xs, nt, Y + (size_t)t0 * (size_t)R};
#pragma omp parallel num_threads(nth)
        {
            /* gather the pass's inputs into permuted order, token-interleaved:
             * xp[j][t] = X[t0 + t][perm[j]] */
#pragma omp for schedule(static)
            for (int64_t j0 = 0; j0 < C; j0 += 256) {
                const int64_t j1 = j0 + 256 < C ? j0 + 256 : C;
                for (int t = 0; t < nt; t++) {
                    const float *x = X + (size_t)(t0 + t) * (size_t)C;
                    if (W->wide)
                        for (int64_t j = j0; j < j1; j++) xp[j * nt + t] = x[((const uint32_t *)W->perm)[j]];
                    else
                        for (int64_t j = j0; j < j1; j++) xp[j * nt + t] = x[((const uint16_t *)W->perm)[j]];
                }
            }
            /* group sums (used by the single-token path) */
#pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                float *s = xs + (size_t)t * (size_t)G;
                for (int64_t g = 0; g < G; g++) {
                    int64_t a = g * W->beta1, b = a + W->beta1 < C ? a + W->beta1 : C;
                    float acc = 0.0f;
                    for (int64_t j = a; j < b; j++) acc += xp[j * nt + t];
                    s[g] = acc;
                }
            }
            void *my = thr + (size_t)omp_get_thread_num() * th_b;
            /* dynamic chunks of contiguous tiles: each thread still streams
             * long runs, and a thread that the OS preempts does not hold up
             * the whole product */
#pragma omp for schedule(dynamic, chunk)
            for (int64_t tile = 0; tile < T; tile++) fn(&job, tile, my);
        }
    }
    return SPQR_OK;
}

/* ---- scalar reference -------------------------------------------------------- */

static inline uint32_t get_bits(const uint32_t *base, int lane, int64_t pos, int nbits) {
    int64_t w = pos >> 5;
    int s = (int)(pos & 31);
    uint32_t v = base[w * 16 + lane] >> s;
    if (s + nbits > 32) v |= base[(w + 1) * 16 + lane] << (32 - s);
    return v & ((1u << nbits) - 1u);
}

/* First-level statistics of (row r, group g), exactly as quant/qlayer.h. */
static void ref_stats(const spqr_packed *W, int64_t r, int64_t g, float *scale, float *zero) {
    const int lane = (int)(r % 16);
    if (W->beta2 > 0) {
        const uint32_t *base = W->stat_codes + (r / 16) * W->stat_words * 16;
        uint32_t v = get_bits(base, lane, g * (W->sbits + W->zbits), W->sbits + W->zbits);
        uint32_t sc = v & ((1u << W->sbits) - 1u), zc = v >> W->sbits;
        const uint16_t *e = W->stats2 + ((r / W->beta2) * W->ngroups + g) * 4;
        *scale = spqr_f16_to_f32(e[0]) * ((float)sc - spqr_f16_to_f32(e[1]));
        *zero = spqr_f16_to_f32(e[2]) * ((float)zc - spqr_f16_to_f32(e[3]));
    } else {
        const uint16_t *e = W->stats + (((r / 16) * W->ngroups + g) * 2) * 16;
        *scale = spqr_f16_to_f32(e[lane]);
        *zero = spqr_f16_to_f32(e[16 + lane]);
    }
}

spqr_status spqr_qgemm_ref(const spqr_packed *W, const float *X, int n_tok, float *Y) {
    spqr_status st = check_args(W, X, n_tok, Y);
    if (st || n_tok == 0) return st;
    const int64_t R = W->rows, C = W->cols, B = W->wbits;
    int failed = 0;
#pragma omp parallel num_threads(spqr_num_threads())
    {
        float *wrow = spqr_malloc_array((size_t)C, sizeof(float)); /* one row, ORIGINAL column order */
        if (!wrow) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            if (!wrow) continue;
            const uint32_t *base = W->codes + (r / 16) * W->code_words * 16;
            int64_t k = W->ol_row_ptr[r], kend = W->ol_row_ptr[r + 1];
            float scale = 0.0f, zero = 0.0f;
            for (int64_t j = 0; j < C; j++) {
                if (j % W->beta1 == 0) ref_stats(W, r, j / W->beta1, &scale, &zero);
                float w = scale * ((float)get_bits(base, (int)(r % 16), j * B, (int)B) - zero);
                if (k < kend && (int64_t)idx_at(W->ol_col, W->wide, k) == j) {
                    w = w + spqr_f16_to_f32(W->ol_val[k]);
                    k++;
                }
                wrow[idx_at(W->perm, W->wide, j)] = w;
            }
            for (int t = 0; t < n_tok; t++) {
                const float *x = X + (size_t)t * (size_t)C;
                double acc = 0.0;
                for (int64_t c = 0; c < C; c++) acc += (double)wrow[c] * (double)x[c];
                Y[(size_t)t * (size_t)R + (size_t)r] = (float)acc;
            }
        }
        free(wrow);
    }
    if (failed) return spqr_fail(SPQR_ERR_NOMEM, "spqr_qgemm_ref: out of memory");
    return SPQR_OK;
}
