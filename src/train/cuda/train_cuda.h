/* train_cuda.h - the forward with a tape and the exact float32 backward of
 * one LLaMA block (train.h) on the GPU (issue 13, item 5). Plain C API, no
 * CUDA types.
 *
 * A spqr_tblock_gpu holds, on the device: float32 copies of a block's dense
 * weights (7 linears, their biases when present, the two RMSNorm weights),
 * gradient buffers of the same shapes, a tape (what spqr_tblock_forward keeps:
 * x, xn1, q, k, v, att, h, xn2, g, u, s, the inverse RMS norms, the RoPE
 * tables) and the backward's workspace (activation gradients, the attention
 * probabilities P and dP of every head of one sequence). The computation is
 * the CPU engine's (block.c / ops.c): the same ops in the same order, cuBLAS
 * SGEMM (plain fp32, no TF32) for the linears and the attention products,
 * small kernels for the rest, P recomputed in the backward. Results agree
 * with spqr_tblock_forward/backward to float32 rounding (summation orders
 * differ), see tests/test_cuda_train.c.
 *
 * Builds without CUDA link train_cuda_stub.c: every function fails with
 * SPQR_ERR_UNSUPPORTED ("built without CUDA"). SPQR_ERR_NO_DEVICE means no
 * usable device or too little GPU memory. One device (the current one), the
 * legacy default stream; a handle must not be used by several threads at
 * once. Not wired into the tuner (tune.c) yet.
 */
#ifndef SPQR_TRAIN_CUDA_H
#define SPQR_TRAIN_CUDA_H

#include <stddef.h>

#include "train/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spqr_tblock_gpu spqr_tblock_gpu;

/* Device bytes a handle for windows of up to nseq x T1 tokens takes
 * (weights, gradients, tape, workspace), 0 on overflow. */
size_t spqr_tblock_gpu_bytes(const spqr_config *c, int nseq, int T1);

/* A handle for windows of up to nseq sequences of up to T1 tokens (the
 * product nseq*T1 bounds the tokens of a window, T1 its sequence length).
 * Allocates everything up front; fails with SPQR_ERR_NO_DEVICE when no
 * device is usable or the free device memory is less than
 * spqr_tblock_gpu_bytes. The weights are undefined until set_weights. */
spqr_status spqr_tblock_gpu_new(const spqr_config *c, int nseq, int T1, spqr_tblock_gpu **out);
void spqr_tblock_gpu_free(spqr_tblock_gpu *g); /* accepts NULL */

/* Upload all weights of b (the norms, the 7 linears, the biases that are
 * non-NULL; a NULL bias removes an earlier one). */
spqr_status spqr_tblock_gpu_set_weights(spqr_tblock_gpu *g, const spqr_tblock *b);
/* Re-upload linear k's weights W[rows][cols] (spqr_linear_shapes), e.g.
 * after an optimizer step changed them; the bias stays. */
spqr_status spqr_tblock_gpu_set_linear(spqr_tblock_gpu *g, int k, const float *W);
/* Re-upload the RMSNorm weights; a NULL one stays as it is. */
spqr_status spqr_tblock_gpu_set_norms(spqr_tblock_gpu *g, const float *attn_norm, const float *ffn_norm);

/* Y_host[nseq*T1][dim] = block(X_host), as spqr_tblock_forward; the tape
 * stays on the device for the next backward. */
spqr_status spqr_tblock_gpu_forward(spqr_tblock_gpu *g, const float *X_host, int nseq, int T1, float *Y_host);
/* Backward of the last forward, as spqr_tblock_backward: given dY_host, ADD
 * the parameter gradients into the non-NULL arrays of g_host (NULL ones are
 * not computed) and write dX_host when non-NULL. */
spqr_status spqr_tblock_gpu_backward(spqr_tblock_gpu *g, const float *dY_host, float *dX_host, spqr_tgrads *g_host);

#ifdef __cplusplus
}
#endif
#endif /* SPQR_TRAIN_CUDA_H */
