/* gptq.c - the column-by-column quantization engine shared by RTN, GPTQ and
 * SpQR.
 *
 * The weights are kept transposed and permuted, Wt[j][r] = W[r][perm[j]],
 * so that a column is contiguous. Columns are processed in blocks: inside a
 * block, rows are independent, so the block is worked on in tiles of rows
 * (in parallel); after a block, the error of its columns is propagated to
 * all later columns with one sgemm (GPTQ's lazy batch update). Blocks never
 * end inside a group that started within them, so a group's statistics are
 * always fitted on fully updated weights.
 *
 * RTN is the same loop without error feedback. */
#include "quant_internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

typedef struct engine {
    int rows, cols, G, beta2, nrb, sbits, zbits;
    float maxq;
    int feedback;  /* GPTQ error feedback */
    int outliers;  /* SpQR per-column outlier detection */
    int loo;       /* leave-one-out statistics fitting */
    float zslack;  /* bilevel: zero points kept in [-zslack, 1 + zslack] * maxq */
    float thr;     /* outlier threshold on ((w - q) / U[j][j])^2 */
    const float *U;  /* [cols][cols] upper, permuted order (feedback only) */
    const float *ud; /* [cols] U[j][j] (1 without feedback) */
    const float *hw; /* [cols] 1 / U[j][j]^2 */
    float *Wt;       /* [cols][rows] */
    float *Err;      /* [block][rows] scaled errors of the current block */
    uint8_t *codesT; /* [cols][rows] */
    float *scur, *zcur; /* [rows] dequantized statistics of the current group */
    float *fs, *fz;     /* [rows] real-valued fitted statistics (scratch) */
    spqr_qlayer *q;
    int tile;                /* rows per tile (a multiple of beta2) */
    spqr_outlier_list *ol;   /* [ntiles] outliers found in each tile */
    int oom;
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

/* Fit the statistics of group g for rows [r0, r1) on the current weights and
 * leave their dequantized values in scur/zcur. scratch: 2 * group length. */
static void fit_group(engine *E, int g, int r0, int r1, float *scratch) {
    const int rows = E->rows;
    const int c0 = g * E->G, c1 = imin(c0 + E->G, E->cols), n = c1 - c0;
    float *lo = E->fs, *hi = E->fz; /* reused in place below */
    spqr_qlayer *q = E->q;

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

    if (E->beta2 == 0) {
        for (int r = r0; r < r1; r++) {
            size_t i = (size_t)g * rows + r;
            spqr_minmax_fit_f16(lo[r], hi[r], E->maxq, &q->scale_f16[i], &q->zero_f16[i]);
            spqr_qlayer_group_stats(q, r, g, &E->scur[r], &E->zcur[r]);
        }
        return;
    }

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
        const size_t i = (size_t)g * rows + b0, k = (size_t)g * E->nrb + rb;
        spqr_quantize_stat_block(E->fs + b0, b1 - b0, E->sbits, q->scale_code + i, &q->s2_scale[k],
                                 &q->s2_zero[k]);
        spqr_quantize_stat_block(E->fz + b0, b1 - b0, E->zbits, q->zero_code + i, &q->z2_scale[k],
                                 &q->z2_zero[k]);
    }
    for (int r = r0; r < r1; r++) spqr_qlayer_group_stats(q, r, g, &E->scur[r], &E->zcur[r]);
}

