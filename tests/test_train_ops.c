/* test_train_ops.c - the ops of the block backward (train/train_ops.h) and
 * the whole block (train/train.h).
 *
 * Every check uses the loss L = sum(R * out) with a fixed random R, so the
 * gradient of the output is R. Three kinds of checks, with these bounds:
 *
 * (1) each `_ref` backward (double) against central finite differences of
 *     its `_ref` forward, step h = 1e-6:
 *         max |g - fd| / max |fd| < 1e-6       (FD_TOL)
 *     (truncation ~h^2, rounding ~1e-16 |L| / h: both far below);
 * (2) each float32 op against its `_ref` twin on the same (float) inputs:
 *         max |f - ref| / max |ref| < tol, tol per op below (1e-6 .. 1e-4);
 *     the float32 RMSNorm forward must equal spqr_rmsnorm bit for bit;
 * (3) the block: double FD of dX, dW of the 7 linears and both norm weights
 *     (20 sampled coordinates per tensor, FD_TOL) for nseq = 2; the float32
 *     block forward/backward against the double block (BLOCK_TOL = 1e-4 per
 *     tensor); spqr_tblock_forward against spqr_block_forward on a model
 *     built in memory (1e-5).
 *
 * Shapes are awkward on purpose: dims not multiples of 8, T = 5 and 7,
 * head_dim 6 and 10, 4 query heads over 4, 2 or 1 kv heads, both RoPE
 * layouts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "model/model.h"
#include "train/train_ops.h"

#define FD_H 1e-6
#define FD_TOL 1e-6
#define BLOCK_TOL 1e-4

/* ---- helpers ------------------------------------------------------------------- */

static void *xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    assert_non_null(p);
    return p;
}

static double *dnormal(size_t n, double scale) {
    double *p = xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = scale * tu_rand_normal();
    return p;
}

static float *fnormal(size_t n, float scale) {
    float *p = xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = scale * tu_rand_normal();
    return p;
}

static double *widen(const float *f, size_t n) {
    double *d = xmalloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* max |a - r| / max |r| */
static double rel_err_f(const float *a, const double *r, size_t n) {
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - r[i]));
        m = fmax(m, fabs(r[i]));
    }
    return e / (m > 0 ? m : 1.0);
}

static double rel_err_ff(const float *a, const float *r, size_t n) {
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - r[i]));
        m = fmax(m, fabs(r[i]));
    }
    return e / (m > 0 ? m : 1.0);
}

typedef double (*loss_fn)(void *ctx);

/* max |g - fd| / max |fd| over nsample random coordinates of p[n] (all of
 * them when nsample <= 0 or >= n), fd the central difference of L */
static double fd_err(loss_fn L, void *ctx, double *p, size_t n, const double *g, int nsample) {
    size_t cnt = (nsample <= 0 || (size_t)nsample >= n) ? n : (size_t)nsample;
    double e = 0.0, m = 0.0;
    for (size_t j = 0; j < cnt; j++) {
        size_t i = cnt == n ? j : (size_t)(tu_rand_u64() % n);
        double save = p[i];
        p[i] = save + FD_H;
        double lp = L(ctx);
        p[i] = save - FD_H;
        double lm = L(ctx);
        p[i] = save;
        double fd = (lp - lm) / (2 * FD_H);
        e = fmax(e, fabs(g[i] - fd));
        m = fmax(m, fabs(fd));
    }
    return e / (m > 0 ? m : 1.0);
}

static spqr_config small_cfg(int dim, int hidden, int nh, int nkv, int hd, int interleaved) {
    spqr_config c = {0};
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = 1;
    c.n_heads = nh;
    c.n_kv_heads = nkv;
    c.head_dim = hd;
    c.vocab_size = 32;
    c.max_seq_len = 64;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_interleaved = interleaved;
    return c;
}

/* ---- RMSNorm ------------------------------------------------------------------- */

typedef struct {
    double *x, *w, *R, *y;
    int T, n;
    double eps;
} rms_ctx;

static double rms_loss(void *p) {
    rms_ctx *c = p;
    spqr_rmsnorm_fwd_ref(c->y, NULL, c->x, c->w, c->T, c->n, c->eps);
    return dot(c->R, c->y, (size_t)c->T * c->n);
}

