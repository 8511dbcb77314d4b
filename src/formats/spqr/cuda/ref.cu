/* ref.cu - the CUDA-core reference kernel: one thread per (row, token),
 * float32 weights exactly as qlayer.h defines them (decoded by gpu_layout.h,
 * the same functions the CPU test checks), double accumulation. Reads the
 * fast and the generic layout; slow, for tests and the generic layout. */
#include <cuda_runtime.h>

#include "formats/spqr/cuda/kernels.cuh"

/* dequantized weight (row r, permuted column j) of the fast layout */
__device__ float deq_fast(const DevLayer &L, int r, int j) {
    return spqr_gpu_fast_weight(geom(L), reinterpret_cast<const uint32_t *>(L.codes), L.stats,
                                reinterpret_cast<const uint32_t *>(L.stats2), r, j);
}
/* CUDA-core reference: one thread per (row, token), double accumulation */
__global__ void k_ref(DevLayer L, const float *__restrict__ X, float *__restrict__ Y) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int n = blockIdx.y;
    if (r >= L.rows) return;
    const float *x = X + (size_t)n * L.cols;
    double acc = 0.0;
    if (L.fast) {
        for (int j = 0; j < L.cols; j++) acc += (double)deq_fast(L, r, j) * (double)__ldg(x + __ldg(L.perm + j));
        const int tile = r >> SPQR_GPU_TILE_LOG2, lr = r & (TILE_ROWS - 1);
        for (int q = 0; q < L.nquads; q++) {
            const uint32_t e0 = L.ol_off[(size_t)tile * L.nquads + q], e1 = L.ol_off[(size_t)tile * L.nquads + q + 1];
            for (uint32_t e = e0; e < e1; e++) {
                const uint32_t en = L.ol[e];
                if (spqr_gpu_ol_row(en) != lr) continue;
                const int col = q * QCOLS + spqr_gpu_ol_col(en);
                acc += (double)h2f(en >> 16) * (double)__ldg(x + __ldg(L.perm + col));
            }
        }
    } else {
        int gi = -1; /* the statistics of group gi, read once per group */
        float s = 0.f, z = 0.f;
        for (int j = 0; j < L.cols; j++) {
            if (j / L.beta1 != gi) {
                gi = j / L.beta1;
                const float2 sz = L.gstats[spqr_gpu_generic_stat_index(geom(L), r, gi)];
                s = sz.x;
                z = sz.y;
            }
            const float w = s * ((float)L.gcodes[spqr_gpu_generic_code_index(geom(L), r, j)] - z); /* = spqr_gpu_generic_weight */
            acc += (double)w * (double)__ldg(x + __ldg(L.perm + j));
        }
        for (uint32_t k = L.grow[r]; k < L.grow[r + 1]; k++)
            acc += (double)L.gval[k] * (double)__ldg(x + __ldg(L.perm + L.gcol[k]));
    }
    Y[(size_t)n * L.rows + r] = (float)acc;
}


void ref_launch(const DevLayer &L, const float *X, int T, float *Y) {
    k_ref<<<dim3((L.rows + 127) / 128, T), 128>>>(L, X, Y);
}
