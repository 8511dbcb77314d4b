/* gpu_model_stub.c - the GPU runtime API for builds without nvcc: everything
 * fails with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#include "model/gpu/gpu_model.h"

#include "util/common.h"

static spqr_status no_cuda(void) { return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA"); }

spqr_status spqr_gpu_model_new(const spqr_model *m, spqr_gpu_model **out) {
    (void)m;
    if (out) *out = NULL;
    return no_cuda();
}
void spqr_gpu_model_free(spqr_gpu_model *g) { (void)g; }
size_t spqr_gpu_model_bytes(const spqr_gpu_model *g) {
    (void)g;
    return 0;
}
spqr_status spqr_gpu_forward(spqr_gpu_model *g, const int32_t *tokens, int nseq, int T, float *host_logits) {
    (void)g; (void)tokens; (void)nseq; (void)T; (void)host_logits;
    return no_cuda();
}
spqr_status spqr_gpu_eval_nll(spqr_gpu_model *g, const int32_t *ids, size_t n_ids, int S, spqr_ppl_result *res) {
    (void)g; (void)ids; (void)n_ids; (void)S; (void)res;
    return no_cuda();
}
spqr_status spqr_gpu_session_new(spqr_gpu_model *g, spqr_gpu_session **out) {
    (void)g;
    if (out) *out = NULL;
    return no_cuda();
}
void spqr_gpu_session_free(spqr_gpu_session *s) { (void)s; }
spqr_status spqr_gpu_session_step(spqr_gpu_session *s, int32_t token, const float **logits) {
    (void)s; (void)token;
    if (logits) *logits = NULL;
    return no_cuda();
}
int spqr_gpu_session_pos(const spqr_gpu_session *s) {
    (void)s;
    return 0;
}
spqr_status spqr_gpu_tree_score(spqr_gpu_model *g, const struct spqr_tree_batch *b, double *logp, uint8_t *greedy) {
    (void)g; (void)b; (void)logp; (void)greedy;
    return no_cuda();
}
