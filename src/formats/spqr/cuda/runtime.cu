/* runtime.cu - device discovery and the runtime helpers of spqr_cuda.h:
 * memory, copies, synchronization, the cuBLAS dense baseline, conversion and
 * random fills, event timers, the copy-bandwidth probe (and their small
 * kernels). */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "formats/spqr/cuda/runtime.cuh"
#include "formats/spqr/cuda/spqr_cuda.h"

/* ---- small kernels ------------------------------------------------------- */

__global__ void k_f32_to_f16(const float *__restrict__ s, __half *__restrict__ d, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = __float2half_rn(s[i]);
}

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

/* ---- device --------------------------------------------------------------- */

spqr_status cuda_fail(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    return spqr_fail(SPQR_ERR_NO_DEVICE, "CUDA: %s: %s", what, cudaGetErrorString(e));
}

std::mutex g_mu;
static int g_dev_ok = -1; /* -1 unknown, 0 none, 1 ok */
cudaDeviceProp g_prop;

spqr_status dev_init(void) {
    if (g_dev_ok == 1) return SPQR_OK;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        g_dev_ok = 0;
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return spqr_fail(SPQR_ERR_NO_DEVICE, "no CUDA device: %s", cudaGetErrorString(e));
        }
        return spqr_fail(SPQR_ERR_NO_DEVICE, "no CUDA device");
    }
    int dev = 0;
    CK(cudaGetDevice(&dev), "cudaGetDevice");
    CK(cudaGetDeviceProperties(&g_prop, dev), "cudaGetDeviceProperties");
    if (g_prop.major * 10 + g_prop.minor < 80)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "CUDA device %s is sm_%d%d; sm_80 or newer is needed",
                         g_prop.name, g_prop.major, g_prop.minor);
    g_dev_ok = 1;
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_available(char *name, size_t n) {
    if (name && n) name[0] = 0;
    std::lock_guard<std::mutex> lk(g_mu);
    spqr_status st = dev_init();
    if (st != SPQR_OK) return st;
    if (name && n)
        snprintf(name, n, "%s (%.1f GiB, sm_%d%d, %d SMs)", g_prop.name,
                 g_prop.totalGlobalMem / 1073741824.0, g_prop.major, g_prop.minor,
                 g_prop.multiProcessorCount);
    return SPQR_OK;
}

/* ---- runtime helpers ------------------------------------------------------- */

extern "C" spqr_status spqr_cuda_malloc(void **dptr, size_t bytes) {
    *dptr = NULL;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        spqr_status st = dev_init();
        if (st != SPQR_OK) return st;
    }
    cudaError_t e = cudaMalloc(dptr, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *dptr = NULL;
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cudaMalloc of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
    }
    return SPQR_OK;
}
extern "C" void spqr_cuda_free(void *dptr) {
    if (dptr) cudaFree(dptr);
}
extern "C" spqr_status spqr_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes) {
    CK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "memcpy host to device");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes) {
    CK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "memcpy device to host");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes) {
    CK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "memcpy device to device");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_memset(void *dptr, int value, size_t bytes) {
    CK(cudaMemset(dptr, value, bytes), "memset");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_synchronize(void) {
    CK(cudaDeviceSynchronize(), "synchronize");
    CK(cudaGetLastError(), "asynchronous error");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    size_t f = 0, t = 0;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        spqr_status st = dev_init();
        if (st != SPQR_OK) return st;
    }
    CK(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    const char *lim = getenv("SPQR_GPU_MEMORY_MIB");
    if (lim && *lim) {
        char *end = NULL;
        double mib = strtod(lim, &end);
        if (end != lim && *end == 0 && mib >= 0 && mib * 1048576.0 < (double)f) f = (size_t)(mib * 1048576.0);
    }
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return SPQR_OK;
}

static cublasHandle_t g_cublas;

static const char *cublas_msg(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
    }
}