static void test_rmsnorm(void **state) {
    (void)state;
    tu_seed(11);
    const int shapes[][2] = {{5, 13}, {7, 1}, {3, 37}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int T = shapes[k][0], n = shapes[k][1];
        const size_t N = (size_t)T * n;
        /* (1) ref backward vs finite differences */
        rms_ctx c = {dnormal(N, 1.0), dnormal((size_t)n, 1.0), dnormal(N, 1.0), xmalloc(N * sizeof(double)), T, n,
                     1e-5};
        for (int i = 0; i < n; i++) c.w[i] += 1.0;
        double *dx = xmalloc(N * sizeof(double)), *dw = xmalloc((size_t)n * sizeof(double));
        spqr_rmsnorm_bwd_ref(dx, dw, c.R, c.x, c.w, T, n, c.eps);
        double ex = fd_err(rms_loss, &c, c.x, N, dx, 0), ew = fd_err(rms_loss, &c, c.w, (size_t)n, dw, 0);
        printf("rmsnorm T=%d n=%d: fd rel err dx %.2e dw %.2e\n", T, n, ex, ew);
        assert_true(ex < FD_TOL);
        assert_true(ew < FD_TOL);

        /* (2) float32 vs ref; the forward equals spqr_rmsnorm bit for bit */
        float *xf = fnormal(N, 1.0f), *wf = fnormal((size_t)n, 0.1f), *Rf = fnormal(N, 1.0f);
        for (int i = 0; i < n; i++) wf[i] += 1.0f;
        float *yf = xmalloc(N * sizeof(float)), *y0 = xmalloc(N * sizeof(float)), *rinv = xmalloc((size_t)T * 4);
        spqr_rmsnorm_fwd(yf, rinv, xf, wf, T, n, 1e-5f);
        for (int t = 0; t < T; t++) spqr_rmsnorm(y0 + (size_t)t * n, xf + (size_t)t * n, wf, n, 1e-5f);
        assert_memory_equal(yf, y0, N * sizeof(float));
        double *xd = widen(xf, N), *wd = widen(wf, (size_t)n), *Rd = widen(Rf, N), *yd = xmalloc(N * sizeof(double));
        spqr_rmsnorm_fwd_ref(yd, NULL, xd, wd, T, n, 1e-5);
        double ey = rel_err_f(yf, yd, N);
        /* backward adds: start both from the same nonzero values */
        float *dxf = fnormal(N, 1.0f), *dwf = fnormal((size_t)n, 1.0f);
        double *dxd = widen(dxf, N), *dwd = widen(dwf, (size_t)n);
        spqr_rmsnorm_bwd(dxf, dwf, Rf, xf, wf, rinv, T, n);
        spqr_rmsnorm_bwd_ref(dxd, dwd, Rd, xd, wd, T, n, 1e-5);
        double edx = rel_err_f(dxf, dxd, N), edw = rel_err_f(dwf, dwd, (size_t)n);
        printf("rmsnorm float vs ref: y %.2e dx %.2e dw %.2e\n", ey, edx, edw);
        assert_true(ey < 1e-6);
        assert_true(edx < 1e-5);
        assert_true(edw < 1e-5);
        free(c.x), free(c.w), free(c.R), free(c.y), free(dx), free(dw);
        free(xf), free(wf), free(Rf), free(yf), free(y0), free(rinv), free(xd), free(wd), free(Rd), free(yd);
        free(dxf), free(dwf), free(dxd), free(dwd);
    }
}

/* ---- RoPE ------------------------------------------------------------------------ */

typedef struct {
    const spqr_config *c;
    double *v, *tmp, *R, *cs, *sn;
    int T, nh;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *r = p;
    size_t n = (size_t)r->T * r->nh * r->c->head_dim;
    memcpy(r->tmp, r->v, n * sizeof(double));
    spqr_rope_ref(r->c, r->tmp, r->T, r->nh, r->nh * r->c->head_dim, r->cs, r->sn, +1);
    return dot(r->R, r->tmp, n);
}

