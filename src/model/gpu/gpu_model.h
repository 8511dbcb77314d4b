/* gpu_model.h - the whole LLaMA forward pass on the GPU (plain C API).
 *
 * spqr_gpu_model_new uploads a loaded model once: packed (SpQR) linears
 * through spqr_cuda_qlinear_upload, dense linears, the embedding table, the
 * norms and the RoPE tables as float32. The forward pass then runs entirely
 * on the device and computes what src/model/forward.c computes (RMSNorm,
 * RoPE of either layout, causal grouped-query attention, SwiGLU, residuals,
 * final norm, head), up to float rounding.
 *
 * Builds without CUDA link gpu_model_stub.c: every function fails with
 * SPQR_ERR_NO_DEVICE ("built without CUDA"). SPQR_ERR_NO_DEVICE also means
 * "no usable device" or "too little GPU memory"; callers may fall back to the
 * CPU path on that status. One device (the current one), the legacy default
 * stream; a handle must not be used by several threads at once.
 */
#ifndef SPQR_GPU_MODEL_H
#define SPQR_GPU_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "spqr.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spqr_gpu_model spqr_gpu_model;

/* Upload m (which must outlive nothing: the GPU copy is independent of m
 * after this returns). Fails with SPQR_ERR_NO_DEVICE when no device is
 * usable or "model needs X GiB on the GPU, Y GiB free". *out owned by
 * caller, release with spqr_gpu_model_free. */
spqr_status spqr_gpu_model_new(const spqr_model *m, spqr_gpu_model **out);
void spqr_gpu_model_free(spqr_gpu_model *g); /* accepts NULL */

/* Device bytes held by the uploaded weights. */
size_t spqr_gpu_model_bytes(const spqr_gpu_model *g);

/* Forward of nseq independent sequences of T tokens each (positions
 * 0..T-1), tokens[nseq*T]. host_logits (may be NULL: compute only) receives
 * [nseq*T][vocab] floats. Synchronizes. */
spqr_status spqr_gpu_forward(spqr_gpu_model *g, const int32_t *tokens, int nseq, int T, float *host_logits);

/* Perplexity over tokenized ids (ids[0] = BOS) with the protocol of
 * spqr_eval_tokens: windows of S tokens from the start, S-1 targets each,
 * remainder dropped, nll summed in double. Fills every field of *res
 * (tokens_total = n_ids, seconds = time of this call). Logits stay on the
 * device. */
spqr_status spqr_gpu_eval_nll(spqr_gpu_model *g, const int32_t *ids, size_t n_ids, int S, spqr_ppl_result *res);

/* KV-cached incremental decoding on the device. */
typedef struct spqr_gpu_session spqr_gpu_session;
spqr_status spqr_gpu_session_new(spqr_gpu_model *g, spqr_gpu_session **out);
void spqr_gpu_session_free(spqr_gpu_session *s); /* accepts NULL */
/* Feed one token at the next position; *logits (borrowed host memory, vocab
 * floats) stays valid until the next call. */
spqr_status spqr_gpu_session_step(spqr_gpu_session *s, int32_t token, const float **logits);
int spqr_gpu_session_pos(const spqr_gpu_session *s);

/* Zero-shot scoring of a packed prefix-tree batch (model/forward_tree.h):
 * the same results as spqr_tree_score on the CPU up to float rounding;
 * logits stay on the device. */
struct spqr_tree_batch;
spqr_status spqr_gpu_tree_score(spqr_gpu_model *g, const struct spqr_tree_batch *b, double *logp, uint8_t *greedy);

#ifdef __cplusplus
}
#endif
#endif /* SPQR_GPU_MODEL_H */