extern "C" spqr_status spqr_cuda_dense_gemm(int dtype, const void *dW, const void *dX, void *dY,
                                            int rows, int cols, int n_tok) {
    if (rows < 1 || cols < 1 || n_tok < 0 || !dW || !dX || !dY)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "dense_gemm: bad arguments");
    if (n_tok == 0) return SPQR_OK;
    std::lock_guard<std::mutex> lk(g_mu);
    spqr_status st = dev_init();
    if (st != SPQR_OK) return st;
    if (!g_cublas) {
        cublasStatus_t s = cublasCreate(&g_cublas);
        if (s != CUBLAS_STATUS_SUCCESS) {
            g_cublas = NULL;
            return spqr_fail(SPQR_ERR_NO_DEVICE, "cublasCreate: %s", cublas_msg(s));
        }
    }
    const float one = 1.f, zero = 0.f;
    cublasStatus_t s;
    /* column-major view: Y^T (rows x n) = W^T^T ... : op(A)=T with A = W as (cols x rows) */
    if (dtype == SPQR_CUDA_F32)
        s = cublasSgemm(g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n_tok, cols, &one, (const float *)dW, cols,
                        (const float *)dX, cols, &zero, (float *)dY, rows);
    else if (dtype == SPQR_CUDA_F16)
        s = cublasGemmEx(g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n_tok, cols, &one, dW, CUDA_R_16F, cols, dX,
                         CUDA_R_16F, cols, &zero, dY, CUDA_R_16F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        return spqr_fail(SPQR_ERR_INVALID_ARG, "dense_gemm: unknown dtype %d", dtype);
    if (s != CUBLAS_STATUS_SUCCESS) return spqr_fail(SPQR_ERR_NO_DEVICE, "cuBLAS gemm: %s", cublas_msg(s));
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_f32_to_f16(const float *dsrc, uint16_t *ddst, size_t n) {
    if (!n) return SPQR_OK;
    k_f32_to_f16<<<(unsigned)std::min<size_t>((n + 255) / 256, 65535), 256>>>(dsrc, (__half *)ddst, n);
    CK(cudaGetLastError(), "f32_to_f16 launch");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_fill_normal(float *dptr, size_t n, uint64_t seed) {
    if (!n) return SPQR_OK;
    k_fill_normal<<<(unsigned)std::min<size_t>((n + 255) / 256, 65535), 256>>>(dptr, n, seed);
    CK(cudaGetLastError(), "fill_normal launch");
    return SPQR_OK;
}

struct spqr_cuda_timer {
    cudaEvent_t a, b;
};
extern "C" spqr_status spqr_cuda_timer_new(spqr_cuda_timer **t) {
    if (!t) return spqr_fail(SPQR_ERR_INVALID_ARG, "timer: NULL");
    *t = NULL;
    spqr_cuda_timer *x = (spqr_cuda_timer *)calloc(1, sizeof *x);
    if (!x) return spqr_fail(SPQR_ERR_NOMEM, "timer");
    cudaError_t e = cudaEventCreate(&x->a);
    if (e == cudaSuccess) e = cudaEventCreate(&x->b);
    if (e != cudaSuccess) {
        free(x);
        return cuda_fail(e, "cudaEventCreate");
    }
    *t = x;
    return SPQR_OK;
}
extern "C" void spqr_cuda_timer_free(spqr_cuda_timer *t) {
    if (!t) return;
    cudaEventDestroy(t->a);
    cudaEventDestroy(t->b);
    free(t);
}
extern "C" spqr_status spqr_cuda_timer_start(spqr_cuda_timer *t) {
    CK(cudaEventRecord(t->a, 0), "cudaEventRecord");
    return SPQR_OK;
}
extern "C" spqr_status spqr_cuda_timer_stop(spqr_cuda_timer *t, float *ms) {
    CK(cudaEventRecord(t->b, 0), "cudaEventRecord");
    CK(cudaEventSynchronize(t->b), "cudaEventSynchronize");
    CK(cudaEventElapsedTime(ms, t->a, t->b), "cudaEventElapsedTime");
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_copy_bandwidth(size_t bytes, int reps, double *memcpy_gbs, double *kernel_gbs) {
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
    const int grid = g_prop.multiProcessorCount * 8;
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
    if (e != cudaSuccess) return cuda_fail(e, "copy bandwidth");
    std::sort(tm.begin(), tm.end());
    std::sort(tk.begin(), tk.end());
    if (memcpy_gbs) *memcpy_gbs = 2.0 * bytes / (tm[(size_t)reps / 2] * 1e-3) / 1e9;
    if (kernel_gbs) *kernel_gbs = 2.0 * bytes / (tk[(size_t)reps / 2] * 1e-3) / 1e9;
    return SPQR_OK;
}