static void test_rope(void **state) {
    (void)state;
    tu_seed(12);
    for (int layout = 0; layout < 2; layout++) {
        for (int hd = 6; hd <= 10; hd += 4) {
            spqr_config c = small_cfg(16, 16, 3, 3, hd, layout);
            const int T = 7, nh = 3, half = hd / 2;
            const size_t n = (size_t)T * nh * hd;
            float *csf = xmalloc((size_t)T * half * 4), *snf = xmalloc((size_t)T * half * 4);
            spqr_rope_tables(&c, 0, T, csf, snf);
            rope_ctx r = {&c, dnormal(n, 1.0), xmalloc(n * 8), dnormal(n, 1.0), widen(csf, (size_t)T * half),
                          widen(snf, (size_t)T * half), T, nh};
            double *g = xmalloc(n * 8);
            memcpy(g, r.R, n * 8);
            spqr_rope_ref(&c, g, T, nh, nh * hd, r.cs, r.sn, -1);
            double e = fd_err(rope_loss, &r, r.v, n, g, 0);
            /* float32 backward vs ref, and the backward undoes the forward */
            float *vf = fnormal(n, 1.0f), *v0 = xmalloc(n * 4);
            memcpy(v0, vf, n * 4);
            double *vd = widen(vf, n);
            spqr_rope_bwd(&c, vf, T, nh, nh * hd, csf, snf);
            spqr_rope_ref(&c, vd, T, nh, nh * hd, r.cs, r.sn, -1);
            double eb = rel_err_f(vf, vd, n);
            spqr_rope_apply(&c, vf, T, nh, nh * hd, NULL, csf, snf);
            double einv = rel_err_ff(vf, v0, n);
            printf("rope %s hd=%d: fd %.2e float-vs-ref %.2e inverse %.2e\n", layout ? "interleaved" : "half", hd, e,
                   eb, einv);
            assert_true(e < FD_TOL);
            assert_true(eb < 1e-6);
            assert_true(einv < 1e-6);
            free(csf), free(snf), free(r.v), free(r.tmp), free(r.R), free(r.cs), free(r.sn), free(g);
            free(vf), free(v0), free(vd);
        }
    }
}

/* ---- attention ---------------------------------------------------------------------- */

typedef struct {
    const spqr_config *c;
    double *Q, *K, *V, *R, *O;
    int T;
} attn_ctx;

static double attn_loss(void *p) {
    attn_ctx *a = p;
    assert_int_equal(spqr_attn_fwd_ref(a->c, a->Q, a->K, a->V, a->T, a->O), SPQR_OK);
    return dot(a->R, a->O, (size_t)a->T * a->c->n_heads * a->c->head_dim);
}

