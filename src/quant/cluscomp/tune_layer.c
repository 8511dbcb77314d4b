/* tune_layer.c - layer-wise codebook tuning for ClusComp: with the indices
 * fixed, minimise the Hessian-weighted output error of one layer
 *
 *     f(C) = tr(E H E^T),   E = What(C) - W   (real rows only)
 *
 * over the codebook entries C [n][d]; H = 2/N X X^T is the layer's input
 * Hessian, so f is the squared output error on the calibration inputs.
 * What(C) is linear in C, so f is a convex quadratic and its minimiser solves
 * the normal equations A c = b. A never needs to be formed: A p is one
 * expand (p -> What(p)), one sgemm (What(p) H) and one scatter back onto the
 * codebook entries. We run preconditioned conjugate gradients with the
 * Jacobi preconditioner diag(A)[k][t] = sum over the sub-vectors (b, j) with
 * idx(b, j) = k and a real row b*d + t of H[j][j]; exact line search keeps f
 * non-increasing at every step (up to rounding). Entries no sub-vector uses
 * are left as they are.
 *
 * The objective decouples over the coordinate t of the codewords (row b*d+t
 * only sees C[.][t]); CG on all of C at once is CG on the block-diagonal
 * system, which is the same thing with a shared step length per iteration.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "cluscomp_quant.h"
#include "../../kernels/cpu/blas_fixed.h"

typedef struct {
    const float *W;
    int rows, cols, d, n;
    const uint32_t *idx; /* [nb][cols] */
    float *Hf;           /* [cols][cols] */
    float *E, *G;        /* [rows][cols] scratch */
} prob;

/* E[r][j] = C[idx(b, j)][t] (r = b*d + t) minus W when W != NULL. */
static void expand(const prob *p, const float *C, const float *W, float *E) {
    const int rows = p->rows, cols = p->cols, d = p->d;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
    for (int r = 0; r < rows; r++) {
        const int b = r / d, t = r % d;
        const uint32_t *ix = p->idx + (size_t)b * cols;
        float *e = E + (size_t)r * cols;
        const float *w = W ? W + (size_t)r * cols : NULL;
        for (int j = 0; j < cols; j++) e[j] = C[(size_t)ix[j] * d + t] - (w ? w[j] : 0.0f);
    }
}

/* g[k][t] = sum over (b, j) with idx(b, j) = k of G[b*d+t][j] (double). */
static void scatter(const prob *p, const float *G, double *g) {
    const int rows = p->rows, cols = p->cols, d = p->d;
    memset(g, 0, (size_t)p->n * d * sizeof(double));
    /* coordinates t are independent: one thread per t when d allows,
     * otherwise serial (no private copies of a possibly huge codebook) */
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
    for (int t = 0; t < d; t++)
        for (int r = t; r < rows; r += d) {
            const uint32_t *ix = p->idx + (size_t)(r / d) * cols;
            const float *gr = G + (size_t)r * cols;
            for (int j = 0; j < cols; j++) g[(size_t)ix[j] * d + t] += gr[j];
        }
}

/* G = E H (symmetric H). */
static void times_h(const prob *p, const float *E, float *G) {
    spqr_ssymm_right_upper_fixed(p->rows, p->cols, 1.0f, p->Hf, p->cols, E, p->cols, 0.0f, G,
                p->cols);
}

/* f = tr(E H E^T) for E already in p->E; G = E H left in p->G. */
static double objective(const prob *p) {
    times_h(p, p->E, p->G);
    double f = 0;
    const size_t n = (size_t)p->rows * p->cols;
#pragma omp parallel for reduction(+ : f) schedule(static) num_threads(spqr_num_threads())
    for (size_t i = 0; i < n; i++) f += (double)p->E[i] * p->G[i];
    return f;
}

spqr_status spqr_cc_hessian_err(const float *W, const float *Q, int rows, int cols, const double *H, double *err,
                                double *ref) {
    const size_t RC = (size_t)rows * cols;
    prob p = {W, rows, cols, 1, 1, NULL, spqr_malloc_array((size_t)cols * cols, sizeof(float)),
              spqr_malloc_array(RC, sizeof(float)), spqr_malloc_array(RC, sizeof(float))};
    spqr_status st = SPQR_OK;
    if (p.Hf && p.E && p.G) {
        for (size_t i = 0; i < (size_t)cols * cols; i++) p.Hf[i] = (float)H[i];
        for (size_t i = 0; i < RC; i++) p.E[i] = Q[i] - W[i];
        *err = objective(&p);
        memcpy(p.E, W, RC * sizeof(float));
        *ref = objective(&p);
    } else {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for the Hessian-weighted error (%dx%d layer)", rows, cols);
    }
    free(p.Hf);
    free(p.E);
    free(p.G);
    return st;
}

