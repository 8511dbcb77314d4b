/* spqr_cuda_stub.c - the CUDA API for builds without nvcc: everything fails
 * with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#include "formats/spqr/cuda/spqr_cuda.h"

#include <string.h>

#include "util/common.h"

static spqr_status no_cuda(void) {
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}

spqr_status spqr_cuda_qlinear_upload(const struct spqr_qlayer *q, spqr_cuda_qlinear **out) {
    (void)q;
    if (out) *out = NULL;
    return no_cuda();
}
spqr_status spqr_cuda_qlinear_clone(const spqr_cuda_qlinear *w, spqr_cuda_qlinear **out) {
    (void)w;
    if (out) *out = NULL;
    return no_cuda();
}
void spqr_cuda_qlinear_free(spqr_cuda_qlinear *w) { (void)w; }
void spqr_cuda_qlinear_get_info(const spqr_cuda_qlinear *w, spqr_cuda_qlinear_info *info) {
    (void)w;
    if (info) memset(info, 0, sizeof *info);
}
spqr_status spqr_cuda_qgemm(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY) {
    (void)W; (void)dX; (void)n_tok; (void)dY;
    return no_cuda();
}
spqr_status spqr_cuda_qgemm_ex(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY,
                               const spqr_cuda_qgemm_opts *opts) {
    (void)W; (void)dX; (void)n_tok; (void)dY; (void)opts;
    return no_cuda();
}
int spqr_cuda_qgemm_auto_split(const spqr_cuda_qlinear *W, int n_tok) {
    (void)W; (void)n_tok;
    return 0;
}