static void test_attention(void **state) {
    (void)state;
    tu_seed(13);
    const int cases[][4] = {/* n_kv_heads, head_dim, T, interleaved (unused here) */
                            {2, 6, 5, 0}, {4, 10, 7, 0}, {1, 6, 7, 0}, {2, 10, 1, 0}, {1, 10, 20, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        spqr_config c = small_cfg(16, 16, 4, cases[k][0], cases[k][1], 0);
        const int T = cases[k][2], hd = c.head_dim;
        const size_t nq = (size_t)T * c.n_heads * hd, nk = (size_t)T * c.n_kv_heads * hd;
        /* (1) */
        attn_ctx a = {&c, dnormal(nq, 1.0), dnormal(nk, 1.0), dnormal(nk, 1.0), dnormal(nq, 1.0), xmalloc(nq * 8), T};
        double *dQ = xmalloc(nq * 8), *dK = xmalloc(nk * 8), *dV = xmalloc(nk * 8);
        assert_int_equal(spqr_attn_bwd_ref(&c, a.Q, a.K, a.V, a.R, T, dQ, dK, dV), SPQR_OK);
        double eq = fd_err(attn_loss, &a, a.Q, nq, dQ, 0), ek = fd_err(attn_loss, &a, a.K, nk, dK, 0),
               ev = fd_err(attn_loss, &a, a.V, nk, dV, 0);
        /* (2) */
        float *Qf = fnormal(nq, 1.0f), *Kf = fnormal(nk, 1.0f), *Vf = fnormal(nk, 1.0f), *Rf = fnormal(nq, 1.0f);
        float *Of = xmalloc(nq * 4), *dQf = xmalloc(nq * 4), *dKf = fnormal(nk, 1.0f), *dVf = fnormal(nk, 1.0f);
        double *Qd = widen(Qf, nq), *Kd = widen(Kf, nk), *Vd = widen(Vf, nk), *Rd = widen(Rf, nq);
        assert_int_equal(spqr_attn_fwd(&c, Qf, Kf, Vf, T, Of), SPQR_OK);
        assert_int_equal(spqr_attn_bwd(&c, Qf, Kf, Vf, Rf, T, dQf, dKf, dVf), SPQR_OK);
        assert_int_equal(spqr_attn_fwd_ref(&c, Qd, Kd, Vd, T, a.O), SPQR_OK);
        assert_int_equal(spqr_attn_bwd_ref(&c, Qd, Kd, Vd, Rd, T, dQ, dK, dV), SPQR_OK);
        double fo = rel_err_f(Of, a.O, nq), fq = rel_err_f(dQf, dQ, nq), fk = rel_err_f(dKf, dK, nk),
               fv = rel_err_f(dVf, dV, nk);
        printf("attention nh=4 nkv=%d hd=%d T=%d: fd dQ %.2e dK %.2e dV %.2e; float-vs-ref O %.2e dQ %.2e dK %.2e "
               "dV %.2e\n",
               c.n_kv_heads, hd, T, eq, ek, ev, fo, fq, fk, fv);
        assert_true(eq < FD_TOL && ek < FD_TOL && ev < FD_TOL);
        assert_true(fo < 1e-5);
        assert_true(fq < 1e-4 && fk < 1e-4 && fv < 1e-4);
        free(a.Q), free(a.K), free(a.V), free(a.R), free(a.O), free(dQ), free(dK), free(dV);
        free(Qf), free(Kf), free(Vf), free(Rf), free(Of), free(dQf), free(dKf), free(dVf);
        free(Qd), free(Kd), free(Vd), free(Rd);
    }
}

/* ---- SwiGLU --------------------------------------------------------------------------- */

typedef struct {
    double *g, *u, *R, *out;
    size_t n;
} swiglu_ctx;

static double swiglu_loss(void *p) {
    swiglu_ctx *s = p;
    spqr_swiglu_fwd_ref(s->out, s->g, s->u, s->n);
    return dot(s->R, s->out, s->n);
}

static void test_swiglu(void **state) {
    (void)state;
    tu_seed(14);
    const size_t n = 37;
    swiglu_ctx s = {dnormal(n, 3.0), dnormal(n, 1.0), dnormal(n, 1.0), xmalloc(n * 8), n};
    double *dg = xmalloc(n * 8), *du = xmalloc(n * 8);
    spqr_swiglu_bwd_ref(dg, du, s.R, s.g, s.u, n);
    double eg = fd_err(swiglu_loss, &s, s.g, n, dg, 0), eu = fd_err(swiglu_loss, &s, s.u, n, du, 0);
    float *gf = fnormal(n, 3.0f), *uf = fnormal(n, 1.0f), *Rf = fnormal(n, 1.0f), *of = xmalloc(n * 4);
    float *dgf = xmalloc(n * 4), *duf = xmalloc(n * 4);
    double *gd = widen(gf, n), *ud = widen(uf, n), *Rd = widen(Rf, n);
    spqr_swiglu_fwd(of, gf, uf, n);
    spqr_swiglu_fwd_ref(s.out, gd, ud, n);
    double eo = rel_err_f(of, s.out, n);
    memcpy(dgf, Rf, n * 4); /* dg aliases dout, as block.c uses it */
    spqr_swiglu_bwd(dgf, duf, dgf, gf, uf, n);
    spqr_swiglu_bwd_ref(dg, du, Rd, gd, ud, n);
    double fg = rel_err_f(dgf, dg, n), fu = rel_err_f(duf, du, n);
    printf("swiglu: fd dg %.2e du %.2e; float-vs-ref out %.2e dg %.2e du %.2e\n", eg, eu, eo, fg, fu);
    assert_true(eg < FD_TOL && eu < FD_TOL);
    assert_true(eo < 1e-6 && fg < 1e-6 && fu < 1e-6);
    free(s.g), free(s.u), free(s.R), free(s.out), free(dg), free(du);
    free(gf), free(uf), free(Rf), free(of), free(dgf), free(duf), free(gd), free(ud), free(Rd);
}

/* ---- linear ------------------------------------------------------------------------------ */

typedef struct {
    double *X, *W, *b, *R, *Y;
    int T, rows, cols;
} lin_ctx;

static double lin_loss(void *p) {
    lin_ctx *l = p;
    spqr_lin_fwd_ref(l->Y, l->X, l->W, l->b, l->T, l->rows, l->cols);
    return dot(l->R, l->Y, (size_t)l->T * l->rows);
}

static void test_linear(void **state) {
    (void)state;
    tu_seed(15);
    const int T = 5, rows = 11, cols = 13;
    const size_t nx = (size_t)T * cols, nw = (size_t)rows * cols, ny = (size_t)T * rows;
    lin_ctx l = {dnormal(nx, 1.0), dnormal(nw, 1.0), dnormal((size_t)rows, 1.0), dnormal(ny, 1.0), xmalloc(ny * 8),
                 T, rows, cols};
    double *dX = xmalloc(nx * 8), *dW = xmalloc(nw * 8);
    spqr_lin_bwd_ref(dX, dW, l.R, l.X, l.W, T, rows, cols);
    double ex = fd_err(lin_loss, &l, l.X, nx, dX, 0), ew = fd_err(lin_loss, &l, l.W, nw, dW, 0);
    float *Xf = fnormal(nx, 1.0f), *Wf = fnormal(nw, 1.0f), *bf = fnormal((size_t)rows, 1.0f),
          *Rf = fnormal(ny, 1.0f);
    float *Yf = xmalloc(ny * 4), *dXf = fnormal(nx, 1.0f), *dWf = fnormal(nw, 1.0f);
    double *Xd = widen(Xf, nx), *Wd = widen(Wf, nw), *bd = widen(bf, (size_t)rows), *Rd = widen(Rf, ny);
    double *dXd = widen(dXf, nx), *dWd = widen(dWf, nw);
    spqr_lin_fwd(Yf, Xf, Wf, bf, T, rows, cols);
    spqr_lin_fwd_ref(l.Y, Xd, Wd, bd, T, rows, cols);
    spqr_lin_bwd(dXf, dWf, Rf, Xf, Wf, T, rows, cols);
    spqr_lin_bwd_ref(dXd, dWd, Rd, Xd, Wd, T, rows, cols);
    double ey = rel_err_f(Yf, l.Y, ny), fx = rel_err_f(dXf, dXd, nx), fw = rel_err_f(dWf, dWd, nw);
    printf("linear: fd dX %.2e dW %.2e; float-vs-ref Y %.2e dX %.2e dW %.2e\n", ex, ew, ey, fx, fw);
    assert_true(ex < FD_TOL && ew < FD_TOL);
    assert_true(ey < 1e-5 && fx < 1e-5 && fw < 1e-5);
    free(l.X), free(l.W), free(l.b), free(l.R), free(l.Y), free(dX), free(dW);
    free(Xf), free(Wf), free(bf), free(Rf), free(Yf), free(dXf), free(dWf);
    free(Xd), free(Wd), free(bd), free(Rd), free(dXd), free(dWd);
}

/* ---- the block ------------------------------------------------------------------------------ */

/* random float weights of a block (W ~ N(0, 1/cols), norms 1 + N(0, 0.1^2),
 * biases on q/k/v when with_bias) and their widened copies */
typedef struct wts {
    spqr_config c;
    float *norm[2], *W[SPQR_LIN_PER_BLOCK], *bias[SPQR_LIN_PER_BLOCK];
    double *normd[2], *Wd[SPQR_LIN_PER_BLOCK], *biasd[SPQR_LIN_PER_BLOCK];
    size_t nW[SPQR_LIN_PER_BLOCK];
    int64_t shape[SPQR_LIN_PER_BLOCK][2];
    spqr_tblock b;
    spqr_tblock_ref br;
} wts;

static void wts_init(wts *w, const spqr_config *c, int with_bias) {
    memset(w, 0, sizeof *w);
    w->c = *c;
    spqr_linear_shapes(c, w->shape);
    for (int k = 0; k < 2; k++) {
        w->norm[k] = fnormal((size_t)c->dim, 0.1f);
        for (int i = 0; i < c->dim; i++) w->norm[k][i] += 1.0f;
        w->normd[k] = widen(w->norm[k], (size_t)c->dim);
    }
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        w->nW[k] = (size_t)(w->shape[k][0] * w->shape[k][1]);
        w->W[k] = fnormal(w->nW[k], 1.0f / sqrtf((float)w->shape[k][1]));
        w->Wd[k] = widen(w->W[k], w->nW[k]);
        if (with_bias && k <= SPQR_LIN_V) {
            w->bias[k] = fnormal((size_t)w->shape[k][0], 0.5f);
            w->biasd[k] = widen(w->bias[k], (size_t)w->shape[k][0]);
        }
        w->b.W[k] = w->W[k];
        w->b.bias[k] = w->bias[k];
        w->br.W[k] = w->Wd[k];
        w->br.bias[k] = w->biasd[k];
    }
    w->b.attn_norm = w->norm[0];
    w->b.ffn_norm = w->norm[1];
    w->br.attn_norm = w->normd[0];
    w->br.ffn_norm = w->normd[1];
}

