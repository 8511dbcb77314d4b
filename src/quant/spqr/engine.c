/* engine.c - the column step of RTN, GPTQ and SpQR, plugged into the GPTQ
 * driver (../gptq_driver.h): statistics fitted per group on the updated
 * weights (min-max, optionally leave-one-out for SpQR, bilevel or fp16),
 * codes, and SpQR's per-weight outlier detection. The driver does the
 * Hessian preparation, the error feedback and the blocks; this file turns
 * what the steps recorded into an spqr_qlayer (codes row-major, outlier
 * CSR). RTN is the same step without error feedback. */
#include "quant_internal.h"

#include <math.h>
#include <stdlib.h>

#include "../gptq_driver.h"

typedef struct engine {
    int rows, cols, glen, beta2, nrb, sbits, zbits, statq;
    float *cbs, *cbz;  /* kmeans: the layer's centroids as floats [2^sbits], [2^zbits] */
    float maxq;
    int feedback;  /* GPTQ error feedback */
    int outliers;  /* SpQR per-column outlier detection */
    int loo;       /* leave-one-out statistics fitting */
    float zslack;  /* bilevel: zero points kept in [-zslack, 1 + zslack] * maxq */
    float thr;     /* outlier threshold on ((w - q) / U[j][j])^2 */
    double tau;
    const float *hw; /* [cols] 1 / U[j][j]^2 (set by prepare) */
    const float *Wt; /* [cols][rows] the driver's working weights */
    uint8_t *codesT; /* [cols][rows] */
    float *scur, *zcur; /* [rows] dequantized statistics of the current group */
    float *fs, *fz;     /* [rows] real-valued fitted statistics (scratch) */
    spqr_qlayer *q;
    spqr_outlier_list *ol;   /* [ntiles] outliers found in each tile */
} engine;

static int imin(int a, int b) { return a < b ? a : b; }

static bool ol_push(spqr_outlier_list *l, uint32_t r, uint32_t j, uint16_t v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        spqr_outlier_rec *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) return false;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = (spqr_outlier_rec){r, j, v};
    return true;
}

/* The real-valued first-level statistics of group g for rows [r0, r1) on
 * the current weights: plain (beta2 == 0): the range lo/hi in fs/fz;
 * bilevel: the bounded min-max scale / zero in fs / fz, zero scales replaced
 * by their row block's smallest. scratch: 2 * group length. */
static void first_level(engine *E, int g, int r0, int r1, float *scratch) {
    const int rows = E->rows;
    const int c0 = g * E->glen, c1 = imin(c0 + E->glen, E->cols), n = c1 - c0;
    float *lo = E->fs, *hi = E->fz; /* reused in place below */

    if (!E->loo) {
        const float *w0 = E->Wt + (size_t)c0 * rows;
        for (int r = r0; r < r1; r++) lo[r] = hi[r] = w0[r];
        for (int c = c0 + 1; c < c1; c++) {
            const float *w = E->Wt + (size_t)c * rows;
            for (int r = r0; r < r1; r++) {
                lo[r] = w[r] < lo[r] ? w[r] : lo[r];
                hi[r] = w[r] > hi[r] ? w[r] : hi[r];
            }
        }
    } else {
        float *v = scratch, *red = scratch + n;
        const float *hw = E->hw + c0;
        for (int r = r0; r < r1; r++) {
            for (int k = 0; k < n; k++) v[k] = E->Wt[(size_t)(c0 + k) * rows + r];
            spqr_loo_reduction(v, hw, n, E->maxq, red);
            /* likely outliers are replaced by the mean of the others, which
             * lies within their range: fit min-max on the non-outliers */
            float l = INFINITY, h = -INFINITY;
            for (int k = 0; k < n; k++) {
                if (red[k] > E->thr) continue;
                l = v[k] < l ? v[k] : l;
                h = v[k] > h ? v[k] : h;
            }
            if (l > h) l = h = 0.0f; /* all likely outliers: mean of nothing = 0 */
            lo[r] = l;
            hi[r] = h;
        }
    }

    if (E->beta2 == 0) return;

    /* bilevel: the zero points of one row block share a zbits-bit grid, so
     * keep each within [-zslack, 1 + zslack] * maxq (a group far from 0,
     * e.g. an almost constant row, would otherwise stretch that grid and
     * wreck its neighbours); such a group gets a wider grid covering it */
    const float zmin = -E->zslack * E->maxq, zmax = (1.0f + E->zslack) * E->maxq;
    for (int r = r0; r < r1; r++)
        spqr_minmax_fit_bounded(lo[r], hi[r], E->maxq, zmin, zmax, &E->fs[r], &E->fz[r]);
    for (int rb = r0 / E->beta2; rb * E->beta2 < r1; rb++) {
        const int b0 = rb * E->beta2, b1 = imin(b0 + E->beta2, rows);
        /* groups of zeros leave their scale free: give them the smallest
         * scale of the block so they do not stretch the scale grid */
        float ref = INFINITY;
        for (int r = b0; r < b1; r++)
            if (E->fs[r] > 0.0f && E->fs[r] < ref) ref = E->fs[r];
        if (!(ref < INFINITY)) ref = 1.0f;
        for (int r = b0; r < b1; r++)
            if (!(E->fs[r] > 0.0f)) E->fs[r] = ref;
    }
}

