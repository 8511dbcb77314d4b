/* block.c - forward with a tape and exact backward of one LLaMA block in
 * float32 (train.h), composed from the ops of ops.c:
 *
 *   xn1 = rmsnorm(x, attn_norm)           h   = x + o(att)
 *   q, k, v = Wq xn1, Wk xn1, Wv xn1      xn2 = rmsnorm(h, ffn_norm)
 *   q, k = rope(q), rope(k)               g, u = Wg xn2, Wu xn2
 *   att = attention(q, k, v)              y   = h + Wd swiglu(g, u)
 *
 * The backward walks the same list bottom-up; the residuals copy the
 * gradient into both branches and the ops add into their gradient outputs
 * (train_ops.h). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "train_ops.h"

/* Per token, the tape keeps (floats): x, xn1, h, xn2 (dim each), q, att
 * (n_heads * hd each), k, v (n_kv_heads * hd each), g, u, s = swiglu(g, u)
 * (hidden each) and the two inverse RMS norms; plus the RoPE tables
 * [T1][hd/2] twice. The attention probabilities are recomputed. */
struct spqr_ttape {
    size_t cap_tokens;
    int cap_T1;
    int nseq, T1; /* of the last forward; 0 before one */
    float *x, *xn1, *q, *k, *v, *att, *h, *xn2, *g, *u, *s, *rinv1, *rinv2;
    float *cs, *sn;
    float *mem;
};

typedef struct dims {
    size_t D, F, qd, kvd, half;
} dims;

static dims dims_of(const spqr_config *c) {
    dims d = {(size_t)c->dim, (size_t)c->hidden_dim, (size_t)c->n_heads * c->head_dim,
              (size_t)c->n_kv_heads * c->head_dim, (size_t)c->head_dim / 2};
    return d;
}

static size_t tape_floats_per_token(const dims *d) { return 4 * d->D + 2 * d->qd + 2 * d->kvd + 3 * d->F + 2; }

/* floats of a tape for nseq x T1 tokens, or 0 on overflow */
static size_t tape_floats(const spqr_config *c, int nseq, int T1) {
    dims d = dims_of(c);
    size_t a, b, n;
    if (!spqr_mul_size((size_t)nseq, (size_t)T1, &n) || !spqr_mul_size(n, tape_floats_per_token(&d), &a) ||
        !spqr_mul_size((size_t)T1, 2 * d.half, &b) || !spqr_add_size(a, b, &a))
        return 0;
    return a;
}

size_t spqr_ttape_bytes(const spqr_config *c, int nseq, int T1) {
    size_t n = tape_floats(c, nseq, T1), bytes;
    if (!spqr_mul_size(n, sizeof(float), &bytes)) return SIZE_MAX;
    return bytes + sizeof(spqr_ttape);
}

static spqr_status check_args(const spqr_config *c, int nseq, int T1) {
    if (!c || nseq <= 0 || T1 <= 0 || (int64_t)nseq * T1 > INT_MAX || c->n_kv_heads <= 0 ||
        c->n_heads % c->n_kv_heads || c->head_dim % 2)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "train block: bad config or size (%d sequences of %d tokens)", nseq,
                         T1);
    return SPQR_OK;
}

spqr_status spqr_ttape_new(const spqr_config *c, int nseq, int T1, spqr_ttape **out) {
    *out = NULL;
    spqr_status st = check_args(c, nseq, T1);
    if (st) return st;
    size_t n = tape_floats(c, nseq, T1);
    spqr_ttape *t = calloc(1, sizeof *t);
    float *m = n ? spqr_malloc_array(n, sizeof(float)) : NULL;
    if (!t || !m) {
        free(t);
        free(m);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for a training tape of %d x %d tokens", nseq, T1);
    }
    dims d = dims_of(c);
    size_t N = (size_t)nseq * (size_t)T1;
    t->cap_tokens = N;
    t->cap_T1 = T1;
    t->mem = m;
    float **slots[] = {&t->x, &t->xn1, &t->h, &t->xn2, &t->q, &t->att, &t->k, &t->v, &t->g, &t->u, &t->s};
    size_t widths[] = {d.D, d.D, d.D, d.D, d.qd, d.qd, d.kvd, d.kvd, d.F, d.F, d.F};
    for (size_t i = 0; i < sizeof widths / sizeof *widths; i++) {
        *slots[i] = m;
        m += N * widths[i];
    }
    t->rinv1 = m;
    t->rinv2 = m + N;
    t->cs = m + 2 * N;
    t->sn = t->cs + (size_t)T1 * d.half;
    *out = t;
    return SPQR_OK;
}

