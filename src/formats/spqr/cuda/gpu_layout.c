/* gpu_layout.c - packing an spqr_qlayer into the SpQR GPU layout on the host
 * (the layout is defined in gpu_layout.h). Plain C, part of every build: the
 * CUDA upload (spqr_cuda.cu) copies the image this builds to the device, and
 * tests/test_gpu_layout.c decodes it on the CPU. */
#include "formats/spqr/cuda/gpu_layout.h"

#include <stdlib.h>
#include <string.h>

#include "formats/spqr/qlayer.h"

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline size_t align_up(size_t x) { return (x + SPQR_GPU_ALIGN - 1) & ~(size_t)(SPQR_GPU_ALIGN - 1); }

static spqr_status validate_layer(const spqr_qlayer *q) {
    if (q->rows < 1 || q->cols < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad shape %dx%d", q->rows, q->cols);
    if (q->wbits < 2 || q->wbits > 8)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: wbits %d not in 2..8", q->wbits);
    if (q->beta1 < 1 || q->beta2 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad group sizes beta1=%d beta2=%d", q->beta1,
                         q->beta2);
    if (q->ngroups != ceil_div(q->cols, q->beta1))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: ngroups %d != ceil(%d/%d)", q->ngroups, q->cols,
                         q->beta1);
    if (q->beta2 > 0) {
        if (q->sbits < 1 || q->sbits > 8 || q->zbits < 1 || q->zbits > 8)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: sbits/zbits %d/%d not in 1..8", q->sbits,
                             q->zbits);
        if (q->nrb != ceil_div(q->rows, q->beta2))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: nrb %d != ceil(%d/%d)", q->nrb, q->rows,
                             q->beta2);
        if (!q->scale_code || !q->zero_code || !q->s2_scale || !q->s2_zero || !q->z2_scale || !q->z2_zero)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bilevel statistics missing");
        if (q->sq < 0 || q->sq >= SPQR_SQ_COUNT || (q->sq == SPQR_SQ_KMEANS && (!q->cb_scale || !q->cb_zero)))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: statistics quantizer %d unknown or its codebooks "
                             "missing", q->sq);
    } else if (!q->scale_f16 || !q->zero_f16) {
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: fp16 statistics missing");
    }
    if (!q->perm || !q->codes) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: codes/perm missing");
    if (q->n_outliers < 0 || (q->n_outliers > 0 && (!q->row_ptr || !q->ol_col || !q->ol_val)) ||
        q->n_outliers > 0xffffffffll)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad outlier arrays");
    return SPQR_OK;
}

static spqr_status validate_contents(const spqr_qlayer *q) {
    for (int j = 0; j < q->cols; j++)
        if (q->perm[j] < 0 || q->perm[j] >= q->cols)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: perm[%d] = %d out of range", j, q->perm[j]);
    if (q->row_ptr) {
        if (q->row_ptr[0] != 0 || (int64_t)q->row_ptr[q->rows] != q->n_outliers)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: row_ptr does not span the outliers");
        for (int r = 0; r < q->rows; r++) {
            if (q->row_ptr[r + 1] < q->row_ptr[r])
                return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: row_ptr decreases at row %d", r);
            for (uint32_t k = q->row_ptr[r]; k < q->row_ptr[r + 1]; k++) {
                if (q->ol_col[k] >= (uint32_t)q->cols)
                    return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: outlier %u column %u out of range", k,
                                     q->ol_col[k]);
                if (k > q->row_ptr[r] && q->ol_col[k] <= q->ol_col[k - 1])
                    return spqr_fail(SPQR_ERR_INVALID_ARG,
                                     "cuda upload: outlier columns of row %d are not ascending", r);
            }
        }
    }
    return SPQR_OK;
}

