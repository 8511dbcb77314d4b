/* gptq_driver.c - the GPTQ error-feedback driver (gptq_driver.h): Hessian
 * preparation, working weights, column blocks with lazy batch updates,
 * parallel row tiles, committed weights. */
#include "gptq_driver.h"
#include "../kernels/cpu/blas_fixed.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

static int imin(int a, int b) { return a < b ? a : b; }

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
static spqr_status prepare_hessian(const double *H, int n, const spqr_gptq_ops *p, int32_t *perm,
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

static void transpose_f32(const float *src, int rows, int cols, float *dst) {
    /* dst[j][r] = src[r][j] */
    for (int r0 = 0; r0 < rows; r0 += 32)
        for (int j0 = 0; j0 < cols; j0 += 32)
            for (int j = j0; j < imin(j0 + 32, cols); j++)
                for (int r = r0; r < imin(r0 + 32, rows); r++)
                    dst[(size_t)j * rows + r] = src[(size_t)r * cols + j];
}

/* Columns [b, e) of rows [r0, r1): the method's step per column, then (with
 * feedback) the scaled error spread over the rest of the block. */
static int run_tile(const spqr_gptq_ops *ops, void *user, const spqr_gptq_state *S, float *Err, int b, int e,
                    int tile, int r0, int r1, float *orig, float *scratch, const float *U) {
    const int rows = S->rows, cols = S->cols;
    for (int j = b; j < e; j++) {
        float *w = S->Wt + (size_t)j * rows;
        if (!ops->feedback) {
            if (ops->column(user, S, j, tile, r0, r1, scratch)) return 1;
            continue;
        }
        for (int r = r0; r < r1; r++) orig[r - r0] = w[r];
        if (ops->column(user, S, j, tile, r0, r1, scratch)) return 1;
        const float d = S->ud[j];
        float *err = Err + (size_t)(j - b) * rows;
        for (int r = r0; r < r1; r++) err[r] = (orig[r - r0] - w[r]) / d;
        /* propagate to the rest of the block */
        const float *u = U + (size_t)j * cols;
        for (int k = j + 1; k < e; k++) {
            const float uk = u[k];
            float *wk = S->Wt + (size_t)k * rows;
            for (int r = r0; r < r1; r++) wk[r] -= err[r] * uk;
        }
    }
    return 0;
}

spqr_status spqr_gptq_run(const float *W, int rows, int cols, const double *H, const spqr_gptq_ops *ops, void *user,
                          int32_t *perm, float *committed) {
    const int gptq = ops->feedback;
    const size_t nw = (size_t)rows * cols;
    spqr_status st = SPQR_OK;
    float *Uf = NULL, *ud = NULL, *hw = NULL, *Wt = NULL, *Err = NULL;
    uint8_t *dead = NULL;
    int oom = 0;

    Wt = spqr_malloc_array(nw, sizeof *Wt);
    ud = spqr_malloc_array((size_t)cols, sizeof *ud);
    hw = spqr_malloc_array((size_t)cols, sizeof *hw);
    dead = spqr_calloc_array((size_t)cols, 1);
    if (!Wt || !ud || !hw || !dead) goto nomem;

    if (gptq) {
        if (!H) {
            st = spqr_fail(SPQR_ERR_INVALID_ARG, "quantize: error feedback needs the layer's input Hessian");
            goto done;
        }
        st = prepare_hessian(H, cols, ops, perm, &Uf, dead);
        if (st != SPQR_OK) goto done;
        for (int j = 0; j < cols; j++) {
            ud[j] = Uf[(size_t)j * cols + j];
            hw[j] = 1.0f / (ud[j] * ud[j]);
        }
    } else {
        for (int j = 0; j < cols; j++) {
            perm[j] = j;
            ud[j] = hw[j] = 1.0f;
        }
    }

    /* Wt = permuted, transposed W (dead columns zeroed) */
    if (gptq) {
        for (int r0 = 0; r0 < rows; r0 += 32)
            for (int j = 0; j < cols; j++) {
                const int src = perm[j];
                float *dst = Wt + (size_t)j * rows;
                for (int r = r0; r < imin(r0 + 32, rows); r++)
                    dst[r] = dead[src] ? 0.0f : W[(size_t)r * cols + src];
            }
    } else {
        transpose_f32(W, rows, cols, Wt);
    }
    const spqr_gptq_state S = {rows, cols, perm, Wt, ud, hw};
    if (ops->prepare && (st = ops->prepare(user, &S))) goto done;

    const int bs = gptq ? (ops->blocksize < cols ? ops->blocksize : cols) : cols;
    if (gptq) {
        Err = spqr_malloc_array((size_t)bs * rows, sizeof *Err);
        if (!Err) goto nomem;
    }
    const int tile = ops->tile_rows > 0 ? ops->tile_rows : 128;
    const int align = ops->align > 0 ? ops->align : 1;
    const int ntiles = (rows + tile - 1) / tile;
    const int nthreads = imin(spqr_num_threads(), ntiles);
    const size_t scratch_n = ops->scratch_floats + (size_t)tile;

    for (int b = 0; b < cols;) {
        int e = imin(b + bs, cols);
        /* do not end a block inside an aligned run that starts within it */
        const int s = ((e - 1) / align) * align;
        if (s > b && imin(s + align, cols) > e) e = s;

#pragma omp parallel num_threads(nthreads)
        {
            float *scratch = malloc(scratch_n * sizeof *scratch);
            if (!scratch) {
#pragma omp atomic write
                oom = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < ntiles; t++) {
                if (!scratch) continue;
                if (run_tile(ops, user, &S, Err, b, e, t, t * tile, imin((t + 1) * tile, rows), scratch,
                             scratch + tile, Uf)) {
#pragma omp atomic write
                    oom = 1;
                }
            }
            free(scratch);
        }
        if (oom) goto nomem;
        if (gptq && e < cols)
            spqr_sgemm_fixed(true, false, cols - e, rows, e - b, -1.0f,
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
    if (committed) {
        for (int r0 = 0; r0 < rows; r0 += 32)
            for (int j = 0; j < cols; j++) {
                const float *src = Wt + (size_t)j * rows;
                const int dc = perm[j];
                for (int r = r0; r < imin(r0 + 32, rows); r++)
                    committed[(size_t)r * cols + dc] = src[r];
            }
    }
    goto done;

nomem:
    st = spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory for a %dx%d layer", rows, cols);
done:
    free(Uf);
    free(ud);
    free(hw);
    free(Wt);
    free(Err);
    free(dead);
    return st;
}
