/* fragment.cuh - decoding a lane's staged codes and statistics into mma
 * operands: code pairs to half2 (raw 1024 + sigma*c fields or exact integers),
 * first-level statistics to float32 (batch 1) or half2 (batch T). Where each
 * value sits is defined in gpu_layout.h. */
#ifndef SPQR_CUDA_FRAGMENT_CUH
#define SPQR_CUDA_FRAGMENT_CUH

#include "formats/spqr/cuda/device_layout.cuh"
#include "formats/spqr/cuda/ptx.cuh"

#define MAGIC16 0x64006400u /* half2(1024, 1024) */

/* word j (compile-time after unrolling) of a quad's code registers */
template <int B>
__device__ __forceinline__ uint32_t cword(const uint4 (&c)[B], int j) {
    const uint4 &v = c[j >> 2];
    return (j & 3) == 0 ? v.x : (j & 3) == 1 ? v.y : (j & 3) == 2 ? v.z : v.w;
}
/* (1024 + c * 2^K) -> c: plain subtraction for K = 0, else one exact FMA */
template <int K>
__device__ __forceinline__ uint32_t unbias(uint32_t v) {
    if (K == 0) return hsub2u(v, MAGIC16);
    const uint32_t sc = (uint32_t)(15 - K) << 10, off = 0x8000u | ((uint32_t)(25 - K) << 10);
    return hfma2u(v, sc | (sc << 16), off | (off << 16));
}
/* pair p of window wi as half2(1024 + sigma*c) ("raw"); *k = log2(sigma) */
template <int B>
__device__ __forceinline__ uint32_t pair_raw(const uint4 (&c)[B], int wi, int p, int *k) {
    if (B == 4) {
        const int r = p & 3;
        const uint32_t q = cword<B>(c, wi * 4 + (p >> 2));
        *k = (r >> 1) ? 4 : 0;
        return lop3_and_or((r & 1) ? q >> 8 : q, (r >> 1) ? 0x00f000f0u : 0x000f000fu, MAGIC16);
    } else if (B == 3) {
        const int l = spqr_gpu_b3_loc(p);
        if (l == SPQR_GPU_B3_SPREAD) {
            uint32_t v = lop3_and_or(cword<B>(c, wi * 3 + 0) >> 15, 0x00010001u, MAGIC16);
            v = lop3_and_or(cword<B>(c, wi * 3 + 1) >> 14, 0x00020002u, v);
            *k = 0;
            return lop3_and_or(cword<B>(c, wi * 3 + 2) >> 13, 0x00040004u, v);
        }
        const uint32_t q = cword<B>(c, wi * 3 + (l >> 3));
        const int s = l & 7;
        *k = spqr_gpu_b3_slot_k(s);
        const uint32_t src = s <= 1 ? q : s == 2 ? q >> 6 : q >> 9;
        return lop3_and_or(src, (s == 1 || s == 4) ? 0x00380038u : 0x00070007u, MAGIC16);
    } else if (B == 2) {
        const int l = spqr_gpu_b2_loc(p);
        const uint32_t q = cword<B>(c, wi * 2 + (l >> 3));
        const int s = l & 7;
        const int kk = spqr_gpu_b2_slot_k(s);
        *k = kk;
        const uint32_t src = s <= 2 ? q : s <= 4 ? q >> 6 : q >> 10;
        return lop3_and_or(src, 0x00030003u << kk, MAGIC16);
    } else {
        const uint32_t w = cword<B>(c, wi * 8 + p / 2);
        *k = 0;
        return prmt(w, 0x64646464u, (p & 1) ? 0x4341u : 0x4240u);
    }
}
__device__ __forceinline__ uint32_t unbias_k(uint32_t v, int k) {
    return k == 0 ? unbias<0>(v) : k == 2 ? unbias<2>(v) : k == 3 ? unbias<3>(v) : unbias<4>(v);
}
/* the 4 A registers of k-tile kt of window wi: raw (1024 + sigma*c) */
template <int B>
__device__ __forceinline__ void decode_raw(const uint4 (&c)[B], int wi, int kt, uint32_t (&a)[4]) {
    int k;
#pragma unroll
    for (int r = 0; r < 4; r++) a[r] = pair_raw<B>(c, wi, 4 * kt + r, &k);
}
/* the 4 A registers of k-tile kt of window wi: exact codes */
template <int B>
__device__ __forceinline__ void decode_kt(const uint4 (&c)[B], int wi, int kt, uint32_t (&a)[4]) {
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int k;
        const uint32_t v = pair_raw<B>(c, wi, 4 * kt + r, &k);
        a[r] = unbias_k(v, k);
    }
}

/* the 4-bit field of x at bit p as a float, exactly, without I2F */
__device__ __forceinline__ float u2f4(uint32_t x, int p) {
    return __uint_as_float(lop3_and_or(x >> p, 15u, 0x4b000000u)) - 8388608.f;
}

/* first-level statistics (scale, -zero) of row half h (rows g / g+8), group
 * grp of the lane's quarter in window wi, in float32 (exact for BIL4, as
 * qlayer.h defines them; the device fp16 values otherwise) */
template <int SM, bool G8>
__device__ __forceinline__ float2 stats_f32(const uint32_t (&sr)[StatCfg<SM, G8>::SW], const uint2 *s2q, int wi,
                                            int grp, int h) {
    if (SM == SM_BIL4) {
        const uint32_t x = sr[spqr_gpu_bil4_word(G8, wi)];
        const int base = spqr_gpu_bil4_bit(G8, wi, grp, h);
        const uint2 q2 = s2q[G8 ? 2 * wi + grp : wi];
        const float2 z2 = __half22float2(*reinterpret_cast<const __half2 *>(&q2.x)); /* s2_zero, z2_zero */
        const float2 c2 = __half22float2(*reinterpret_cast<const __half2 *>(&q2.y)); /* s2_scale, -z2_scale */
        /* exact: the codes as floats through 2^23 + code, then as qlayer.h defines s and -z */
        const float sc = u2f4(x, base), zc = u2f4(x, base + 16);
        return make_float2(c2.x * (sc - z2.x), c2.y * (zc - z2.y));
    } else {
        const uint32_t v = sr[spqr_gpu_f16_word(G8, wi, grp, h)];
        return __half22float2(*reinterpret_cast<const __half2 *>(&v));
    }
}

/* (s, s) and (-s*z, -s*z) from a half2 (s, -z) */
__device__ __forceinline__ void stat_pair(uint32_t v, uint32_t &ss, uint32_t &nsz) {
    ss = prmt(v, v, 0x1010u);
    nsz = hmul2u(ss, prmt(v, v, 0x3232u));
}


#endif /* SPQR_CUDA_FRAGMENT_CUH */
