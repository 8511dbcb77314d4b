/* train_ops.h - the differentiable ops of one LLaMA block (internal to
 * train/ and its tests).
 *
 * Each op comes as an optimized float32 function and a `_ref` twin in double
 * precision: plain scalar loops that are the readable definition of the op
 * and its derivative. Rows are tokens: activations are [T][width] row-major,
 * weights [rows = out][cols = in] as in model/forward.c.
 *
 * Backward functions ADD into their gradient outputs unless they say they
 * write them (callers zero what they accumulate), so that residual branches
 * and the q/k/v fan-out sum their contributions for free.
 */
#ifndef SPQR_TRAIN_OPS_H
#define SPQR_TRAIN_OPS_H

#include "train.h"

/* ---- RMSNorm: out = w * x / sqrt(mean(x^2) + eps), per row of n ---------- */

/* out[T][n] and rinv[T] = 1/sqrt(mean(x^2) + eps), with spqr_rmsnorm's order
 * of operations (the same float results). */
void spqr_rmsnorm_fwd(float *out, float *rinv, const float *x, const float *w, int T, int n, float eps);
/* dx += dL/dx (dx may be NULL), dw += dL/dw (dw may be NULL), given dy. */
void spqr_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rinv, int T,
                      int n);
void spqr_rmsnorm_fwd_ref(double *out, double *rinv, const double *x, const double *w, int T, int n, double eps);
void spqr_rmsnorm_bwd_ref(double *dx, double *dw, const double *dy, const double *x, const double *w, int T, int n,
                          double eps);

/* ---- RoPE ------------------------------------------------------------------ */

/* The forward rotation is spqr_rope_apply (model.h). Its backward is the
 * transpose: the rotation of v[T][stride] (n_heads heads) in place by
 * -angle, with the tables of spqr_rope_tables (row t for token t). */
void spqr_rope_bwd(const spqr_config *c, float *v, int T, int n_heads, int stride, const float *cosv,
                   const float *sinv);
/* The double twin of both directions: dir = +1 rotates by +angle (the
 * forward), dir = -1 by -angle (the backward); tables [T][head_dim/2]. */
void spqr_rope_ref(const spqr_config *c, double *v, int T, int n_heads, int stride, const double *cosv,
                   const double *sinv, int dir);

/* ---- causal grouped-query attention of one sequence --------------------------
 * Q[T][n_heads*hd] and K, V[T][n_kv_heads*hd] (after RoPE), query head h
 * reads kv head h / (n_heads / n_kv_heads), scores scaled by 1/sqrt(hd),
 * token t attends to 0..t. Out/dO [T][n_heads*hd].
 *
 * Memory: the probabilities P are not kept; the backward recomputes them per
 * head (with the forward's own code, so the same floats) in a scratch of
 * 2 x T x T floats per thread (P and dP). Both run OpenMP over query heads. */
spqr_status spqr_attn_fwd(const spqr_config *c, const float *Q, const float *K, const float *V, int T, float *Out);
/* Writes dQ[T][qd], dK[T][kvd] and dV[T][kvd] (dK/dV summed over the query
 * heads that share a kv head: each head computes its share, then the shares
 * of a group are added). */
spqr_status spqr_attn_bwd(const spqr_config *c, const float *Q, const float *K, const float *V, const float *dO, int T,
                          float *dQ, float *dK, float *dV);
/* Scratch floats the backward takes with nthreads threads (for memory
 * reports): 2 T^2 per thread, plus 2 T n_heads hd for the per-query-head
 * shares of dK/dV when n_heads > n_kv_heads. */
size_t spqr_attn_bwd_scratch(const spqr_config *c, int T, int nthreads);
spqr_status spqr_attn_fwd_ref(const spqr_config *c, const double *Q, const double *K, const double *V, int T,
                              double *Out);
spqr_status spqr_attn_bwd_ref(const spqr_config *c, const double *Q, const double *K, const double *V,
                              const double *dO, int T, double *dQ, double *dK, double *dV);

/* ---- SwiGLU: out = silu(g) * u, silu(g) = g * sigmoid(g) ------------------- */

void spqr_swiglu_fwd(float *out, const float *g, const float *u, size_t n);
/* Writes dg and du (dg may alias dout). */
void spqr_swiglu_bwd(float *dg, float *du, const float *dout, const float *g, const float *u, size_t n);
void spqr_swiglu_fwd_ref(double *out, const double *g, const double *u, size_t n);
void spqr_swiglu_bwd_ref(double *dg, double *du, const double *dout, const double *g, const double *u, size_t n);

/* ---- linear: Y[T][rows] = X[T][cols] W^T (+ bias) -------------------------- */

void spqr_lin_fwd(float *Y, const float *X, const float *W, const float *bias, int T, int rows, int cols);
/* dX += dY W (dX may be NULL), dW += dY^T X (dW may be NULL); no bias grad. */
void spqr_lin_bwd(float *dX, float *dW, const float *dY, const float *X, const float *W, int T, int rows, int cols);
void spqr_lin_fwd_ref(double *Y, const double *X, const double *W, const double *bias, int T, int rows, int cols);
void spqr_lin_bwd_ref(double *dX, double *dW, const double *dY, const double *X, const double *W, int T, int rows,
                      int cols);

/* ---- the whole block in double precision (block_ref.c) ----------------------
 * The same function as spqr_tblock_forward, built from the _ref ops; RoPE
 * uses spqr_rope_tables' float32 tables (widened), so the float and double
 * blocks compute the same mathematical function. No tape: the backward
 * recomputes the forward. */
typedef struct spqr_tblock_ref {
    const double *attn_norm, *ffn_norm;
    const double *W[SPQR_LIN_PER_BLOCK];
    const double *bias[SPQR_LIN_PER_BLOCK];
} spqr_tblock_ref;
typedef struct spqr_tgrads_ref {
    double *attn_norm, *ffn_norm;
    double *W[SPQR_LIN_PER_BLOCK];
} spqr_tgrads_ref;

spqr_status spqr_tblock_forward_ref(const spqr_config *c, const spqr_tblock_ref *b, const double *X, int nseq, int T1,
                                    double *Y);
/* Adds into the non-NULL arrays of g and writes dX when non-NULL. */
spqr_status spqr_tblock_backward_ref(const spqr_config *c, const spqr_tblock_ref *b, const double *X, int nseq,
                                     int T1, const double *dY, double *dX, spqr_tgrads_ref *g);

#endif