void spqr_ttape_free(spqr_ttape *t) {
    if (!t) return;
    free(t->mem);
    free(t);
}

size_t spqr_tblock_work_bytes(const spqr_config *c, int nseq, int T1) {
    dims d = dims_of(c);
    size_t N = (size_t)nseq * (size_t)T1;
    size_t per_token = 2 * d.D + 2 * d.qd + 2 * d.kvd + 2 * d.F;
    size_t attn = spqr_attn_bwd_scratch(c, T1, spqr_num_threads());
    return (N * per_token + attn) * sizeof(float);
}

spqr_status spqr_tblock_forward(const spqr_config *c, const spqr_tblock *b, const float *X, int nseq, int T1,
                                float *Y, spqr_ttape *tape) {
    spqr_status st = check_args(c, nseq, T1);
    if (st) return st;
    if (!tape) { /* a forward only: a tape of our own for the activations */
        spqr_ttape *own;
        if ((st = spqr_ttape_new(c, nseq, T1, &own))) return st;
        st = spqr_tblock_forward(c, b, X, nseq, T1, Y, own);
        spqr_ttape_free(own);
        return st;
    }
    const size_t N = (size_t)nseq * (size_t)T1;
    if (N > tape->cap_tokens || T1 > tape->cap_T1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "training tape too small for %d sequences of %d tokens", nseq, T1);
    const dims d = dims_of(c);
    const int T = (int)N, D = c->dim, F = c->hidden_dim, qd = (int)d.qd, kvd = (int)d.kvd;
    spqr_ttape *tp = tape;
    tp->nseq = tp->T1 = 0;

    memcpy(tp->x, X, N * d.D * sizeof(float));
    spqr_rmsnorm_fwd(tp->xn1, tp->rinv1, X, b->attn_norm, T, D, c->norm_eps);
    spqr_lin_fwd(tp->q, tp->xn1, b->W[SPQR_LIN_Q], b->bias[SPQR_LIN_Q], T, qd, D);
    spqr_lin_fwd(tp->k, tp->xn1, b->W[SPQR_LIN_K], b->bias[SPQR_LIN_K], T, kvd, D);
    spqr_lin_fwd(tp->v, tp->xn1, b->W[SPQR_LIN_V], b->bias[SPQR_LIN_V], T, kvd, D);
    spqr_rope_tables(c, 0, T1, tp->cs, tp->sn);
    for (int sq = 0; sq < nseq; sq++) {
        size_t o = (size_t)sq * (size_t)T1;
        spqr_rope_apply(c, tp->q + o * d.qd, T1, c->n_heads, qd, NULL, tp->cs, tp->sn);
        spqr_rope_apply(c, tp->k + o * d.kvd, T1, c->n_kv_heads, kvd, NULL, tp->cs, tp->sn);
        if ((st = spqr_attn_fwd(c, tp->q + o * d.qd, tp->k + o * d.kvd, tp->v + o * d.kvd, T1, tp->att + o * d.qd)))
            return st;
    }
    /* the o projection goes through Y, then h = x + o (forward.c's order) */
    spqr_lin_fwd(Y, tp->att, b->W[SPQR_LIN_O], b->bias[SPQR_LIN_O], T, D, qd);
    for (size_t i = 0; i < N * d.D; i++) tp->h[i] = X[i] + Y[i];

    spqr_rmsnorm_fwd(tp->xn2, tp->rinv2, tp->h, b->ffn_norm, T, D, c->norm_eps);
    spqr_lin_fwd(tp->g, tp->xn2, b->W[SPQR_LIN_GATE], b->bias[SPQR_LIN_GATE], T, F, D);
    spqr_lin_fwd(tp->u, tp->xn2, b->W[SPQR_LIN_UP], b->bias[SPQR_LIN_UP], T, F, D);
    spqr_swiglu_fwd(tp->s, tp->g, tp->u, N * d.F);
    spqr_lin_fwd(Y, tp->s, b->W[SPQR_LIN_DOWN], b->bias[SPQR_LIN_DOWN], T, D, F);
    for (size_t i = 0; i < N * d.D; i++) Y[i] += tp->h[i];
    tp->nseq = nseq;
    tp->T1 = T1;
    return SPQR_OK;
}