spqr_status spqr_gpu_layout_plan(const spqr_qlayer *q, spqr_gpu_plan *p) {
    memset(p, 0, sizeof *p);
    spqr_status st = validate_layer(q);
    if (st != SPQR_OK) return st;

    spqr_gpu_geom *L = &p->geo;
    L->rows = q->rows;
    L->cols = q->cols;
    L->rows_pad = ceil_div(q->rows, SPQR_GPU_TILE_ROWS) * SPQR_GPU_TILE_ROWS;
    L->cols_pad = ceil_div(q->cols, SPQR_GPU_QUAD_COLS) * SPQR_GPU_QUAD_COLS;
    L->ntiles = L->rows_pad / SPQR_GPU_TILE_ROWS;
    L->nquads = L->cols_pad / SPQR_GPU_QUAD_COLS;
    L->ngroups = q->ngroups;
    L->beta1 = q->beta1;
    L->beta2 = q->beta2;
    L->nrb = q->beta2 > 0 ? q->nrb : 0;
    L->wbits = q->wbits;
    L->B = q->wbits <= 4 ? q->wbits : 8;
    L->sbits = q->beta2 > 0 ? q->sbits : 0;
    L->zbits = q->beta2 > 0 ? q->zbits : 0;
    /* the fast layout needs each lane's 16-column quarter in one group (or two, beta1 = 8) */
    L->fast = q->beta1 == 8 || q->beta1 % SPQR_GPU_QUARTER_COLS == 0;
    L->g8 = q->beta1 == 8;
    L->m1 = q->beta1 == SPQR_GPU_QUARTER_COLS;
    if (L->fast && !L->g8 && !L->m1)
        L->gmagic = (uint32_t)((0x100000000ull / (uint64_t)(q->beta1 / SPQR_GPU_QUARTER_COLS)) + 1);
    /* statistics quantizers (qlayer.h): uniform is minmax with its zeros at the
     * mid-points (the qlayer holds them), so every mode runs it; kmeans has no
     * second-level pair, so its centroids (fp16, hence exact) go to the fp16
     * first-level statistics (SM_F16, or the generic layout's floats) */
    const int bil4 = q->beta2 > 0 && q->beta2 % SPQR_GPU_TILE_ROWS == 0 && q->sbits <= 4 && q->zbits <= 4 &&
                     q->sq != SPQR_SQ_KMEANS;
    if (L->fast) {
        /* quarters per group m; groups of the padded columns: 16 quarters per quad */
        const int qpq = SPQR_GPU_QUAD_WINDOWS * SPQR_GPU_WINDOW_QUARTERS;
        const int m = L->g8 ? 1 : q->beta1 / SPQR_GPU_QUARTER_COLS;
        L->ng2 = L->g8 ? 2 * qpq * L->nquads : (qpq * L->nquads - 1) / m + 1;
        L->s2step = L->g8 ? 2 * qpq : (qpq % m == 0 ? qpq / m : 0);
        if (L->ng2 < L->ngroups) L->ng2 = L->ngroups;
    }
    L->smode = bil4 ? SPQR_GPU_SM_BIL4 : SPQR_GPU_SM_F16;
    L->sw = (bil4 ? 2 : 8) * (L->g8 ? 2 : 1);
    p->exact_stats = !L->fast || bil4 || q->beta2 == 0 || q->sq == SPQR_SQ_KMEANS;
    p->n_outliers = q->n_outliers;

    p->b_perm = (size_t)q->cols * 4;
    if (L->fast) {
        p->b_codes = (size_t)L->ntiles * L->nquads * L->B * 512;
        p->b_stats = (size_t)L->ntiles * L->nquads * L->sw * 128;
        p->b_stats2 = bil4 ? (size_t)L->nrb * L->ng2 * 8 : 0;
        p->b_olptr = ((size_t)L->ntiles * L->nquads + 1) * 4;
        p->b_ol = (size_t)q->n_outliers * 4;
        /* the row-ordered outlier copy for the batch-T kernel */
        p->b_orow = ((size_t)q->rows + 1) * 4;
        p->b_ocol = (size_t)q->n_outliers * 4;
        p->b_oval = (size_t)q->n_outliers * 2;
    } else {
        p->b_codes = (size_t)q->rows * q->cols;
        p->b_stats = (size_t)q->rows * q->ngroups * 8;
        p->b_olptr = ((size_t)q->rows + 1) * 4;
        p->b_ol = (size_t)q->n_outliers * 8; /* columns, then float values */
    }
    p->o_codes = 0;
    p->o_stats = align_up(p->b_codes);
    p->o_stats2 = p->o_stats + align_up(p->b_stats);
    p->o_olptr = p->o_stats2 + align_up(p->b_stats2);
    p->o_ol = p->o_olptr + align_up(p->b_olptr);
    p->o_perm = p->o_ol + align_up(p->b_ol);
    p->o_orow = p->o_perm + align_up(p->b_perm);
    p->o_ocol = p->o_orow + align_up(p->b_orow);
    p->o_oval = p->o_ocol + align_up(p->b_ocol);
    p->total = p->o_oval + align_up(p->b_oval);
    return SPQR_OK;
}

