/* runtime.cu - device discovery and the runtime helpers of cuda_rt.h:
 * memory, copies, synchronization, the cuBLAS dense product, fp16
 * conversion. */
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

#include "kernels/cuda/runtime.cuh"
#include "kernels/cuda/cuda_rt.h"

/* ---- small kernels ------------------------------------------------------- */

__global__ void k_f32_to_f16(const float *__restrict__ s, __half *__restrict__ d, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = __float2half_rn(s[i]);
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