spqr_status spqr_tblock_backward(const spqr_config *c, const spqr_tblock *b, const spqr_ttape *tape,
                                 const float *dY, float *dX, spqr_tgrads *g) {
    if (!c || !b || !tape || !dY || !g) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_backward: bad arguments");
    if (tape->nseq <= 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_backward: the tape holds no forward");
    const spqr_ttape *tp = tape;
    const int nseq = tp->nseq, T1 = tp->T1;
    const dims d = dims_of(c);
    const size_t N = (size_t)nseq * (size_t)T1;
    const int T = (int)N, D = c->dim, F = c->hidden_dim, qd = (int)d.qd, kvd = (int)d.kvd;
    /* workspace: dh, dxn [N][D]; datt, dq [N][qd]; dk, dv [N][kvd]; ds (then dg), du [N][F] */
    float *w = spqr_malloc_array(N, (2 * d.D + 2 * d.qd + 2 * d.kvd + 2 * d.F) * sizeof(float));
    if (!w) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the block backward (%zu tokens)", N);
    float *dh = w, *dxn = dh + N * d.D, *datt = dxn + N * d.D, *dq = datt + N * d.qd, *dk = dq + N * d.qd;
    float *dv = dk + N * d.kvd, *ds = dv + N * d.kvd, *du = ds + N * d.F;
    spqr_status st = SPQR_OK;

    /* y = h + Wd s */
    memcpy(dh, dY, N * d.D * sizeof(float));
    memset(ds, 0, N * d.F * sizeof(float));
    spqr_lin_bwd(ds, g->W[SPQR_LIN_DOWN], dY, tp->s, b->W[SPQR_LIN_DOWN], T, D, F);
    /* s = swiglu(g, u); ds becomes dg */
    spqr_swiglu_bwd(ds, du, ds, tp->g, tp->u, N * d.F);
    /* g, u = Wg xn2, Wu xn2 */
    memset(dxn, 0, N * d.D * sizeof(float));
    spqr_lin_bwd(dxn, g->W[SPQR_LIN_GATE], ds, tp->xn2, b->W[SPQR_LIN_GATE], T, F, D);
    spqr_lin_bwd(dxn, g->W[SPQR_LIN_UP], du, tp->xn2, b->W[SPQR_LIN_UP], T, F, D);
    /* xn2 = rmsnorm(h) */
    spqr_rmsnorm_bwd(dh, g->ffn_norm, dxn, tp->h, b->ffn_norm, tp->rinv2, T, D);
    /* h = x + Wo att */
    memset(datt, 0, N * d.qd * sizeof(float));
    spqr_lin_bwd(datt, g->W[SPQR_LIN_O], dh, tp->att, b->W[SPQR_LIN_O], T, D, qd);
    /* attention and RoPE, sequence by sequence */
    for (int sq = 0; sq < nseq && !st; sq++) {
        size_t o = (size_t)sq * (size_t)T1;
        st = spqr_attn_bwd(c, tp->q + o * d.qd, tp->k + o * d.kvd, tp->v + o * d.kvd, datt + o * d.qd, T1,
                           dq + o * d.qd, dk + o * d.kvd, dv + o * d.kvd);
        spqr_rope_bwd(c, dq + o * d.qd, T1, c->n_heads, qd, tp->cs, tp->sn);
        spqr_rope_bwd(c, dk + o * d.kvd, T1, c->n_kv_heads, kvd, tp->cs, tp->sn);
    }
    if (!st) {
        /* q, k, v = W xn1 */
        memset(dxn, 0, N * d.D * sizeof(float));
        spqr_lin_bwd(dxn, g->W[SPQR_LIN_Q], dq, tp->xn1, b->W[SPQR_LIN_Q], T, qd, D);
        spqr_lin_bwd(dxn, g->W[SPQR_LIN_K], dk, tp->xn1, b->W[SPQR_LIN_K], T, kvd, D);
        spqr_lin_bwd(dxn, g->W[SPQR_LIN_V], dv, tp->xn1, b->W[SPQR_LIN_V], T, kvd, D);
        /* xn1 = rmsnorm(x); the residual carries dh into dX */
        if (dX) memcpy(dX, dh, N * d.D * sizeof(float));
        spqr_rmsnorm_bwd(dX, g->attn_norm, dxn, tp->x, b->attn_norm, tp->rinv1, T, D);
    }
    free(w);
    return st;
}
