/* reduce.cuh - warp and block reductions shared by the CUDA kernels (the
 * GPU forward pass, model/gpu, and the block trainer, train/cuda). Every
 * thread of the warp / block gets the result. */
#ifndef SPQR_REDUCE_CUH
#define SPQR_REDUCE_CUH

#include <math.h>

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Block-wide reductions (blockDim.x a multiple of 32, <= 1024); red holds
 * one value per warp. */
template <typename T, typename W>
static __device__ T block_reduce(T v, T *red, T neutral, W warp_op) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_op(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : neutral;
    return warp_op(v);
}
static __device__ __forceinline__ float block_sum(float v, float *red) {
    return block_reduce(v, red, 0.0f, [](float x) { return warp_sum(x); });
}
static __device__ __forceinline__ float block_max(float v, float *red) {
    return block_reduce(v, red, -INFINITY, [](float x) { return warp_max(x); });
}
static __device__ __forceinline__ double block_sum_d(double v, double *red) {
    return block_reduce(v, red, 0.0, [](double x) { return warp_sum_d(x); });
}

#endif
