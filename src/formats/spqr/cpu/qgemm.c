/* qgemm.c - the SpQR packed-layer product driver (token passes, input
 * permutation, per-thread tile scratch) and its scalar reference kernel. */
#include "qgemm_internal.h"

#include <omp.h>
#include <stdlib.h>

#define TILE SPQR_PACKED_TILE /* rows per lane-interleaved tile */

/* The per-thread scratch of the tile kernels: the one definition of its
 * layout (sizes and order), used for its size and to carve it. */
static size_t carve(const spqr_packed *W, char *base, spqr_qg_bufs *b) {
    const size_t sizes[6] = {
        (size_t)SPQR_QG_CH * SPQR_PACKED_TILE * sizeof(float),                /* cbuf  */
        (size_t)spqr_qg_chunk_groups(W) * 2 * SPQR_PACKED_TILE * sizeof(float), /* sbuf  */
        (size_t)SPQR_QG_TB * 2 * SPQR_PACKED_TILE * sizeof(float),           /* state */
        W->kbeta2 > 0 ? (size_t)W->ngroups * 4 * sizeof(float) : 0,         /* s2f   */
        (size_t)W->ngroups * 2 * SPQR_PACKED_TILE * sizeof(float),           /* tstats */
        (size_t)W->max_tile_outliers * sizeof(float),                        /* olbuf */
    };
    float **dst[6] = {&b->cbuf, &b->sbuf, &b->state, &b->s2f, &b->tstats, &b->olbuf};
    size_t off = 0;
    for (int i = 0; i < 6; i++) {
        if (base) *dst[i] = (float *)(void *)(base + off);
        off += spqr_round64(sizes[i]);
    }
    return off;
}

size_t spqr_qg_scratch_bytes(const spqr_packed *W) {
    spqr_qg_bufs b;
    return carve(W, NULL, &b);
}

void spqr_qg_carve(const spqr_packed *W, void *scratch, spqr_qg_bufs *b) { carve(W, scratch, b); }

int64_t spqr_qg_fused_blocks(const spqr_packed *W) {
    if (W->beta1 % 32 == 0) return (W->cols / W->beta1) * (W->beta1 / 32);
    return W->cols / 32;
}

/* ---- packed product -------------------------------------------------------- */

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

    const int64_t C = W->cols, NG = W->ngroups, R = W->rows, T = W->ntiles;
    const int tb = n_tok < SPQR_QG_TB ? n_tok : SPQR_QG_TB;
    int nth = spqr_num_threads();
    if (nth > T) nth = (int)T;
    if (nth < 1) nth = 1;
    const size_t xp_b = spqr_round64((size_t)tb * (size_t)C * sizeof(float));
    const size_t xs_b = spqr_round64((size_t)tb * (size_t)NG * sizeof(float));
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
                float *s = xs + (size_t)t * (size_t)NG;
                for (int64_t g = 0; g < NG; g++) {
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

/* First-level statistics of (row r, group g), exactly as qlayer.h: the
 * layout's one decode of every statistics quantizer (packed.h), read from the
 * file's sections (not the kernels' derived copies). */
static void ref_stats(const spqr_packed *W, int64_t r, int64_t g, float *scale, float *zero) {
    spqr_packed_group_stats(W, r, g, scale, zero);
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
            const uint32_t *base = W->codes + (r / TILE) * W->code_words * TILE;
            int64_t k = W->ol_row_ptr[r], kend = W->ol_row_ptr[r + 1];
            float scale = 0.0f, zero = 0.0f;
            for (int64_t j = 0; j < C; j++) {
                if (j % W->beta1 == 0) ref_stats(W, r, j / W->beta1, &scale, &zero);
                float w = scale * ((float)spqr_packed_get_bits(base, (int)(r % TILE), j * B, (int)B) - zero);
                if (k < kend && (int64_t)spqr_packed_idx(W->ol_col, W->wide, k) == j) {
                    w = w + spqr_f16_to_f32(W->ol_val[k]);
                    k++;
                }
                wrow[spqr_packed_idx(W->perm, W->wide, j)] = w;
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
