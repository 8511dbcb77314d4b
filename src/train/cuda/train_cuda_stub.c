/* train_cuda_stub.c - the GPU block training API (train_cuda.h) for builds
 * without nvcc: everything fails with SPQR_ERR_UNSUPPORTED ("built without
 * CUDA"). */
#include "train/cuda/train_cuda.h"

#include "util/common.h"

static spqr_status no_cuda(void) { return spqr_fail(SPQR_ERR_UNSUPPORTED, "built without CUDA"); }

size_t spqr_tblock_gpu_bytes(const spqr_config *c, int nseq, int T1) {
    (void)c; (void)nseq; (void)T1;
    return 0;
}
spqr_status spqr_tblock_gpu_new(const spqr_config *c, int nseq, int T1, spqr_tblock_gpu **out) {
    (void)c; (void)nseq; (void)T1;
    if (out) *out = NULL;
    return no_cuda();
}
void spqr_tblock_gpu_free(spqr_tblock_gpu *g) { (void)g; }
spqr_status spqr_tblock_gpu_set_weights(spqr_tblock_gpu *g, const spqr_tblock *b) {
    (void)g; (void)b;
    return no_cuda();
}
spqr_status spqr_tblock_gpu_set_linear(spqr_tblock_gpu *g, int k, const float *W) {
    (void)g; (void)k; (void)W;
    return no_cuda();
}
spqr_status spqr_tblock_gpu_set_norms(spqr_tblock_gpu *g, const float *attn_norm, const float *ffn_norm) {
    (void)g; (void)attn_norm; (void)ffn_norm;
    return no_cuda();
}
spqr_status spqr_tblock_gpu_forward(spqr_tblock_gpu *g, const float *X_host, int nseq, int T1, float *Y_host) {
    (void)g; (void)X_host; (void)nseq; (void)T1; (void)Y_host;
    return no_cuda();
}
spqr_status spqr_tblock_gpu_backward(spqr_tblock_gpu *g, const float *dY_host, float *dX_host, spqr_tgrads *g_host) {
    (void)g; (void)dY_host; (void)dX_host; (void)g_host;
    return no_cuda();
}
