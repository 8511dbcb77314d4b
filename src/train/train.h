/* train.h - exact float32 training of one LLaMA block (issue 13).
 *
 * The engine differentiates one transformer block exactly as the forward
 * pass (model/forward.c) computes it: RMSNorm -> q/k/v -> RoPE -> causal
 * grouped-query attention -> o -> residual -> RMSNorm -> gate/up -> SwiGLU ->
 * down -> residual. The block is seen as dense float32 weights (a quantized
 * layer is dequantized by its format; the chain rule from dL/dW to the
 * format's trainable parameters is the format's train_grad, qformat.h).
 *
 * Each op has a scalar reference twin in double precision (train_ops.h);
 * tests check every op and the whole block against double-precision finite
 * differences, and the float32 ops against their references.
 *
 * The block tuner (tune.c) drives it: AdamW (adamw.h) over the trainable
 * parameters of the block's layers and optionally its RMSNorm weights, MSE
 * between the block's output on the compressed stream and the fp block's
 * output on the fp stream.
 */
#ifndef SPQR_TRAIN_H
#define SPQR_TRAIN_H

#include "../model/model.h"

/* A block as dense float32 tensors: what forward/backward compute with. */
typedef struct spqr_tblock {
    const float *attn_norm, *ffn_norm;     /* [dim]                         */
    const float *W[SPQR_LIN_PER_BLOCK];    /* [rows][cols] (spqr_linear_shapes) */
    const float *bias[SPQR_LIN_PER_BLOCK]; /* [rows] or NULL (not trained)  */
} spqr_tblock;

/* Gradients; backward ADDS into every non-NULL array (callers zero them). */
typedef struct spqr_tgrads {
    float *attn_norm, *ffn_norm;  /* [dim]                                  */
    float *W[SPQR_LIN_PER_BLOCK]; /* [rows][cols]                           */
} spqr_tgrads;

/* What the forward keeps for the backward of nseq sequences of T1 tokens. */
typedef struct spqr_ttape spqr_ttape;
spqr_status spqr_ttape_new(const spqr_config *c, int nseq, int T1, spqr_ttape **out);
void spqr_ttape_free(spqr_ttape *t); /* accepts NULL */
/* Bytes a tape of this size holds (for memory reports). */
size_t spqr_ttape_bytes(const spqr_config *c, int nseq, int T1);
/* Bytes spqr_tblock_backward allocates for its own use while it runs (the
 * gradients of the activations and the attention scratch of every thread). */
size_t spqr_tblock_work_bytes(const spqr_config *c, int nseq, int T1);

/* Y[nseq*T1][dim] = block(X) for nseq independent sequences at positions
 * 0..T1-1 (X and Y may not alias); tape (sized for at least nseq x T1, or
 * NULL for a forward only) keeps what backward needs. Matches
 * spqr_block_forward within float32 rounding. */
spqr_status spqr_tblock_forward(const spqr_config *c, const spqr_tblock *b, const float *X, int nseq, int T1,
                                float *Y, spqr_ttape *tape);
/* Backward of the last forward recorded in tape: given dY (dL/dY), add the
 * parameter gradients into g and write dX (dL/dX) when dX != NULL. */
spqr_status spqr_tblock_backward(const spqr_config *c, const spqr_tblock *b, const spqr_ttape *tape,
                                 const float *dY, float *dX, spqr_tgrads *g);

#endif