static void wts_free(wts *w) {
    for (int k = 0; k < 2; k++) free(w->norm[k]), free(w->normd[k]);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) free(w->W[k]), free(w->Wd[k]), free(w->bias[k]), free(w->biasd[k]);
}

typedef struct {
    wts *w;
    double *X, *R, *Y;
    int nseq, T1;
} block_ctx;

static double block_loss(void *p) {
    block_ctx *b = p;
    assert_int_equal(spqr_tblock_forward_ref(&b->w->c, &b->w->br, b->X, b->nseq, b->T1, b->Y), SPQR_OK);
    return dot(b->R, b->Y, (size_t)b->nseq * b->T1 * b->w->c.dim);
}

static const struct {
    int dim, hidden, nh, nkv, hd, interleaved, bias, T1;
} k_blocks[] = {
    {20, 36, 4, 2, 6, 1, 0, 5},
    {13, 22, 4, 1, 10, 0, 1, 7},
    {18, 30, 4, 4, 6, 0, 0, 5},
};

/* (3a) the double block against finite differences */
static void test_block_fd(void **state) {
    (void)state;
    tu_seed(16);
    for (size_t k = 0; k < sizeof k_blocks / sizeof *k_blocks; k++) {
        spqr_config c = small_cfg(k_blocks[k].dim, k_blocks[k].hidden, k_blocks[k].nh, k_blocks[k].nkv,
                                  k_blocks[k].hd, k_blocks[k].interleaved);
        wts w;
        wts_init(&w, &c, k_blocks[k].bias);
        const int nseq = 2, T1 = k_blocks[k].T1;
        const size_t nx = (size_t)nseq * T1 * c.dim;
        block_ctx b = {&w, dnormal(nx, 1.0), dnormal(nx, 1.0), xmalloc(nx * 8), nseq, T1};
        double *dX = xmalloc(nx * 8), *gn[2], *gW[SPQR_LIN_PER_BLOCK];
        spqr_tgrads_ref g = {0};
        g.attn_norm = gn[0] = xmalloc((size_t)c.dim * 8);
        g.ffn_norm = gn[1] = xmalloc((size_t)c.dim * 8);
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) g.W[l] = gW[l] = xmalloc(w.nW[l] * 8);
        assert_int_equal(spqr_tblock_backward_ref(&c, &w.br, b.X, nseq, T1, b.R, dX, &g), SPQR_OK);
        double worst = fd_err(block_loss, &b, b.X, nx, dX, 20);
        printf("block %zu (dim %d hidden %d nh 4 nkv %d hd %d %s%s T1 %d): fd dX %.2e", k, c.dim, c.hidden_dim,
               c.n_kv_heads, c.head_dim, c.rope_interleaved ? "interleaved" : "rotate-half",
               k_blocks[k].bias ? " qkv-bias" : "", T1, worst);
        for (int n = 0; n < 2; n++) {
            double e = fd_err(block_loss, &b, n ? w.normd[1] : w.normd[0], (size_t)c.dim, gn[n], 20);
            printf(" %s %.2e", n ? "ffn_norm" : "attn_norm", e);
            worst = fmax(worst, e);
        }
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) {
            double e = fd_err(block_loss, &b, w.Wd[l], w.nW[l], gW[l], 20);
            printf(" %s %.2e", spqr_linear_names[l], e);
            worst = fmax(worst, e);
        }
        printf("\n");
        assert_true(worst < FD_TOL);
        free(b.X), free(b.R), free(b.Y), free(dX), free(gn[0]), free(gn[1]);
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) free(gW[l]);
        wts_free(&w);
    }
}