/* Fit the statistics of group g for rows [r0, r1) on the current weights and
 * leave their dequantized values in scur/zcur. scratch: 2 * group length. */
static void fit_group(engine *E, int g, int r0, int r1, float *scratch) {
    const int rows = E->rows;
    spqr_qlayer *q = E->q;
    first_level(E, g, r0, r1, scratch);
    if (E->beta2 == 0) {
        for (int r = r0; r < r1; r++) {
            size_t i = (size_t)g * rows + r;
            spqr_minmax_fit_f16(E->fs[r], E->fz[r], E->maxq, &q->scale_f16[i], &q->zero_f16[i]);
            spqr_qlayer_group_stats(q, r, g, &E->scur[r], &E->zcur[r]);
        }
        return;
    }
    for (int rb = r0 / E->beta2; rb * E->beta2 < r1; rb++) {
        const int b0 = rb * E->beta2, b1 = imin(b0 + E->beta2, rows);
        const size_t i = (size_t)g * rows + b0, k = (size_t)g * E->nrb + rb;
        if (E->statq == SPQR_SQ_UNIFORM) { /* s2_zero / z2_zero stay at the mid-points */
            spqr_quantize_stat_block_uniform(E->fs + b0, b1 - b0, E->sbits, q->scale_code + i, &q->s2_scale[k]);
            spqr_quantize_stat_block_uniform(E->fz + b0, b1 - b0, E->zbits, q->zero_code + i, &q->z2_scale[k]);
        } else if (E->statq == SPQR_SQ_KMEANS) { /* the layer's codebooks (prepare) */
            for (int r = b0; r < b1; r++) {
                q->scale_code[(size_t)g * rows + r] = spqr_kmeans_code(E->fs[r], E->cbs, 1 << E->sbits);
                q->zero_code[(size_t)g * rows + r] = spqr_kmeans_code(E->fz[r], E->cbz, 1 << E->zbits);
            }
        } else {
            spqr_quantize_stat_block(E->fs + b0, b1 - b0, E->sbits, q->scale_code + i, &q->s2_scale[k],
                                     &q->s2_zero[k]);
            spqr_quantize_stat_block(E->fz + b0, b1 - b0, E->zbits, q->zero_code + i, &q->z2_scale[k],
                                     &q->z2_zero[k]);
        }
    }
    for (int r = r0; r < r1; r++) spqr_qlayer_group_stats(q, r, g, &E->scur[r], &E->zcur[r]);
}

/* kmeans: fit the layer's two codebooks to the first-level statistics of
 * every group on the weights as the driver hands them over (permuted, before
 * any error feedback); the column steps then code each statistic, fitted on
 * the updated weights, by its nearest centroid. */
