/* block_ref.c - the whole block in double precision from the _ref ops
 * (train_ops.h): the readable definition that the tests check against
 * finite differences and against the float32 block (block.c). */
#include <stdlib.h>
#include <string.h>

#include "train_ops.h"

/* the activations of one forward */
typedef struct acts {
    double *xn1, *q, *k, *v, *att, *o, *h, *xn2, *g, *u, *s, *cs, *sn;
    double *mem;
} acts;

static void acts_free(acts *a) { free(a->mem); }

static spqr_status acts_new(const spqr_config *c, int nseq, int T1, acts *a) {
    const size_t N = (size_t)nseq * (size_t)T1, D = (size_t)c->dim, F = (size_t)c->hidden_dim;
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    const size_t half = (size_t)c->head_dim / 2;
    double **slots[] = {&a->xn1, &a->q, &a->k, &a->v, &a->att, &a->o, &a->h, &a->xn2, &a->g, &a->u, &a->s};
    const size_t widths[] = {D, qd, kvd, kvd, qd, D, D, D, F, F, F};
    size_t per = 0;
    for (size_t i = 0; i < sizeof widths / sizeof *widths; i++) per += widths[i];
    size_t n;
    if (!spqr_mul_size(N, per, &n) || !spqr_add_size(n, 2 * (size_t)T1 * half, &n) ||
        !(a->mem = spqr_malloc_array(n, sizeof(double))))
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the reference block (%zu tokens)", N);
    double *m = a->mem;
    for (size_t i = 0; i < sizeof widths / sizeof *widths; i++) {
        *slots[i] = m;
        m += N * widths[i];
    }
    a->cs = m;
    a->sn = m + (size_t)T1 * half;
    /* the float32 RoPE tables of the forward pass, widened */
    float *cs = spqr_malloc_array((size_t)T1 * half, 2 * sizeof(float));
    if (!cs) {
        free(a->mem);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    float *sn = cs + (size_t)T1 * half;
    spqr_rope_tables(c, 0, T1, cs, sn);
    for (size_t i = 0; i < (size_t)T1 * half; i++) {
        a->cs[i] = cs[i];
        a->sn[i] = sn[i];
    }
    free(cs);
    return SPQR_OK;
}

static spqr_status forward(const spqr_config *c, const spqr_tblock_ref *b, const double *X, int nseq, int T1,
                           double *Y, acts *a) {
    const int T = nseq * T1, D = c->dim, F = c->hidden_dim;
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    spqr_rmsnorm_fwd_ref(a->xn1, NULL, X, b->attn_norm, T, D, c->norm_eps);
    spqr_lin_fwd_ref(a->q, a->xn1, b->W[SPQR_LIN_Q], b->bias[SPQR_LIN_Q], T, qd, D);
    spqr_lin_fwd_ref(a->k, a->xn1, b->W[SPQR_LIN_K], b->bias[SPQR_LIN_K], T, kvd, D);
    spqr_lin_fwd_ref(a->v, a->xn1, b->W[SPQR_LIN_V], b->bias[SPQR_LIN_V], T, kvd, D);
    for (int sq = 0; sq < nseq; sq++) {
        size_t o = (size_t)sq * (size_t)T1;
        spqr_rope_ref(c, a->q + o * qd, T1, c->n_heads, qd, a->cs, a->sn, +1);
        spqr_rope_ref(c, a->k + o * kvd, T1, c->n_kv_heads, kvd, a->cs, a->sn, +1);
        spqr_status st = spqr_attn_fwd_ref(c, a->q + o * qd, a->k + o * kvd, a->v + o * kvd, T1, a->att + o * qd);
        if (st) return st;
    }
    spqr_lin_fwd_ref(a->o, a->att, b->W[SPQR_LIN_O], b->bias[SPQR_LIN_O], T, D, qd);
    for (size_t i = 0; i < (size_t)T * D; i++) a->h[i] = X[i] + a->o[i];
    spqr_rmsnorm_fwd_ref(a->xn2, NULL, a->h, b->ffn_norm, T, D, c->norm_eps);
    spqr_lin_fwd_ref(a->g, a->xn2, b->W[SPQR_LIN_GATE], b->bias[SPQR_LIN_GATE], T, F, D);
    spqr_lin_fwd_ref(a->u, a->xn2, b->W[SPQR_LIN_UP], b->bias[SPQR_LIN_UP], T, F, D);
    spqr_swiglu_fwd_ref(a->s, a->g, a->u, (size_t)T * F);
    spqr_lin_fwd_ref(Y, a->s, b->W[SPQR_LIN_DOWN], b->bias[SPQR_LIN_DOWN], T, D, F);
    for (size_t i = 0; i < (size_t)T * D; i++) Y[i] += a->h[i];
    return SPQR_OK;
}

spqr_status spqr_tblock_forward_ref(const spqr_config *c, const spqr_tblock_ref *b, const double *X, int nseq, int T1,
                                    double *Y) {
    acts a;
    spqr_status st = acts_new(c, nseq, T1, &a);
    if (st) return st;
    st = forward(c, b, X, nseq, T1, Y, &a);
    acts_free(&a);
    return st;
}

spqr_status spqr_tblock_backward_ref(const spqr_config *c, const spqr_tblock_ref *b, const double *X, int nseq,
                                     int T1, const double *dY, double *dX, spqr_tgrads_ref *g) {
    const int T = nseq * T1, D = c->dim, F = c->hidden_dim;
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    const size_t N = (size_t)T;
    acts a;
    spqr_status st = acts_new(c, nseq, T1, &a);
    if (st) return st;
    /* Y (unused) and the gradients of the activations */
    double *w = spqr_calloc_array(N, (4 * (size_t)D + 2 * (size_t)qd + 2 * (size_t)kvd + 3 * (size_t)F) *
                                         sizeof(double));
    if (!w) {
        acts_free(&a);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the reference backward");
    }
    double *Y = w, *dh = Y + N * D, *dxn1 = dh + N * D, *dxn2 = dxn1 + N * D, *datt = dxn2 + N * D;
    double *dq = datt + N * qd, *dk = dq + N * qd, *dv = dk + N * kvd, *ds = dv + N * kvd, *dg = ds + N * F;
    double *du = dg + N * F;
    if ((st = forward(c, b, X, nseq, T1, Y, &a))) goto done;

    memcpy(dh, dY, N * D * sizeof(double));
    spqr_lin_bwd_ref(ds, g->W[SPQR_LIN_DOWN], dY, a.s, b->W[SPQR_LIN_DOWN], T, D, F);
    spqr_swiglu_bwd_ref(dg, du, ds, a.g, a.u, N * F);
    spqr_lin_bwd_ref(dxn2, g->W[SPQR_LIN_GATE], dg, a.xn2, b->W[SPQR_LIN_GATE], T, F, D);
    spqr_lin_bwd_ref(dxn2, g->W[SPQR_LIN_UP], du, a.xn2, b->W[SPQR_LIN_UP], T, F, D);
    spqr_rmsnorm_bwd_ref(dh, g->ffn_norm, dxn2, a.h, b->ffn_norm, T, D, c->norm_eps);
    spqr_lin_bwd_ref(datt, g->W[SPQR_LIN_O], dh, a.att, b->W[SPQR_LIN_O], T, D, qd);
    for (int sq = 0; sq < nseq; sq++) {
        size_t o = (size_t)sq * (size_t)T1;
        if ((st = spqr_attn_bwd_ref(c, a.q + o * qd, a.k + o * kvd, a.v + o * kvd, datt + o * qd, T1, dq + o * qd,
                                    dk + o * kvd, dv + o * kvd)))
            goto done;
        spqr_rope_ref(c, dq + o * qd, T1, c->n_heads, qd, a.cs, a.sn, -1);
        spqr_rope_ref(c, dk + o * kvd, T1, c->n_kv_heads, kvd, a.cs, a.sn, -1);
    }
    spqr_lin_bwd_ref(dxn1, g->W[SPQR_LIN_Q], dq, a.xn1, b->W[SPQR_LIN_Q], T, qd, D);
    spqr_lin_bwd_ref(dxn1, g->W[SPQR_LIN_K], dk, a.xn1, b->W[SPQR_LIN_K], T, kvd, D);
    spqr_lin_bwd_ref(dxn1, g->W[SPQR_LIN_V], dv, a.xn1, b->W[SPQR_LIN_V], T, kvd, D);
    if (dX) memcpy(dX, dh, N * D * sizeof(double));
    spqr_rmsnorm_bwd_ref(dX, g->attn_norm, dxn1, X, b->attn_norm, T, D, c->norm_eps);
done:
    free(w);
    acts_free(&a);
    return st;
}
