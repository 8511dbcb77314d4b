/* cuda_util.cu - GPU helpers for the benchmarks and the CUDA tests (see
 * cuda_util.h). */
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#include "cuda_util.h"
#include "kernels/cuda/cuda_rt.h"

extern "C" {
#include "util/common.h"
}

static spqr_status bench_cuda_fail(cudaError_t e, const char *what) {
    (void)cudaGetLastError();
    return spqr_fail(SPQR_ERR_NO_DEVICE, "CUDA: %s: %s", what, cudaGetErrorString(e));
}
#define BCK(call, what)                                          \
    do {                                                         \
        cudaError_t e_ = (call);                                 \
        if (e_ != cudaSuccess) return bench_cuda_fail(e_, what); \
    } while (0)

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
__global__ void k_fill_normal(float *__restrict__ d, size_t n, uint64_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint64_t h = splitmix64(seed * 0x100000001B3ull + i);
        const float u1 = ((float)(h >> 40) + 1.0f) * (1.0f / 16777217.0f);
        const float u2 = (float)((h >> 16) & 0xffffffu) * (1.0f / 16777216.0f);
        d[i] = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    }
}
__global__ void k_copy(const uint4 *__restrict__ s, uint4 *__restrict__ d, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = s[i];
}


extern "C" spqr_status spqr_bench_fill_normal(float *dptr, size_t n, uint64_t seed) {
    if (!n) return SPQR_OK;
    k_fill_normal<<<(unsigned)std::min<size_t>((n + 255) / 256, 65535), 256>>>(dptr, n, seed);
    BCK(cudaGetLastError(), "fill_normal launch");
    return SPQR_OK;
}

struct spqr_bench_timer {
    cudaEvent_t a, b;
};
extern "C" spqr_status spqr_bench_timer_new(spqr_bench_timer **t) {
    if (!t) return spqr_fail(SPQR_ERR_INVALID_ARG, "timer: NULL");
    *t = NULL;
    spqr_bench_timer *x = (spqr_bench_timer *)calloc(1, sizeof *x);
    if (!x) return spqr_fail(SPQR_ERR_NOMEM, "timer");
    cudaError_t e = cudaEventCreate(&x->a);
    if (e == cudaSuccess) e = cudaEventCreate(&x->b);
    if (e != cudaSuccess) {
        free(x);
        return bench_cuda_fail(e, "cudaEventCreate");
    }
    *t = x;
    return SPQR_OK;
}
extern "C" void spqr_bench_timer_free(spqr_bench_timer *t) {
    if (!t) return;
    cudaEventDestroy(t->a);
    cudaEventDestroy(t->b);
    free(t);
}
extern "C" spqr_status spqr_bench_timer_start(spqr_bench_timer *t) {
    BCK(cudaEventRecord(t->a, 0), "cudaEventRecord");
    return SPQR_OK;
}
extern "C" spqr_status spqr_bench_timer_stop(spqr_bench_timer *t, float *ms) {
    BCK(cudaEventRecord(t->b, 0), "cudaEventRecord");
    BCK(cudaEventSynchronize(t->b), "cudaEventSynchronize");
    BCK(cudaEventElapsedTime(ms, t->a, t->b), "cudaEventElapsedTime");
    return SPQR_OK;
}

extern "C" spqr_status spqr_bench_copy_bandwidth(size_t bytes, int reps, double *memcpy_gbs, double *kernel_gbs) {
    if (reps < 1) reps = 1;
    bytes &= ~(size_t)15;
    if (!bytes) return spqr_fail(SPQR_ERR_INVALID_ARG, "copy_bandwidth: zero bytes");
    void *a = NULL, *b = NULL;
    spqr_status st = spqr_cuda_malloc(&a, bytes);
    if (st != SPQR_OK) return st;
    st = spqr_cuda_malloc(&b, bytes);
    if (st != SPQR_OK) {
        cudaFree(a);
        return st;
    }
    cudaMemset(a, 1, bytes);
    cudaMemset(b, 0, bytes);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> tm((size_t)reps), tk((size_t)reps);
    const size_t n4 = bytes / 16;
    int sms = 0, dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int grid = (sms > 0 ? sms : 1) * 8;
    for (int i = -2; i < reps; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (i >= 0) cudaEventElapsedTime(&tm[(size_t)i], e0, e1);
        cudaEventRecord(e0, 0);
        k_copy<<<grid, 512>>>((const uint4 *)a, (uint4 *)b, n4);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (i >= 0) cudaEventElapsedTime(&tk[(size_t)i], e0, e1);
    }
    cudaError_t e = cudaGetLastError();
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    if (e != cudaSuccess) return bench_cuda_fail(e, "copy bandwidth");
    std::sort(tm.begin(), tm.end());
    std::sort(tk.begin(), tk.end());
    if (memcpy_gbs) *memcpy_gbs = 2.0 * bytes / (tm[(size_t)reps / 2] * 1e-3) / 1e9;
    if (kernel_gbs) *kernel_gbs = 2.0 * bytes / (tk[(size_t)reps / 2] * 1e-3) / 1e9;
    return SPQR_OK;
}