static spqr_status fit_codebooks(engine *E) {
    const int rows = E->rows, ng = E->q->ngroups;
    const size_t n = (size_t)ng * (size_t)rows;
    float *all = spqr_malloc_array(n, 2 * sizeof(float));
    float *scratch = spqr_malloc_array(2 * (size_t)imin(E->glen, E->cols), sizeof(float));
    if (!all || !scratch) {
        free(all);
        free(scratch);
        return spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory (k-means statistics)");
    }
    for (int g = 0; g < ng; g++) {
        first_level(E, g, 0, rows, scratch);
        memcpy(all + (size_t)g * rows, E->fs, (size_t)rows * sizeof(float));
        memcpy(all + n + (size_t)g * rows, E->fz, (size_t)rows * sizeof(float));
    }
    spqr_status st = spqr_kmeans_fit_stats(all, n, E->sbits, E->q->cb_scale);
    if (!st) st = spqr_kmeans_fit_stats(all + n, n, E->zbits, E->q->cb_zero);
    for (int i = 0; !st && i < (1 << E->sbits); i++) E->cbs[i] = spqr_f16_to_f32(E->q->cb_scale[i]);
    for (int i = 0; !st && i < (1 << E->zbits); i++) E->cbz[i] = spqr_f16_to_f32(E->q->cb_zero[i]);
    free(all);
    free(scratch);
    return st;
}

/* The column step: commit column j of rows [r0, r1) (driver contract). */
static int column_step(void *user, const spqr_gptq_state *S, int j, int tile, int r0, int r1, float *scratch) {
    engine *E = user;
    const int rows = E->rows;
    const float maxq = E->maxq;
    const float *s = E->scur, *z = E->zcur;
    if (j % E->glen == 0) fit_group(E, j / E->glen, r0, r1, scratch);
    float *w = S->Wt + (size_t)j * rows;
    uint8_t *c = E->codesT + (size_t)j * rows;
    if (E->outliers) {
        const float d = S->ud[j], thr = E->thr;
        spqr_outlier_list *ol = &E->ol[tile];
        for (int r = r0; r < r1; r++) {
            const float wv = w[r];
            const uint8_t code = spqr_q_code(wv, s[r], z[r], maxq);
            float qv = spqr_q_deq(code, s[r], z[r]);
            const float ee = (wv - qv) / d;
            if (ee * ee > thr) {
                /* outlier: keep the code, store the fp16 residual */
                const uint16_t h = spqr_f32_to_f16(wv - qv);
                qv = qv + spqr_f16_to_f32(h);
                if (!ol_push(ol, (uint32_t)r, (uint32_t)j, h)) return 1;
            }
            c[r] = code;
            w[r] = qv;
        }
        return 0;
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t code = spqr_q_code(w[r], s[r], z[r], maxq);
        c[r] = code;
        w[r] = spqr_q_deq(code, s[r], z[r]);
    }
    return 0;
}

/* SpQR's outlier threshold, once the driver has the permuted weights and the
 * Hessian weights: tau * mean_j Var_r(W[:, j]) / U[j][j]^2. */
static spqr_status prepare(void *user, const spqr_gptq_state *S) {
    engine *E = user;
    E->hw = S->hw;
    E->Wt = S->Wt;
    if (!E->outliers) return E->statq == SPQR_SQ_KMEANS ? fit_codebooks(E) : SPQR_OK;
    const int rows = S->rows, cols = S->cols;
    double acc = 0.0;
    for (int j = 0; j < cols; j++) {
        const float *w = S->Wt + (size_t)j * rows;
        double m = 0.0, v = 0.0;
        for (int r = 0; r < rows; r++) m += w[r];
        m /= rows;
        for (int r = 0; r < rows; r++) v += ((double)w[r] - m) * ((double)w[r] - m);
        v /= rows > 1 ? rows - 1 : 1;
        acc += v * (double)S->hw[j];
    }
    E->thr = (float)(E->tau * acc / cols);
    return E->statq == SPQR_SQ_KMEANS ? fit_codebooks(E) : SPQR_OK; /* uses thr (leave-one-out fits) */
}