spqr_status spqr_cc_tune_layer(const float *W, int rows, int cols, const double *H, int d, int n,
                               const uint32_t *idx, int iters, float *C, spqr_cc_tune_report *rep) {
    const size_t RC = (size_t)rows * cols, ND = (size_t)n * d;
    prob p = {W, rows, cols, d, n, idx, NULL, NULL, NULL};
    p.Hf = spqr_malloc_array((size_t)cols * cols, sizeof(float));
    p.E = spqr_malloc_array(RC, sizeof(float));
    p.G = spqr_malloc_array(RC, sizeof(float));
    double *x = spqr_malloc_array(ND, sizeof(double)), *r = spqr_malloc_array(ND, sizeof(double));
    double *z = spqr_malloc_array(ND, sizeof(double)), *pp = spqr_malloc_array(ND, sizeof(double));
    double *Ap = spqr_malloc_array(ND, sizeof(double)), *Minv = spqr_malloc_array(ND, sizeof(double));
    float *pf = spqr_malloc_array(ND, sizeof(float)), *best = spqr_malloc_array(ND, sizeof(float));
    spqr_status st = SPQR_OK;
    if (!p.Hf || !p.E || !p.G || !x || !r || !z || !pp || !Ap || !Minv || !pf || !best) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for codebook tuning (%dx%d layer, %d x %d codebook)", rows,
                       cols, n, d);
        goto done;
    }
    for (size_t i = 0; i < (size_t)cols * cols; i++) p.Hf[i] = (float)H[i];
    /* Jacobi preconditioner */
    memset(Minv, 0, ND * sizeof(double));
    for (int rr = 0; rr < rows; rr++) {
        const uint32_t *ix = idx + (size_t)(rr / d) * cols;
        for (int j = 0; j < cols; j++) Minv[(size_t)ix[j] * d + rr % d] += H[(size_t)j * cols + j];
    }
    for (size_t i = 0; i < ND; i++) Minv[i] = Minv[i] > 0 ? 1.0 / Minv[i] : 0.0;

    for (size_t i = 0; i < ND; i++) x[i] = C[i];
    expand(&p, C, W, p.E);
    const double f0 = objective(&p); /* G = E H */
    scatter(&p, p.G, r);             /* gradient / 2 = A x - b */
    double rz = 0;
    for (size_t i = 0; i < ND; i++) {
        r[i] = -r[i]; /* residual b - A x */
        z[i] = Minv[i] * r[i];
        pp[i] = z[i];
        rz += r[i] * z[i];
    }
    double f;
    memcpy(best, C, ND * sizeof(float));
    int it = 0;
    for (; it < iters && rz > 0; it++) {
        for (size_t i = 0; i < ND; i++) pf[i] = (float)pp[i];
        expand(&p, pf, NULL, p.E);
        times_h(&p, p.E, p.G);
        scatter(&p, p.G, Ap);
        double pAp = 0;
        for (size_t i = 0; i < ND; i++) pAp += pp[i] * Ap[i];
        if (!(pAp > 0)) break;
        const double alpha = rz / pAp;
        double rz_new = 0;
        for (size_t i = 0; i < ND; i++) {
            x[i] += alpha * pp[i];
            r[i] -= alpha * Ap[i];
            z[i] = Minv[i] * r[i];
            rz_new += r[i] * z[i];
        }
        const double beta = rz_new / rz;
        rz = rz_new;
        for (size_t i = 0; i < ND; i++) pp[i] = z[i] + beta * pp[i];
        if (rz_new <= 1e-24 * (f0 > 0 ? f0 : 1)) {
            it++;
            break;
        }
    }
    /* both codebooks as stored (fp16) and their true objectives: rounding
     * could in principle lose the gain, so keep the better one */
    for (size_t i = 0; i < ND; i++) pf[i] = spqr_f16_to_f32(spqr_f32_to_f16(best[i]));
    expand(&p, pf, W, p.E);
    const double f_untuned = objective(&p);
    for (size_t i = 0; i < ND; i++) pf[i] = spqr_f16_to_f32(spqr_f32_to_f16((float)x[i]));
    expand(&p, pf, W, p.E);
    f = objective(&p);
    if (f <= f_untuned) {
        memcpy(C, pf, ND * sizeof(float));
    } else {
        f = f_untuned;
    }
    if (rep) {
        rep->f_before = f_untuned;
        rep->f_after = f;
        rep->iters = it;
    }
done:
    free(p.Hf);
    free(p.E);
    free(p.G);
    free(x);
    free(r);
    free(z);
    free(pp);
    free(Ap);
    free(Minv);
    free(pf);
    free(best);
    return st;
}