/* (3b) the float32 block against the double block */
static void test_block_float_vs_ref(void **state) {
    (void)state;
    tu_seed(17);
    for (size_t k = 0; k < sizeof k_blocks / sizeof *k_blocks; k++) {
        spqr_config c = small_cfg(k_blocks[k].dim, k_blocks[k].hidden, k_blocks[k].nh, k_blocks[k].nkv,
                                  k_blocks[k].hd, k_blocks[k].interleaved);
        wts w;
        wts_init(&w, &c, k_blocks[k].bias);
        const int nseq = 2, T1 = k_blocks[k].T1;
        const size_t nx = (size_t)nseq * T1 * c.dim, D = (size_t)c.dim;
        float *X = fnormal(nx, 1.0f), *R = fnormal(nx, 1.0f), *Y = xmalloc(nx * 4), *dX = xmalloc(nx * 4);
        double *Xd = widen(X, nx), *Rd = widen(R, nx), *Yd = xmalloc(nx * 8), *dXd = xmalloc(nx * 8);
        spqr_tgrads g = {0};
        spqr_tgrads_ref gd = {0};
        g.attn_norm = xmalloc(D * 4), g.ffn_norm = xmalloc(D * 4);
        gd.attn_norm = xmalloc(D * 8), gd.ffn_norm = xmalloc(D * 8);
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) g.W[l] = xmalloc(w.nW[l] * 4), gd.W[l] = xmalloc(w.nW[l] * 8);
        /* a tape bigger than needed (3 sequences) serves 2 */
        spqr_ttape *tape;
        assert_int_equal(spqr_ttape_new(&c, 3, T1, &tape), SPQR_OK);
        assert_true(spqr_ttape_bytes(&c, 3, T1) > spqr_ttape_bytes(&c, 2, T1));
        assert_int_equal(spqr_tblock_forward(&c, &w.b, X, nseq, T1, Y, tape), SPQR_OK);
        assert_int_equal(spqr_tblock_backward(&c, &w.b, tape, R, dX, &g), SPQR_OK);
        assert_int_equal(spqr_tblock_forward_ref(&c, &w.br, Xd, nseq, T1, Yd), SPQR_OK);
        assert_int_equal(spqr_tblock_backward_ref(&c, &w.br, Xd, nseq, T1, Rd, dXd, &gd), SPQR_OK);
        double ey = rel_err_f(Y, Yd, nx), ex = rel_err_f(dX, dXd, nx);
        double ea = rel_err_f(g.attn_norm, gd.attn_norm, D), ef = rel_err_f(g.ffn_norm, gd.ffn_norm, D);
        printf("block %zu float vs ref: Y %.2e dX %.2e attn_norm %.2e ffn_norm %.2e", k, ey, ex, ea, ef);
        double worst = fmax(ex, fmax(ea, ef));
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) {
            double e = rel_err_f(g.W[l], gd.W[l], w.nW[l]);
            printf(" %s %.2e", spqr_linear_names[l], e);
            worst = fmax(worst, e);
        }
        printf("\n");
        assert_true(ey < 1e-5);
        assert_true(worst < BLOCK_TOL);
        /* a forward without a tape gives the same Y; backward adds into g */
        float *Y2 = xmalloc(nx * 4);
        assert_int_equal(spqr_tblock_forward(&c, &w.b, X, nseq, T1, Y2, NULL), SPQR_OK);
        assert_memory_equal(Y, Y2, nx * 4);
        float *first = xmalloc(w.nW[SPQR_LIN_DOWN] * 4);
        memcpy(first, g.W[SPQR_LIN_DOWN], w.nW[SPQR_LIN_DOWN] * 4);
        spqr_tgrads only_down = {0};
        only_down.W[SPQR_LIN_DOWN] = g.W[SPQR_LIN_DOWN];
        assert_int_equal(spqr_tblock_backward(&c, &w.b, tape, R, NULL, &only_down), SPQR_OK);
        for (size_t i = 0; i < w.nW[SPQR_LIN_DOWN]; i++)
            assert_true(fabsf(g.W[SPQR_LIN_DOWN][i] - 2 * first[i]) <= 1e-6f * (1 + fabsf(first[i])));
        spqr_ttape_free(tape);
        free(Y2), free(first);
        free(X), free(R), free(Y), free(dX), free(Xd), free(Rd), free(Yd), free(dXd);
        free(g.attn_norm), free(g.ffn_norm), free(gd.attn_norm), free(gd.ffn_norm);
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) free(g.W[l]), free(gd.W[l]);
        wts_free(&w);
    }
}