spqr_status spqr_quant_engine(const float *W, int rows, int cols, const double *H,
                              const spqr_qparams *p, spqr_qlayer *q, float *committed) {
    const int gptq = p->method != SPQR_METHOD_RTN;
    const size_t nw = (size_t)rows * cols;
    spqr_status st = SPQR_OK;
    engine E = {0};
    E.rows = rows;
    E.cols = cols;
    E.glen = q->beta1;
    E.beta2 = q->beta2;
    E.nrb = q->nrb;
    E.sbits = q->sbits;
    E.zbits = q->zbits;
    E.statq = q->beta2 > 0 ? q->sq : SPQR_SQ_MINMAX;
    float cbs[256], cbz[256];
    E.cbs = cbs;
    E.cbz = cbz;
    E.maxq = (float)((1 << q->wbits) - 1);
    E.feedback = gptq;
    E.outliers = p->method == SPQR_METHOD_SPQR && p->tau > 0;
    E.loo = E.outliers && !p->simplified_outliers;
    E.tau = p->tau;
    E.q = q;
    E.zslack = 0.5f;

    float *rowbuf = NULL;
    int ntiles = 0;
    E.codesT = spqr_malloc_array(nw, 1);
    rowbuf = spqr_malloc_array((size_t)rows, 4 * sizeof *rowbuf);
    if (!E.codesT || !rowbuf) goto nomem;
    E.scur = rowbuf;
    E.zcur = rowbuf + rows;
    E.fs = rowbuf + 2 * (size_t)rows;
    E.fz = rowbuf + 3 * (size_t)rows;

    /* row tiles hold whole second-level row blocks */
    int tile = 128;
    if (E.beta2 > 0) tile = E.beta2 * (E.beta2 >= tile ? 1 : (tile + E.beta2 / 2) / E.beta2);
    ntiles = (rows + tile - 1) / tile;
    E.ol = calloc((size_t)ntiles, sizeof *E.ol);
    if (!E.ol) goto nomem;

    const spqr_gptq_ops ops = {
        .feedback = gptq,
        .act_order = p->act_order,
        .percdamp = p->percdamp,
        .blocksize = p->blocksize,
        .align = E.glen, /* group statistics are fitted on fully updated weights */
        .tile_rows = tile,
        .scratch_floats = E.loo ? 2 * (size_t)(E.glen < cols ? E.glen : cols) : 1,
        .prepare = prepare,
        .column = column_step,
    };
    st = spqr_gptq_run(W, rows, cols, H, &ops, &E, q->perm, committed);
    if (st) goto done;

    /* codes in row-major order */
    for (int r0 = 0; r0 < rows; r0 += 64)
        for (int j0 = 0; j0 < cols; j0 += 64)
            for (int r = r0; r < imin(r0 + 64, rows); r++)
                for (int j = j0; j < imin(j0 + 64, cols); j++)
                    q->codes[(size_t)r * cols + j] = E.codesT[(size_t)j * rows + r];

    /* outlier CSR: each tile's list is in ascending column order per row */
    {
        size_t total = 0;
        for (int t = 0; t < ntiles; t++) total += E.ol[t].n;
        if (total > UINT32_MAX) {
            st = spqr_fail(SPQR_ERR_NOMEM, "quantize: %zu outliers do not fit the format", total);
            goto done;
        }
        if (total > 0) {
            q->ol_col = spqr_malloc_array(total, sizeof *q->ol_col);
            q->ol_val = spqr_malloc_array(total, sizeof *q->ol_val);
            if (!q->ol_col || !q->ol_val) goto nomem;
        }
        memset(q->row_ptr, 0, ((size_t)rows + 1) * sizeof *q->row_ptr);
        for (int t = 0; t < ntiles; t++)
            for (size_t k = 0; k < E.ol[t].n; k++) q->row_ptr[E.ol[t].v[k].row + 1]++;
        for (int r = 0; r < rows; r++) q->row_ptr[r + 1] += q->row_ptr[r];
        /* fill using row_ptr[r] as the cursor of row r, then shift back */
        for (int t = 0; t < ntiles; t++)
            for (size_t k = 0; k < E.ol[t].n; k++) {
                const spqr_outlier_rec *o = &E.ol[t].v[k];
                uint32_t at = q->row_ptr[o->row]++;
                q->ol_col[at] = o->col;
                q->ol_val[at] = o->val;
            }
        for (int r = rows; r > 0; r--) q->row_ptr[r] = q->row_ptr[r - 1];
        q->row_ptr[0] = 0;
        q->n_outliers = (int64_t)total;
    }

    goto done;

nomem:
    st = spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory for a %dx%d layer", rows, cols);
done:
    if (E.ol)
        for (int t = 0; t < ntiles; t++) free(E.ol[t].v);
    free(E.ol);
    free(rowbuf);
    free(E.codesT);
    return st;
}
