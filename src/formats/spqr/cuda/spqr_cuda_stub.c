/* spqr_cuda_stub.c - the CUDA API for builds without nvcc: everything fails
 * with SPQR_ERR_NO_DEVICE ("built without CUDA"). */
#include "formats/spqr/cuda/spqr_cuda.h"

#include <string.h>

#include "util/common.h"

static spqr_status no_cuda(void) {
    return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA");
}

spqr_status spqr_cuda_available(char *name, size_t n) {
    if (name && n) name[0] = 0;
    return no_cuda();
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
spqr_status spqr_cuda_malloc(void **dptr, size_t bytes) {
    (void)bytes;
    if (dptr) *dptr = NULL;
    return no_cuda();
}
void spqr_cuda_free(void *dptr) { (void)dptr; }
spqr_status spqr_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes) {
    (void)dst; (void)src; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes) {
    (void)dst; (void)src; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes) {
    (void)dst; (void)src; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_memset(void *dptr, int value, size_t bytes) {
    (void)dptr; (void)value; (void)bytes;
    return no_cuda();
}
spqr_status spqr_cuda_synchronize(void) { return no_cuda(); }
spqr_status spqr_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return no_cuda();
}
spqr_status spqr_cuda_dense_gemm(int dtype, const void *dW, const void *dX, void *dY, int rows,
                                 int cols, int n_tok) {
    (void)dtype; (void)dW; (void)dX; (void)dY; (void)rows; (void)cols; (void)n_tok;
    return no_cuda();
}
spqr_status spqr_cuda_f32_to_f16(const float *dsrc, uint16_t *ddst, size_t n) {
    (void)dsrc; (void)ddst; (void)n;
    return no_cuda();
}
spqr_status spqr_cuda_fill_normal(float *dptr, size_t n, uint64_t seed) {
    (void)dptr; (void)n; (void)seed;
    return no_cuda();
}
spqr_status spqr_cuda_timer_new(spqr_cuda_timer **t) {
    if (t) *t = NULL;
    return no_cuda();
}
void spqr_cuda_timer_free(spqr_cuda_timer *t) { (void)t; }
spqr_status spqr_cuda_timer_start(spqr_cuda_timer *t) {
    (void)t;
    return no_cuda();
}
spqr_status spqr_cuda_timer_stop(spqr_cuda_timer *t, float *ms) {
    (void)t;
    if (ms) *ms = 0;
    return no_cuda();
}
spqr_status spqr_cuda_copy_bandwidth(size_t bytes, int reps, double *memcpy_gbs,
                                     double *kernel_gbs) {
    (void)bytes; (void)reps;
    if (memcpy_gbs) *memcpy_gbs = 0;
    if (kernel_gbs) *kernel_gbs = 0;
    return no_cuda();
}
