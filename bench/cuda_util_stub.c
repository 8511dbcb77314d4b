/* cuda_util_stub.c - the benchmark GPU helpers (cuda_util.h) for builds
 * without nvcc: every call fails with SPQR_ERR_NO_DEVICE. */
#include "cuda_util.h"

#include "util/common.h"

static spqr_status no_cuda(void) { return spqr_fail(SPQR_ERR_NO_DEVICE, "built without CUDA"); }

spqr_status spqr_bench_fill_normal(float *dptr, size_t n, uint64_t seed) {
    (void)dptr; (void)n; (void)seed;
    return no_cuda();
}
spqr_status spqr_bench_timer_new(spqr_bench_timer **t) {
    if (t) *t = NULL;
    return no_cuda();
}
void spqr_bench_timer_free(spqr_bench_timer *t) { (void)t; }
spqr_status spqr_bench_timer_start(spqr_bench_timer *t) {
    (void)t;
    return no_cuda();
}
spqr_status spqr_bench_timer_stop(spqr_bench_timer *t, float *ms) {
    (void)t;
    if (ms) *ms = 0;
    return no_cuda();
}
spqr_status spqr_bench_copy_bandwidth(size_t bytes, int reps, double *memcpy_gbs,
                                     double *kernel_gbs) {
    (void)bytes; (void)reps;
    if (memcpy_gbs) *memcpy_gbs = 0;
    if (kernel_gbs) *kernel_gbs = 0;
    return no_cuda();
}