/* (3c) spqr_tblock_forward against the inference forward on a dense model */
static void test_block_vs_model_forward(void **state) {
    (void)state;
    tu_seed(18);
    for (size_t k = 0; k < sizeof k_blocks / sizeof *k_blocks; k++) {
        spqr_config c = small_cfg(k_blocks[k].dim, k_blocks[k].hidden, k_blocks[k].nh, k_blocks[k].nkv,
                                  k_blocks[k].hd, k_blocks[k].interleaved);
        wts w;
        wts_init(&w, &c, k_blocks[k].bias);
        spqr_model *m;
        assert_int_equal(spqr_model_alloc(&m), SPQR_OK);
        m->cfg = c;
        m->blocks = xmalloc(sizeof(spqr_block));
        m->blocks[0].attn_norm = w.norm[0];
        m->blocks[0].ffn_norm = w.norm[1];
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) {
            assert_int_equal(spqr_linear_set_dense(&m->blocks[0].lin[l], w.W[l], SPQR_DT_F32, (int)w.shape[l][0],
                                                   (int)w.shape[l][1]),
                             SPQR_OK);
            m->blocks[0].lin[l].bias = w.bias[l];
        }
        /* T1 = 5 takes forward.c's loop attention, 17 and 40 its sgemm path
         * (80 tokens: the threaded RMSNorm) */
        const int T1s[] = {5, 17, 40};
        for (int it = 0; it < 3; it++) {
            const int T1 = T1s[it];
            const int nseq = 2;
            const size_t nx = (size_t)nseq * T1 * c.dim;
            float *X = fnormal(nx, 1.0f), *Y = xmalloc(nx * 4), *Y0 = xmalloc(nx * 4);
            memcpy(Y0, X, nx * 4);
            assert_int_equal(spqr_block_forward(m, 0, Y0, nseq, T1, NULL, NULL), SPQR_OK);
            assert_int_equal(spqr_tblock_forward(&c, &w.b, X, nseq, T1, Y, NULL), SPQR_OK);
            double e = rel_err_ff(Y, Y0, nx);
            printf("block %zu T1=%d: tblock vs spqr_block_forward %.2e%s\n", k, T1, e,
                   memcmp(Y, Y0, nx * 4) ? "" : " (bit-identical)");
            assert_true(e < 1e-5);
            free(X), free(Y), free(Y0);
        }
        spqr_model_free(m);
        wts_free(&w);
    }
}

