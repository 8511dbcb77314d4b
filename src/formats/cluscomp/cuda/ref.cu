/* ref.cu - the simple kernels of ClusComp layers: the CUDA-core reference
 * (one thread per output, the definition of cluscomp.h read directly from
 * the chunked stream, double sums), the fp16 dequantization of a row range
 * for the cuBLAS path, and two small helpers (fp16 -> fp32 scatter, the sum
 * of column-slice partials). */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include <algorithm>

#include "formats/cluscomp/cuda/cc_kernels.cuh"

namespace spqr_cc {

/* Y[t][r] = sum_j C[idx(r / d, j)][r % d] * X[t][j], double accumulation */
__global__ void k_cc_ref(const DevLayer L, const float *__restrict__ X, float *__restrict__ Y) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= L.rows) return;
    const int b = r / L.d, k = r - b * L.d;
    const float *x = X + (size_t)t * L.cols;
    double acc = 0.0;
    for (int j = 0; j < L.cols; j++) {
        const uint32_t id = field_at(L.idx, L.nchunks, L.ibits, b, j);
        acc += (double)__half2float(L.cb[(size_t)id * L.d + k]) * (double)__ldg(x + j);
    }
    Y[(size_t)t * L.rows + r] = (float)acc;
}

cudaError_t ref_launch(const DevLayer &L, const float *X, int T, float *Y) {
    for (int t0 = 0; t0 < T; t0 += 65535) {
        const int tn = std::min(T - t0, 65535);
        k_cc_ref<<<dim3((L.rows + 127) / 128, tn), 128>>>(L, X + (size_t)t0 * L.cols, Y + (size_t)t0 * L.rows);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

/* W16[r - r0][j] = C[idx(r / d, j)][r % d] for r0 <= r < r0 + rc */
__global__ void k_cc_dequant16(const DevLayer L, int r0, int rc, __half *__restrict__ W) {
    const size_t total = (size_t)rc * L.cols;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        const int rr = (int)(e / L.cols), j = (int)(e - (size_t)rr * L.cols);
        const int r = r0 + rr, b = r / L.d, k = r - b * L.d;
        const uint32_t id = field_at(L.idx, L.nchunks, L.ibits, b, j);
        W[e] = L.cb[(size_t)id * L.d + k];
    }
}

cudaError_t dequant16_launch(const DevLayer &L, int r0, int rc, __half *W16) {
    const size_t total = (size_t)rc * L.cols;
    const unsigned blocks = (unsigned)std::min<size_t>((total + 255) / 256, 132 * 32);
    k_cc_dequant16<<<blocks, 256>>>(L, r0, rc, W16);
    return cudaGetLastError();
}

__global__ void k_cc_scatter16(const __half *__restrict__ Y16, int T, int rc, int r0, int rows, float *__restrict__ Y) {
    const size_t total = (size_t)T * rc;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(e / rc), r = (int)(e - (size_t)t * rc);
        Y[(size_t)t * rows + r0 + r] = __half2float(Y16[e]);
    }
}

cudaError_t scatter16_launch(const __half *Y16, int T, int rc, int r0, int rows, float *Y) {
    const size_t total = (size_t)T * rc;
    const unsigned blocks = (unsigned)std::min<size_t>((total + 255) / 256, 132 * 16);
    k_cc_scatter16<<<blocks, 256>>>(Y16, T, rc, r0, rows, Y);
    return cudaGetLastError();
}

__global__ void k_cc_ksum(const float *__restrict__ ws, int kg, int tt, int rows, int t0, float *__restrict__ Y) {
    const size_t total = (size_t)tt * rows;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int k = 0; k < kg; k++) s += ws[(size_t)k * total + e];
        Y[(size_t)t0 * rows + e] = s;
    }
}

cudaError_t ksum_launch(const float *ws, int kg, int tt, int rows, int t0, float *Y) {
    const size_t total = (size_t)tt * rows;
    const unsigned blocks = (unsigned)std::min<size_t>((total + 255) / 256, 132 * 16);
    k_cc_ksum<<<blocks, 256>>>(ws, kg, tt, rows, t0, Y);
    return cudaGetLastError();
}

} // namespace spqr_cc