/* Columns [b, e) of rows [r0, r1). */
static void process_tile(engine *E, int b, int e, int r0, int r1, float *scratch,
                         spqr_outlier_list *ol) {
    const int rows = E->rows, cols = E->cols;
    const float maxq = E->maxq;
    const float *s = E->scur, *z = E->zcur;
    for (int j = b; j < e; j++) {
        if (j % E->G == 0) fit_group(E, j / E->G, r0, r1, scratch);
        float *w = E->Wt + (size_t)j * rows;
        uint8_t *c = E->codesT + (size_t)j * rows;
        if (!E->feedback) {
            for (int r = r0; r < r1; r++) {
                uint8_t code = spqr_q_code(w[r], s[r], z[r], maxq);
                c[r] = code;
                w[r] = spqr_q_deq(code, s[r], z[r]);
            }
            continue;
        }
        const float d = E->ud[j];
        float *err = E->Err + (size_t)(j - b) * rows;
        if (E->outliers) {
            const float thr = E->thr;
            for (int r = r0; r < r1; r++) {
                const float wv = w[r];
                const uint8_t code = spqr_q_code(wv, s[r], z[r], maxq);
                float qv = spqr_q_deq(code, s[r], z[r]);
                const float ee = (wv - qv) / d;
                if (ee * ee > thr) {
                    /* outlier: keep the code, store the fp16 residual */
                    const uint16_t h = spqr_f32_to_f16(wv - qv);
                    qv = qv + spqr_f16_to_f32(h);
                    if (!ol_push(ol, (uint32_t)r, (uint32_t)j, h)) {
#pragma omp atomic write
                        E->oom = 1;
                    }
                }
                c[r] = code;
                err[r] = (wv - qv) / d;
                w[r] = qv;
            }
        } else {
            for (int r = r0; r < r1; r++) {
                const float wv = w[r];
                const uint8_t code = spqr_q_code(wv, s[r], z[r], maxq);
                const float qv = spqr_q_deq(code, s[r], z[r]);
                c[r] = code;
                err[r] = (wv - qv) / d;
                w[r] = qv;
            }
        }
        /* propagate to the rest of the block */
        const float *u = E->U + (size_t)j * cols;
        for (int k = j + 1; k < e; k++) {
            const float uk = u[k];
            float *wk = E->Wt + (size_t)k * rows;
            for (int r = r0; r < r1; r++) wk[r] -= err[r] * uk;
        }
    }
}

/* ---- Hessian preparation --------------------------------------------------- */

typedef struct diag_idx {
    double d;
    int32_t i;
} diag_idx;