/* codes of tiles [ta, tb) */
static void pack_codes(const spqr_qlayer *q, const spqr_gpu_geom *L, uint32_t *hc, int ta, int tb) {
    const int rows = q->rows, cols = q->cols, B = L->B, nq = L->nquads;
    const uint32_t cmask = (1u << B) - 1u;
    for (int tile = ta; tile < tb; tile++)
        for (int qq = 0; qq < nq; qq++)
            for (int lane = 0; lane < SPQR_GPU_LANES; lane++) {
                const int g = lane >> 2, t = lane & 3;
                uint32_t w[4 * 8];
                memset(w, 0, sizeof w);
                for (int wi = 0; wi < SPQR_GPU_QUAD_WINDOWS; wi++)
                    for (int p = 0; p < SPQR_GPU_PAIRS; p++)
                        for (int e = 0; e < 2; e++) {
                            const int kt = p >> 2, r = p & 3;
                            const int row = tile * SPQR_GPU_TILE_ROWS + g + SPQR_GPU_HALF_ROWS * (r & 1);
                            const int col = qq * SPQR_GPU_QUAD_COLS + wi * SPQR_GPU_WINDOW_COLS +
                                            SPQR_GPU_QUARTER_COLS * t + SPQR_GPU_KTILE_COLS * kt + 2 * (r >> 1) + e;
                            if (row >= rows || col >= cols) continue;
                            const uint32_t c = q->codes[(size_t)row * cols + col] & cmask;
                            int wd, bit;
                            spqr_gpu_code_loc(B, p, e, &wd, &bit);
                            if (wd < 0) {
                                for (int b = 0; b < 3; b++) w[wi * 3 + b] |= ((c >> b) & 1u) << bit;
                            } else {
                                w[wi * B + wd] |= c << bit;
                            }
                        }
                for (int j = 0; j < 4 * B; j++) hc[spqr_gpu_code_word_index(B, nq, tile, qq, lane, j)] = w[j];
            }
}