static void test_tape_errors(void **state) {
    (void)state;
    tu_seed(19);
    spqr_config c = small_cfg(20, 36, 4, 2, 6, 1);
    wts w;
    wts_init(&w, &c, 0);
    spqr_ttape *tape;
    assert_int_equal(spqr_ttape_new(&c, 1, 4, &tape), SPQR_OK);
    float *X = fnormal(2 * 5 * 20, 1.0f), *Y = xmalloc(2 * 5 * 20 * 4);
    spqr_tgrads g = {0};
    /* nothing recorded yet, then sizes beyond the tape */
    assert_int_equal(spqr_tblock_backward(&c, &w.b, tape, X, NULL, &g), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_tblock_forward(&c, &w.b, X, 1, 5, Y, tape), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_tblock_forward(&c, &w.b, X, 2, 4, Y, tape), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_tblock_forward(&c, &w.b, X, 1, 3, Y, tape), SPQR_OK);
    assert_int_equal(spqr_tblock_backward(&c, &w.b, tape, X, NULL, &g), SPQR_OK);
    spqr_ttape_free(tape);
    spqr_ttape_free(NULL);
    assert_int_equal(spqr_ttape_new(&c, 0, 4, &tape), SPQR_ERR_INVALID_ARG);
    assert_null(tape);
    free(X), free(Y);
    wts_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_block_fd),
        cmocka_unit_test(test_block_float_vs_ref),
        cmocka_unit_test(test_block_vs_model_forward),
        cmocka_unit_test(test_tape_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