static int cmp_diag_desc(const void *a, const void *b) {
    const diag_idx *x = a, *y = b;
    if (x->d > y->d) return -1;
    if (x->d < y->d) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* A = permuted H with dead diagonals set to 1, plus damp * I. */
static void fill_hessian(double *A, const double *H, int n, const int32_t *perm, double damp) {
    for (int a = 0; a < n; a++) {
        const double *src = H + (size_t)perm[a] * n;
        double *dst = A + (size_t)a * n;
        for (int b = 0; b < n; b++) dst[b] = src[perm[b]];
        if (dst[a] == 0.0) dst[a] = 1.0;
        dst[a] += damp;
    }
}

/* perm (act-order or identity), *Uout = the float factor U of the damped
 * inverse Hessian in permuted order ([n][n], malloc'd), and the dead-column
 * flags (original order). */
static spqr_status prepare_hessian(const double *H, int n, const spqr_qparams *p, int32_t *perm,
                                   float **Uout, uint8_t *dead) {
    *Uout = NULL;
    diag_idx *di = spqr_malloc_array((size_t)n, sizeof *di);
    if (!di) return spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory (%d columns)", n);
    double mean = 0.0;
    for (int i = 0; i < n; i++) {
        double d = H[(size_t)i * n + i];
        dead[i] = d == 0.0;
        if (d == 0.0) d = 1.0;
        di[i] = (diag_idx){d, i};
        mean += d;
    }
    mean /= n;
    if (p->act_order) qsort(di, (size_t)n, sizeof *di, cmp_diag_desc);
    for (int i = 0; i < n; i++) perm[i] = p->act_order ? di[i].i : i;
    free(di);

    const size_t nn = (size_t)n * n;
    double *A = spqr_malloc_array(nn, sizeof *A);
    if (!A) return spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory for a %dx%d Hessian", n, n);
    double damp = p->percdamp * mean;
    spqr_status st = SPQR_ERR_NUMERIC;
    for (int attempt = 0; attempt < 4; attempt++) {
        fill_hessian(A, H, n, perm, damp);
        st = spqr_chol_inverse_upper(A, n);
        if (st != SPQR_ERR_NUMERIC) break;
        spqr_log(SPQR_LOG_WARN, "quantize: Hessian not positive definite with damping %g; "
                 "retrying with %g", damp, damp * 10);
        damp *= 10;
    }
    if (st == SPQR_ERR_NUMERIC) {
        free(A);
        return spqr_fail(SPQR_ERR_NUMERIC, "quantize: the Hessian (%dx%d) is not positive definite "
                         "even with damping %g x mean diagonal; check the calibration data",
                         n, n, damp / 10 / mean);
    }
    if (st != SPQR_OK) {
        free(A);
        return spqr_fail(st, "quantize: Cholesky factorization of the %dx%d Hessian failed", n, n);
    }
    /* convert to float in place (float i overwrites part of double i/2,
     * which has been read already), then shrink */
    unsigned char *bytes = (unsigned char *)A;
    for (size_t i = 0; i < nn; i++) {
        double d;
        memcpy(&d, bytes + i * sizeof d, sizeof d);
        const float f = (float)d;
        memcpy(bytes + i * sizeof f, &f, sizeof f);
    }
    float *U = (float *)(void *)A;
    float *shrunk = realloc(U, nn * sizeof *U);
    if (shrunk) U = shrunk;
    for (int i = 0; i < n; i++) {
        const float d = U[(size_t)i * n + i];
        if (!(d > 0.0f) || !isfinite(d)) {
            free(U);
            return spqr_fail(SPQR_ERR_NUMERIC, "quantize: the inverse Hessian factor of the %dx%d "
                             "Hessian is not representable in float32", n, n);
        }
    }
    *Uout = U;
    return SPQR_OK;
}

/* ---- the engine ------------------------------------------------------------ */

static void transpose_f32(const float *src, int rows, int cols, float *dst) {
    /* dst[j][r] = src[r][j] */
    for (int r0 = 0; r0 < rows; r0 += 32)
        for (int j0 = 0; j0 < cols; j0 += 32)
            for (int j = j0; j < imin(j0 + 32, cols); j++)
                for (int r = r0; r < imin(r0 + 32, rows); r++)
                    dst[(size_t)j * rows + r] = src[(size_t)r * cols + j];
}

spqr_status spqr_quant_engine(const float *W, int rows, int cols, const double *H,
                              const spqr_qparams *p, spqr_qlayer *q, float *committed) {
    const int gptq = p->method != SPQR_METHOD_RTN;
    const size_t nw = (size_t)rows * cols;
    spqr_status st = SPQR_OK;
    engine E = {0};
    E.rows = rows;
    E.cols = cols;
    E.G = q->beta1;
    E.beta2 = q->beta2;
    E.nrb = q->nrb;
    E.sbits = q->sbits;
    E.zbits = q->zbits;
    E.maxq = (float)((1 << q->wbits) - 1);
    E.feedback = gptq;
    E.outliers = p->method == SPQR_METHOD_SPQR && p->tau > 0;
    E.loo = E.outliers && !p->simplified_outliers;
    E.q = q;
    E.zslack = 0.5f;

    float *Uf = NULL, *ud = NULL, *hw = NULL, *Wt = NULL, *Err = NULL, *rowbuf = NULL;
    uint8_t *dead = NULL, *codesT = NULL;
    int ntiles = 0;

    Wt = spqr_malloc_array(nw, sizeof *Wt);
    codesT = spqr_malloc_array(nw, 1);
    rowbuf = spqr_malloc_array((size_t)rows, 4 * sizeof *rowbuf);
    ud = spqr_malloc_array((size_t)cols, sizeof *ud);
    hw = spqr_malloc_array((size_t)cols, sizeof *hw);
    dead = spqr_calloc_array((size_t)cols, 1);
    if (!Wt || !codesT || !rowbuf || !ud || !hw || !dead) goto nomem;
    E.scur = rowbuf;
    E.zcur = rowbuf + rows;
    E.fs = rowbuf + 2 * (size_t)rows;
    E.fz = rowbuf + 3 * (size_t)rows;

    if (gptq) {
        st = prepare_hessian(H, cols, p, q->perm, &Uf, dead);
        if (st != SPQR_OK) goto done;
        for (int j = 0; j < cols; j++) {
            ud[j] = Uf[(size_t)j * cols + j];
            hw[j] = 1.0f / (ud[j] * ud[j]);
        }
    } else {
        for (int j = 0; j < cols; j++) {
            q->perm[j] = j;
            ud[j] = hw[j] = 1.0f;
        }
    }
    E.U = Uf;
    E.ud = ud;
    E.hw = hw;

    /* Wt = permuted, transposed W (dead columns zeroed) */
    if (gptq) {
        for (int r0 = 0; r0 < rows; r0 += 32)
            for (int j = 0; j < cols; j++) {
                const int src = q->perm[j];
                float *dst = Wt + (size_t)j * rows;
                for (int r = r0; r < imin(r0 + 32, rows); r++)
                    dst[r] = dead[src] ? 0.0f : W[(size_t)r * cols + src];
            }
    } else {
        transpose_f32(W, rows, cols, Wt);
    }
    E.Wt = Wt;

    if (E.outliers) {
        /* threshold = tau * mean_j Var_r(W[:, j]) / U[j][j]^2 */
        double acc = 0.0;
        for (int j = 0; j < cols; j++) {
            const float *w = Wt + (size_t)j * rows;
            double m = 0.0, v = 0.0;
            for (int r = 0; r < rows; r++) m += w[r];
            m /= rows;
            for (int r = 0; r < rows; r++) v += ((double)w[r] - m) * ((double)w[r] - m);
            v /= rows > 1 ? rows - 1 : 1;
            acc += v * (double)hw[j];
        }
        E.thr = (float)(p->tau * acc / cols);
    }

    const int bs = gptq ? (p->blocksize < cols ? p->blocksize : cols) : cols;
    if (gptq) {
        Err = spqr_malloc_array((size_t)bs * rows, sizeof *Err);
        if (!Err) goto nomem;
    }
    E.Err = Err;
    E.codesT = codesT;

    int tile = 128;
    if (E.beta2 > 0) tile = E.beta2 * (E.beta2 >= tile ? 1 : (tile + E.beta2 / 2) / E.beta2);
    E.tile = tile;
    ntiles = (rows + tile - 1) / tile;
    E.ol = calloc((size_t)ntiles, sizeof *E.ol);
    if (!E.ol) goto nomem;
    const int nthreads = imin(spqr_num_threads(), ntiles);
    const size_t scratch_n = E.loo ? 2 * (size_t)imin(E.G, cols) : 1;

    for (int b = 0; b < cols;) {
        int e = imin(b + bs, cols);
        /* do not end a block inside a group that starts within it */
        const int s = ((e - 1) / E.G) * E.G;
        if (s > b && imin(s + E.G, cols) > e) e = s;

#pragma omp parallel num_threads(nthreads)
        {
            float *scratch = malloc(scratch_n * sizeof *scratch);
            if (!scratch) {
#pragma omp atomic write
                E.oom = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < ntiles; t++) {
                if (!scratch) continue;
                process_tile(&E, b, e, t * tile, imin((t + 1) * tile, rows), scratch, &E.ol[t]);
            }
            free(scratch);
        }
        if (E.oom) goto nomem;
        if (gptq && e < cols)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols - e, rows, e - b, -1.0f,
                        Uf + (size_t)b * cols + e, cols, Err, rows, 1.0f, Wt + (size_t)e * rows,
                        rows);
        b = e;
    }

    /* everything the algorithm committed to must be finite */
    for (size_t i = 0; i < nw; i++)
        if (!isfinite(Wt[i])) {
            st = spqr_fail(SPQR_ERR_NUMERIC, "quantize: non-finite quantized weight (row %d): the "
                           "weights exceed the range of fp16 statistics",
                           (int)(i % (size_t)rows));
            goto done;
        }

    /* codes in row-major order */
    for (int r0 = 0; r0 < rows; r0 += 64)
        for (int j0 = 0; j0 < cols; j0 += 64)
            for (int r = r0; r < imin(r0 + 64, rows); r++)
                for (int j = j0; j < imin(j0 + 64, cols); j++)
                    q->codes[(size_t)r * cols + j] = codesT[(size_t)j * rows + r];

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

    if (committed) {
        for (int r0 = 0; r0 < rows; r0 += 32)
            for (int j = 0; j < cols; j++) {
                const float *src = Wt + (size_t)j * rows;
                const int dc = q->perm[j];
                for (int r = r0; r < imin(r0 + 32, rows); r++)
                    committed[(size_t)r * cols + dc] = src[r];
            }
    }
    goto done;

nomem:
    st = spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory for a %dx%d layer", rows, cols);
done:
    if (E.ol)
        for (int t = 0; t < ntiles; t++) free(E.ol[t].v);
    free(E.ol);
    free(Uf);
    free(ud);
    free(hw);
    free(Wt);
    free(Err);
    free(rowbuf);
    free(dead);
    free(codesT);
    return st;
}