/* first-level statistics of tiles [ta, tb) */
static void pack_stats(const spqr_qlayer *q, const spqr_gpu_geom *L, uint32_t *hs, int ta, int tb) {
    const int rows = q->rows, nq = L->nquads;
    for (int tile = ta; tile < tb; tile++)
        for (int qq = 0; qq < nq; qq++)
            for (int lane = 0; lane < SPQR_GPU_LANES; lane++) {
                const int g = lane >> 2, t = lane & 3;
                uint32_t w[16];
                memset(w, 0, sizeof w);
                for (int wi = 0; wi < SPQR_GPU_QUAD_WINDOWS; wi++)
                    for (int grp = 0; grp < (L->g8 ? 2 : 1); grp++)
                        for (int h = 0; h < 2; h++) {
                            const int row = tile * SPQR_GPU_TILE_ROWS + g + SPQR_GPU_HALF_ROWS * h;
                            const int gi = spqr_gpu_group_of(L, qq * SPQR_GPU_QUAD_WINDOWS + wi, t, grp);
                            if (row >= rows) continue;
                            if (L->smode == SPQR_GPU_SM_BIL4) {
                                const size_t si = (size_t)gi * rows + row;
                                const int i = spqr_gpu_bil4_word(L->g8, wi);
                                const int base = spqr_gpu_bil4_bit(L->g8, wi, grp, h);
                                w[i] |= ((uint32_t)q->scale_code[si] & 15u) << base;
                                w[i] |= ((uint32_t)q->zero_code[si] & 15u) << (base + 16);
                            } else {
                                uint16_t sh, zh;
                                if (q->beta2 == 0) {
                                    sh = q->scale_f16[(size_t)gi * rows + row];
                                    zh = q->zero_f16[(size_t)gi * rows + row];
                                } else { /* the exact float statistics rounded to fp16 */
                                    float s, z;
                                    spqr_qlayer_group_stats(q, row, gi, &s, &z);
                                    sh = spqr_f32_to_f16(s);
                                    zh = spqr_f32_to_f16(z);
                                }
                                w[spqr_gpu_f16_word(L->g8, wi, grp, h)] =
                                    (uint32_t)sh | ((uint32_t)(zh ^ 0x8000u) << 16);
                            }
                        }
                for (int i = 0; i < L->sw; i++) hs[spqr_gpu_stat_word_index(L->sw, nq, tile, qq, lane, i)] = w[i];
            }
}

/* the fast layout's sections */
static void pack_fast(const spqr_qlayer *q, const spqr_gpu_geom *L, uint32_t *hc, uint32_t *hs, uint32_t *h2,
                      uint32_t *hp, uint32_t *ho) {
    const int rows = q->rows, nq = L->nquads;
#pragma omp parallel for schedule(static)
    for (int tile = 0; tile < L->ntiles; tile++) {
        pack_codes(q, L, hc, tile, tile + 1);
        pack_stats(q, L, hs, tile, tile + 1);
    }
    /* second-level statistics: x = s2_zero | z2_zero << 16, y = s2_scale | -z2_scale << 16 */
    if (L->smode == SPQR_GPU_SM_BIL4)
        for (int rb = 0; rb < L->nrb; rb++)
            for (int gi = 0; gi < L->ngroups; gi++) { /* the padding groups stay zero */
                const size_t si = (size_t)gi * L->nrb + rb, di = 2 * ((size_t)rb * L->ng2 + gi);
                h2[di] = (uint32_t)q->s2_zero[si] | ((uint32_t)q->z2_zero[si] << 16);
                h2[di + 1] = (uint32_t)q->s2_scale[si] | ((uint32_t)(q->z2_scale[si] ^ 0x8000u) << 16);
            }
    /* outliers: buckets per (tile, quad), rows ascending, columns ascending within a row */
    uint32_t k = 0;
    for (int tile = 0; tile < L->ntiles; tile++) {
        uint32_t ptr[SPQR_GPU_TILE_ROWS], end[SPQR_GPU_TILE_ROWS];
        for (int i = 0; i < SPQR_GPU_TILE_ROWS; i++) {
            const int r = tile * SPQR_GPU_TILE_ROWS + i;
            ptr[i] = (q->row_ptr && r < rows) ? q->row_ptr[r] : 0;
            end[i] = (q->row_ptr && r < rows) ? q->row_ptr[r + 1] : 0;
        }
        for (int qq = 0; qq < nq; qq++) {
            hp[(size_t)tile * nq + qq] = k;
            for (int i = 0; i < SPQR_GPU_TILE_ROWS; i++)
                while (ptr[i] < end[i] && q->ol_col[ptr[i]] < (uint32_t)(qq + 1) * SPQR_GPU_QUAD_COLS) {
                    ho[k++] = spqr_gpu_ol_entry(q->ol_col[ptr[i]] % SPQR_GPU_QUAD_COLS, (uint32_t)i, q->ol_val[ptr[i]]);
                    ptr[i]++;
                }
        }
    }
    hp[(size_t)L->ntiles * nq] = k;
}

spqr_status spqr_gpu_layout_pack(const spqr_qlayer *q, const spqr_gpu_plan *p, unsigned char **image) {
    *image = NULL;
    spqr_status st = validate_contents(q);
    if (st != SPQR_OK) return st;
    unsigned char *h = calloc(1, p->total);
    if (!h) return spqr_fail(SPQR_ERR_NOMEM, "cuda upload: %zu bytes of host staging", p->total);
    const spqr_gpu_geom *L = &p->geo;
    if (L->fast) {
        pack_fast(q, L, (uint32_t *)(h + p->o_codes), (uint32_t *)(h + p->o_stats), (uint32_t *)(h + p->o_stats2),
                  (uint32_t *)(h + p->o_olptr), (uint32_t *)(h + p->o_ol));
        uint32_t *orow = (uint32_t *)(h + p->o_orow), *ocol = (uint32_t *)(h + p->o_ocol);
        uint16_t *oval = (uint16_t *)(h + p->o_oval);
        for (int r = 0; r <= q->rows; r++) orow[r] = q->row_ptr ? q->row_ptr[r] : 0;
        for (int64_t k = 0; k < q->n_outliers; k++) {
            ocol[k] = q->ol_col[k];
            oval[k] = q->ol_val[k];
        }
    } else {
        memcpy(h + p->o_codes, q->codes, p->b_codes);
        float *gs = (float *)(h + p->o_stats);
        for (int r = 0; r < q->rows; r++)
            for (int gi = 0; gi < q->ngroups; gi++) {
                const size_t si = 2 * spqr_gpu_generic_stat_index(L, r, gi);
                spqr_qlayer_group_stats(q, r, gi, &gs[si], &gs[si + 1]);
            }
        uint32_t *gr = (uint32_t *)(h + p->o_olptr);
        uint32_t *gc = (uint32_t *)(h + p->o_ol);
        float *gv = (float *)(h + p->o_ol + (size_t)q->n_outliers * 4);
        for (int r = 0; r <= q->rows; r++) gr[r] = q->row_ptr ? q->row_ptr[r] : 0;
        for (int64_t k = 0; k < q->n_outliers; k++) {
            gc[k] = q->ol_col[k];
            gv[k] = spqr_f16_to_f32(q->ol_val[k]);
        }
    }
    memcpy(h + p->o_perm, q->perm, p->b_perm);
    *image = h;
    return SPQR_OK;
}

void spqr_gpu_layout_sections(const spqr_gpu_plan *p, const void *base, spqr_gpu_sections *s) {
    const unsigned char *b = (const unsigned char *)base;
    memset(s, 0, sizeof *s);
    if (p->geo.fast) {
        s->codes = (const uint32_t *)(const void *)(b + p->o_codes);
        s->stats = (const uint32_t *)(const void *)(b + p->o_stats);
        s->stats2 = p->b_stats2 ? (const uint32_t *)(const void *)(b + p->o_stats2) : NULL;
        s->ol_off = (const uint32_t *)(const void *)(b + p->o_olptr);
        s->ol = (const uint32_t *)(const void *)(b + p->o_ol);
        s->orow = (const uint32_t *)(const void *)(b + p->o_orow);
        s->ocol = (const uint32_t *)(const void *)(b + p->o_ocol);
        s->oval = (const uint16_t *)(const void *)(b + p->o_oval);
    } else {
        s->gcodes = b + p->o_codes;
        s->gstats = (const float *)(const void *)(b + p->o_stats);
        s->grow = (const uint32_t *)(const void *)(b + p->o_olptr);
        s->gcol = (const uint32_t *)(const void *)(b + p->o_ol);
        s->gval = (const float *)(const void *)(b + p->o_ol + (size_t)p->n_outliers * 4);
    }
    s->perm = (const int32_t *)(const void *)(b + p->o_perm);
}
