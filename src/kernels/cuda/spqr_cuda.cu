/* spqr_cuda.cu - CUDA kernels for SpQR-compressed linear layers.
 * The GPU layout and the kernel design are described in spqr_cuda.h. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

extern "C" {
#include "quant/qlayer.h"
#include "util/common.h"
}
#include "kernels/cuda/spqr_cuda.h"

/* ======================================================================== */
/* Geometry and constants                                                    */
/* ======================================================================== */

#define K1_WARPS 8                      /* batch-1 kernel: warps per block   */
#define K2_WARPS 8                      /* token-tile kernel                 */
#define K1_CHUNK_BYTES (16 * 32 * 8 + 16 * 4 * 4 + 256 * 4) /* B fragments, group sums, fp32 x */
#define K1_XPLAIN (16 * 32 * 8 + 16 * 4 * 4)     /* offset of the fp32 permuted x of the chunk */
#define OL_CAP 64 /* outliers of a (tile, chunk) staged in shared memory; more are read directly */
#define K2_KT_BYTES 256                 /* per (k-tile, n8 tile): fp16 B fragment */
#define MAGIC16 0x64006400u             /* half2(1024, 1024)                 */

struct DevLayer {
    int rows, cols, rows_pad, cols_pad, ntiles, nchunks, ngroups, ngroups_pad, nsb;
    int beta1, beta2, nrb, wbits, bits, sbits, zbits, pb, wpl, bilevel;
    const uint4 *codes;
    const uint32_t *stats;
    const uint2 *stats2;
    const uint32_t *ol_off; /* outlier buckets: [ntiles * nchunks + 1] prefix offsets */
    const uint32_t *ol;     /* entries: pcol-in-chunk | row-in-tile << 8 | fp16 value << 16 */
    const int32_t *perm;
};

struct Pass {
    const float *X;           /* token t0 of the input, [T][cols]          */
    int T;                    /* tokens in this pass                       */
    const unsigned char *xp;  /* prep output                               */
    float *Y;                 /* token t0 of the output, [T][rows]         */
    float *ws;                /* split-K partials [nsplit][T][rows_pad]    */
    unsigned *cnt;            /* split-K arrival counters [row blocks]     */
};

struct spqr_cuda_qlinear {
    DevLayer L;
    void *dbuf;
    size_t bytes;
    size_t b_codes, b_stats, b_stats2, b_ol, b_perm;
    int64_t n_ol;
};

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* Position of code (k-tile kc of the chunk, ri, e) inside a lane's words.
 * Returns the word and bit; for B=3, P=15 returns word = -1 (split code). */
__host__ __device__ static inline void code_pos(int B, int kc, int ri, int e, int *word, int *bit) {
    switch (B) {
    case 4:
        *word = kc;
        *bit = 4 * ri + 16 * e;
        break;
    case 2: {
        int s = 4 * (kc & 1) + ri;
        *word = kc >> 1;
        *bit = 2 * s + 16 * e;
        break;
    }
    case 3: {
        int q = kc >> 2, P = 4 * (kc & 3) + ri;
        if (P == 15) {
            *word = -1;
            *bit = 3 * q; /* base word */
        } else {
            *word = 3 * q + P / 5;
            *bit = 3 * (P % 5) + 16 * e;
        }
        break;
    }
    default: /* 8 */
        *word = 2 * kc + (ri >> 1);
        *bit = 8 * (2 * (ri & 1) + e);
        break;
    }
}

/* ======================================================================== */
/* Device helpers                                                            */
/* ======================================================================== */

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ uint32_t hsub2u(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ uint32_t hfma2u(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else /* sm_75: two m16n8k8 */
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[2]), "r"(a[3]), "r"(b1));
#endif
}
/* d = A*B (accumulator starts at zero) */
__device__ __forceinline__ void mma16816_z(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    d[0] = d[1] = d[2] = d[3] = 0.f;
    mma16816(d, a, b0, b1);
}
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
#else
    *reinterpret_cast<uint4 *>(smem) = __ldcg(reinterpret_cast<const uint4 *>(gmem));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;");
#endif
}
__device__ __forceinline__ void grid_dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float h2f(uint32_t bits16) {
    return __half2float(__ushort_as_half((unsigned short)(bits16 & 0xffffu)));
}
__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
    __half ha = __float2half_rn(a), hb = __float2half_rn(b);
    return (uint32_t)__half_as_ushort(ha) | ((uint32_t)__half_as_ushort(hb) << 16);
}
/* x = hi + lo with hi = fp16(x), lo = fp16(x - hi) */
__device__ __forceinline__ void split_pair(float a, float b, uint32_t *hi, uint32_t *lo) {
    __half ha = __float2half_rn(a), hb = __float2half_rn(b);
    *hi = (uint32_t)__half_as_ushort(ha) | ((uint32_t)__half_as_ushort(hb) << 16);
    *lo = pack_half2(a - __half2float(ha), b - __half2float(hb));
}

/* word i (compile-time) of a lane's chunk registers */
template <int BITS>
__device__ __forceinline__ uint32_t cw(const uint4 (&c)[BITS], int i) {
    const uint4 &v = c[i >> 2];
    return (i & 3) == 0 ? v.x : (i & 3) == 1 ? v.y : (i & 3) == 2 ? v.z : v.w;
}

/* Decode the A fragment (4 x half2 of exact integer codes) of k-tile kt. */
template <int BITS>
__device__ __forceinline__ void decode_kt(const uint4 (&c)[BITS], int kt, uint32_t (&a)[4]) {
    if (BITS == 4) {
        const uint32_t q = cw<BITS>(c, kt);
        const uint32_t q8 = q >> 8;
        a[0] = hsub2u(lop3_and_or(q, 0x000f000fu, MAGIC16), MAGIC16);
        a[1] = hfma2u(lop3_and_or(q, 0x00f000f0u, MAGIC16), 0x2c002c00u, 0xd400d400u);
        a[2] = hsub2u(lop3_and_or(q8, 0x000f000fu, MAGIC16), MAGIC16);
        a[3] = hfma2u(lop3_and_or(q8, 0x00f000f0u, MAGIC16), 0x2c002c00u, 0xd400d400u);
    } else if (BITS == 2) {
        const uint32_t q = cw<BITS>(c, kt >> 1);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int s = 4 * (kt & 1) + i;
            const int sh = s < 5 ? s : s - 5;
            const uint32_t src = s < 5 ? q : (q >> 10);
            const uint32_t v = lop3_and_or(src, 0x00030003u << (2 * sh), MAGIC16);
            if (sh == 0) a[i] = hsub2u(v, MAGIC16);
            else if (sh == 1) a[i] = hfma2u(v, 0x34003400u, 0xdc00dc00u);
            else if (sh == 2) a[i] = hfma2u(v, 0x2c002c00u, 0xd400d400u);
            else if (sh == 3) a[i] = hfma2u(v, 0x24002400u, 0xcc00cc00u);
            else a[i] = hfma2u(v, 0x1c001c00u, 0xc400c400u);
        }
    } else if (BITS == 3) {
        const int base = 3 * (kt >> 2);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int P = 4 * (kt & 3) + i;
            if (P == 15) {
                uint32_t t = lop3_and_or(cw<BITS>(c, base) >> 15, 0x00010001u, MAGIC16);
                t = lop3_and_or(cw<BITS>(c, base + 1) >> 14, 0x00020002u, t);
                t = lop3_and_or(cw<BITS>(c, base + 2) >> 13, 0x00040004u, t);
                a[i] = hsub2u(t, MAGIC16);
            } else {
                const uint32_t w = cw<BITS>(c, base + P / 5);
                const int i5 = P % 5;
                const int sh = i5 < 3 ? i5 : i5 - 3;
                const uint32_t src = i5 < 3 ? w : (w >> 9);
                const uint32_t v = lop3_and_or(src, 0x00070007u << (3 * sh), MAGIC16);
                if (sh == 0) a[i] = hsub2u(v, MAGIC16);
                else if (sh == 1) a[i] = hfma2u(v, 0x30003000u, 0xd800d800u);
                else a[i] = hfma2u(v, 0x24002400u, 0xcc00cc00u);
            }
        }
    } else { /* 8 */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t w = cw<BITS>(c, 2 * kt + (i >> 1));
            a[i] = hsub2u(prmt(w, 0x64u, (i & 1) ? 0x4342u : 0x4140u), MAGIC16);
        }
    }
}


/* ---- first/second-level statistics of one window (4 groups) ------------ */
struct RowCtx {
    size_t rb0, rb1; /* stats2 row offsets (rb * ngroups_pad) of rows g, g+8 */
};
struct WinPre {
    uint32_t w0, w1;
    uint2 q0, q1;
};

__device__ __forceinline__ RowCtx row_ctx(const DevLayer &L, int tile, int lane) {
    RowCtx rc;
    rc.rb0 = rc.rb1 = 0;
    if (L.bilevel) {
        const int r0 = tile * 16 + (lane >> 2);
        rc.rb0 = (size_t)min(r0 / L.beta2, L.nrb - 1) * L.ngroups_pad;
        rc.rb1 = (size_t)min((r0 + 8) / L.beta2, L.nrb - 1) * L.ngroups_pad;
    }
    return rc;
}
/* exact float of a small unsigned integer (< 2^23) without I2F */
__device__ __forceinline__ float u2f(uint32_t v) { return __uint_as_float(v | 0x4b000000u) - 8388608.f; }
__device__ __forceinline__ void pair_stats(const DevLayer &L, uint32_t pair, uint2 q, float &s,
                                           float &nz) {
    if (L.bilevel) {
        const uint32_t sc = pair & ((1u << L.sbits) - 1u);
        const uint32_t zc = (pair >> L.sbits) & ((1u << L.zbits) - 1u);
        const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&q.x));
        const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&q.y));
        s = a.x * (u2f(sc) - a.y);
        nz = -(b.x * (u2f(zc) - b.y));
    } else {
        s = h2f(pair);
        nz = -h2f(pair >> 16);
    }
}

/* (scale, -zero) of rows g and g+8 for group 4W + (lane & 3) */
__device__ __forceinline__ void win_decode(const DevLayer &L, const WinPre &p, int W, float &s0,
                                           float &nz0, float &s1, float &nz1) {
    const int w8 = W & 7;
    const int off = 2 * w8 * L.pb;
    const uint64_t v = ((((uint64_t)p.w1) << 32) | p.w0) >> (off & 31);
    const uint64_t m = (L.pb >= 32) ? 0xffffffffull : ((1ull << L.pb) - 1ull);
    const uint32_t p0 = (uint32_t)(v & m), p1 = (uint32_t)((v >> L.pb) & m);
    pair_stats(L, p0, p.q0, s0, nz0);
    pair_stats(L, p1, p.q1, s1, nz1);
}

/* ---- outliers ------------------------------------------------------------ */
__device__ __forceinline__ void ol_decode(uint32_t e, int &row, int &pin, float &val) {
    pin = (int)(e & 255u);
    row = (int)((e >> 8) & 15u);
    val = h2f(e >> 16);
}

/* ---- split-K: partial results, the last block of a row block reduces ---- */
__device__ void split_finish(const DevLayer &L, const Pass &P, int T, int row0, int BM) {
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned old = atomicAdd(&P.cnt[blockIdx.x], 1u);
        s_last = (old == gridDim.y - 1);
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const int nrow = min(BM, L.rows - row0);
    const int ns = gridDim.y;
    for (int idx = threadIdx.x; idx < T * nrow; idx += blockDim.x) {
        const int t = idx / nrow, r = row0 + idx % nrow;
        float s = 0.f;
        for (int sp = 0; sp < ns; sp++) s += __ldcg(&P.ws[((size_t)sp * T + t) * L.rows_pad + r]);
        P.Y[(size_t)t * L.rows + r] = s;
    }
    if (threadIdx.x == 0) P.cnt[blockIdx.x] = 0;
}

/* ======================================================================== */
/* Prep kernels: gather X in permuted order, split into hi/lo fp16 B         */
/* fragments, per-half-k-tile sums.                                          */
/* ======================================================================== */

/* batch 1: mma columns n = 2*gi + plane for the 4 groups of a window */
__global__ void __launch_bounds__(256) k_prep1(DevLayer L, const float *__restrict__ X,
                                               unsigned char *__restrict__ out) {
    grid_dep_launch();
    const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int kt = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (kt >= L.cols_pad / 16) return;
    const int ktw = L.beta1 >> 2;
    const int W = kt / ktw;
    const int gi0 = (kt * 16) / L.beta1 - 4 * W, gi1 = (kt * 16 + 8) / L.beta1 - 4 * W;
    const int k = kt * 16 + 2 * tq;
    float x[4];
    const int ks[4] = {k, k + 1, k + 8, k + 9};
#pragma unroll
    for (int i = 0; i < 4; i++) x[i] = ks[i] < L.cols ? __ldg(X + __ldg(L.perm + ks[i])) : 0.f;
    const int plane = g & 1, gi = g >> 1;
    uint32_t h0, l0, h1, l1;
    split_pair(x[0], x[1], &h0, &l0);
    split_pair(x[2], x[3], &h1, &l1);
    uint2 b;
    b.x = (gi == gi0) ? (plane ? l0 : h0) : 0u;
    b.y = (gi == gi1) ? (plane ? l1 : h1) : 0u;
    unsigned char *base = out + (size_t)(kt >> 4) * K1_CHUNK_BYTES;
    const int kc = kt & 15;
    reinterpret_cast<uint2 *>(base)[kc * 32 + lane] = b;
    float p0 = x[0] + x[1], p1 = x[2] + x[3];
    p0 += __shfl_xor_sync(0xffffffffu, p0, 1);
    p0 += __shfl_xor_sync(0xffffffffu, p0, 2);
    p1 += __shfl_xor_sync(0xffffffffu, p1, 1);
    p1 += __shfl_xor_sync(0xffffffffu, p1, 2);
    if (g == 0) {
        float *zb = reinterpret_cast<float *>(base + 16 * 32 * 8);
        zb[kc * 4 + tq] = (gi0 == tq ? p0 : 0.f) + (gi1 == tq ? p1 : 0.f);
        float *xpl = reinterpret_cast<float *>(base + K1_XPLAIN) + kc * 16 + 2 * tq;
        xpl[0] = x[0];
        xpl[1] = x[1];
        xpl[8] = x[2];
        xpl[9] = x[3];
    }
}

/* batches: n8 tile nt holds tokens 8*nt .. 8*nt+7 as fp16 B fragments */
template <int NT>
__global__ void __launch_bounds__(256) k_prep2(DevLayer L, const float *__restrict__ X, int T,
                                               unsigned char *__restrict__ out) {
    grid_dep_launch();
    const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int idx = blockIdx.x * 8 + (threadIdx.x >> 5);
    const int kt = idx / NT, nt = idx % NT;
    if (kt >= L.cols_pad / 16) return;
    const int t = nt * 8 + g;
    const bool valid = t < T;
    const int k = kt * 16 + 2 * tq;
    const int ks[4] = {k, k + 1, k + 8, k + 9};
    float x[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
        x[i] = (valid && ks[i] < L.cols) ? __ldg(X + (size_t)t * L.cols + __ldg(L.perm + ks[i])) : 0.f;
    uint2 b;
    b.x = pack_half2(x[0], x[1]);
    b.y = pack_half2(x[2], x[3]);
    unsigned char *base =
        out + (size_t)(kt >> 4) * (16 * NT * K2_KT_BYTES) + ((kt & 15) * NT + nt) * K2_KT_BYTES;
    reinterpret_cast<uint2 *>(base)[lane] = b;
}

/* ======================================================================== */
/* Main kernels: an S-stage cp.async pipeline over chunks of 256 columns.    */
/* Stage layout (bytes): [X fragments: xb] then per warp [codes BITS*512]    */
/* [packed stats of the chunk's stat block: rw] [2nd-level stats: 256]; after */
/* the S stages, per warp nwmax windows x 32 lanes of decoded float4          */
/* (scale(row g), -zero(row g), scale(row g+8), -zero(row g+8)).              */
/* ======================================================================== */

struct Pipe {
    int S;        /* stages                                   */
    int stage;    /* bytes per stage                          */
    int xb;       /* X bytes per chunk                        */
    int pw;       /* per-warp bytes per stage                 */
    int rw;       /* raw stats bytes per warp (wpl * 128)     */
    int nwmax;    /* decoded windows per warp                 */
    int wsm;      /* offset of the decoded-window area        */
    int rb16;     /* every tile lies in one row block (beta2 % 16 == 0) */
    int olacc;    /* offset of the per-warp outlier sums [16][tm]        */
    int tm;       /* tokens per pass (outlier sums)                      */
};
/* per-warp stage layout: codes | packed stats (rw) | 2nd-level (256) | outliers (OL_CAP*4) */
#define PW_Q(Q) (BITS * 512 + (Q).rw)
#define PW_OL(Q) (BITS * 512 + (Q).rw + 256)

__device__ __forceinline__ void cp_async4(void *smem, const void *gmem) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem));
#else
    *reinterpret_cast<uint32_t *>(smem) = __ldg(reinterpret_cast<const uint32_t *>(gmem));
#endif
}

/* Outlier bucket offsets of chunks base .. base+32 of a tile: lane l holds
 * offset (base + l), `last` offset (base + 32). */
struct OlWin {
    int base;
    uint32_t lo, last;
};
__device__ __forceinline__ void olwin_load(const DevLayer &L, int tile, int lane, int base, OlWin &w) {
    const size_t o = (size_t)tile * L.nchunks;
    w.base = base;
    w.lo = __ldg(L.ol_off + o + min(base + lane, L.nchunks));
    w.last = __ldg(L.ol_off + o + min(base + 32, L.nchunks));
}
/* [start, end) of the bucket of chunk c (c >= w.base; reloads the window when needed) */
__device__ __forceinline__ void olwin_range(const DevLayer &L, int tile, int lane, int c, OlWin &w, uint32_t &start,
                                            uint32_t &end) {
    if (c - w.base >= 32) olwin_load(L, tile, lane, c, w);
    const int i = c - w.base;
    start = __shfl_sync(0xffffffffu, w.lo, i);
    const uint32_t e = __shfl_sync(0xffffffffu, w.lo, (i + 1) & 31);
    end = i + 1 < 32 ? e : w.last;
}

__device__ __forceinline__ void cp_async8(void *smem, const void *gmem) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(s), "l"(gmem));
#else
    *reinterpret_cast<uint2 *>(smem) = __ldg(reinterpret_cast<const uint2 *>(gmem));
#endif
}
__device__ __forceinline__ void cp_async_wait_stages(int S) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    if (S >= 3) asm volatile("cp.async.wait_group 1;" ::: "memory");
    else asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}

/* first and last window (4 groups) touching chunk c */
__device__ __forceinline__ void chunk_windows(const DevLayer &L, int c, int ktw, int &Wf, int &Wl) {
    Wf = (16 * c) / ktw;
    Wl = min((16 * c + 15) / ktw, L.ngroups_pad / 4 - 1);
}

/* one warp's weights of chunk c -> its part of a stage */
template <int BITS>
__device__ __forceinline__ void issue_weights(const DevLayer &L, const Pipe &Q, unsigned char *slot, int warp,
                                              int lane, int tile, int c, int ktw, OlWin &ow) {
    unsigned char *wb = slot + Q.xb + warp * Q.pw;
    {
        uint32_t o0, o1;
        olwin_range(L, tile, lane, c, ow, o0, o1);
        const int n = min((int)(o1 - o0), OL_CAP);
        for (int i = lane; i < n; i += 32) cp_async4(wb + PW_OL(Q) + i * 4, L.ol + o0 + i);
    }
    const uint4 *src = L.codes + ((size_t)tile * L.nchunks + c) * BITS * 32;
#pragma unroll
    for (int u = 0; u < BITS; u++) cp_async16(wb + (u * 32 + lane) * 16, src + u * 32 + lane);
    int Wf, Wl;
    chunk_windows(L, c, ktw, Wf, Wl);
    const int sb = Wf >> 3;
    const uint4 *rs = reinterpret_cast<const uint4 *>(L.stats + ((size_t)tile * L.nsb + sb) * L.wpl * 32);
    for (int i = lane; i < L.wpl * 8; i += 32) cp_async16(wb + BITS * 512 + i * 16, rs + i);
    if (L.bilevel && Q.rb16) {
        const int n = 4 * (Wl - Wf + 1);
        const int rbt = min(tile * 16 / L.beta2, L.nrb - 1);
        if (lane < n) cp_async8(wb + PW_Q(Q) + lane * 8, L.stats2 + (size_t)rbt * L.ngroups_pad + 4 * Wf + lane);
    }
}

__device__ __forceinline__ void issue_x(const Pipe &Q, const unsigned char *xp, unsigned char *slot, int c) {
    const uint4 *s = reinterpret_cast<const uint4 *>(xp + (size_t)c * Q.xb);
    uint4 *d = reinterpret_cast<uint4 *>(slot);
    for (int i = threadIdx.x; i < Q.xb / 16; i += blockDim.x) cp_async16(d + i, s + i);
}

/* decode the statistics of the windows touching chunk c (this lane's pairs) */
template <int BITS, bool H2, int NW>
__device__ __forceinline__ void decode_window1(const DevLayer &L, const Pipe &Q, const uint32_t *raw, const uint2 *qs,
                                               float4 *wsm, int lane, const RowCtx &rc, int W, int Wf);
/* NW > 0: exactly NW windows per chunk (unrolled) */
template <int BITS, bool H2, int NW = 0>
__device__ __forceinline__ void decode_windows(const DevLayer &L, const Pipe &Q, const unsigned char *slot,
                                               float4 *wsm, int warp, int lane, const RowCtx &rc, int c, int ktw) {
    const unsigned char *wb = slot + Q.xb + warp * Q.pw;
    const uint32_t *raw = reinterpret_cast<const uint32_t *>(wb + BITS * 512);
    const uint2 *qs = reinterpret_cast<const uint2 *>(wb + PW_Q(Q));
    int Wf, Wl;
    chunk_windows(L, c, ktw, Wf, Wl);
    if constexpr (NW > 0) {
        (void)Wl;
#pragma unroll
        for (int j = 0; j < NW; j++) decode_window1<BITS, H2, NW>(L, Q, raw, qs, wsm, lane, rc, Wf + j, Wf);
    } else {
        for (int W = Wf; W <= Wl; W++) decode_window1<BITS, H2, NW>(L, Q, raw, qs, wsm, lane, rc, W, Wf);
    }
    __syncwarp();
}
template <int BITS, bool H2, int NW>
__device__ __forceinline__ void decode_window1(const DevLayer &L, const Pipe &Q, const uint32_t *raw, const uint2 *qs,
                                               float4 *wsm, int lane, const RowCtx &rc, int W, int Wf) {
    {
        const int off = 2 * (W & 7) * L.pb;
        const int wi = off >> 5, wi1 = min(wi + 1, L.wpl - 1);
        WinPre p;
        p.w0 = raw[wi * 32 + lane];
        p.w1 = raw[wi1 * 32 + lane];
        if (L.bilevel) {
            if (Q.rb16) {
                p.q0 = p.q1 = qs[4 * (W - Wf) + (lane & 3)];
            } else {
                const int G = 4 * W + (lane & 3);
                p.q0 = __ldg(L.stats2 + rc.rb0 + G);
                p.q1 = __ldg(L.stats2 + rc.rb1 + G);
            }
        } else {
            p.q0 = p.q1 = make_uint2(0u, 0u);
        }
        float s0, nz0, s1, nz1;
        win_decode(L, p, W, s0, nz0, s1, nz1);
        if (H2) { /* half2 (s, s), (s*-z, s*-z) of rows g and g+8: w = s*c + s*-z in fp16 */
            uint4 h;
            h.x = pack_half2(s0, s0);
            h.y = pack_half2(s0 * nz0, s0 * nz0);
            h.z = pack_half2(s1, s1);
            h.w = pack_half2(s1 * nz1, s1 * nz1);
            reinterpret_cast<uint4 *>(wsm)[(W - Wf) * 32 + lane] = h;
        } else {
            wsm[(W - Wf) * 32 + lane] = make_float4(s0, nz0, s1, nz1);
        }
    }
}

/* batch 1: outliers of (tile, chunk c) added to the warp's row sums acc[16] in shared memory */
template <int BITS>
__device__ __forceinline__ void apply_outliers1(const DevLayer &L, const Pipe &Q, const unsigned char *slot,
                                                float *acc, const float *xpl, int warp, int lane, int tile, int c,
                                                OlWin &ow) {
    uint32_t o0, o1;
    olwin_range(L, tile, lane, c, ow, o0, o1);
    const int n = (int)(o1 - o0);
    const uint32_t *st = reinterpret_cast<const uint32_t *>(slot + Q.xb + warp * Q.pw + PW_OL(Q));
    for (int i = lane; i < n; i += 32) {
        const uint32_t e = i < OL_CAP ? st[i] : __ldg(L.ol + o0 + i);
        int row, pin;
        float val;
        ol_decode(e, row, pin, val);
        atomicAdd(acc + row, val * xpl[pin]);
    }
}
/* Outliers of (tile, chunk c): lane l owns row l & 15 and tokens
 * (l >> 4) * TH .. + TH - 1 and accumulates val * x into ol[] (deterministic).
 * xval(t, pin) returns x of token t at column pin of the chunk (permuted). */
template <int BITS, int TH, typename XF>
__device__ __forceinline__ void apply_outliers(const DevLayer &L, const Pipe &Q, const unsigned char *slot,
                                               float (&ol)[TH], int warp, int lane, int tile, int c, int T,
                                               OlWin &ow, XF xval) {
    uint32_t o0, o1;
    olwin_range(L, tile, lane, c, ow, o0, o1);
    const int n = (int)(o1 - o0);
    if (n == 0) return;
    const uint32_t *src = n <= OL_CAP ? reinterpret_cast<const uint32_t *>(slot + Q.xb + warp * Q.pw + PW_OL(Q))
                                      : L.ol + o0; /* overflow: read the bucket from global memory */
    const int r = lane & 15, t0 = (lane >> 4) * TH;
    if (t0 >= T) return;
    int l0 = 0, h0 = n, l1 = 0, h1 = n; /* lower bounds of rows r and r + 1, searched together */
    while (l0 < h0 || l1 < h1) {
        const int m0 = (l0 + h0) >> 1, m1 = (l1 + h1) >> 1;
        const int q0 = l0 < h0 ? (int)((src[m0] >> 8) & 15u) : 0, q1 = l1 < h1 ? (int)((src[m1] >> 8) & 15u) : 0;
        if (l0 < h0) {
            if (q0 < r) l0 = m0 + 1;
            else h0 = m0;
        }
        if (l1 < h1) {
            if (q1 < r + 1) l1 = m1 + 1;
            else h1 = m1;
        }
    }
    for (int i = l0; i < l1; i++) {
        int row, pin;
        float val;
        ol_decode(src[i], row, pin, val);
#pragma unroll
        for (int t = 0; t < TH; t++)
            if (t0 + t < T) ol[t] = fmaf(val, xval(t0 + t, pin), ol[t]);
    }
}

/* ---- batch 1 ------------------------------------------------------------ */
/* KTW: k-tiles per window of 4 groups known at compile time (4: beta1 = 16),
 * 0: any beta1 % 8 == 0 */
template <int BITS, int KTW>
__global__ void __launch_bounds__(K1_WARPS * 32, 3) k_gemv(DevLayer L, Pass P, Pipe Q) {
    constexpr int OLTM = 1, OLTH = 1;
    extern __shared__ __align__(16) unsigned char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int tile = blockIdx.x * K1_WARPS + warp;
    const bool active = tile < L.ntiles;
    const int split = blockIdx.y, nsplit = gridDim.y;
    const int cb = (int)((long long)L.nchunks * split / nsplit);
    const int ce = (int)((long long)L.nchunks * (split + 1) / nsplit);
    const int ktw = KTW ? KTW : (L.beta1 >> 2); /* k-tiles per window of 4 groups */
    int W = (cb * 16) / ktw;
    int left = ktw - (cb * 16 - W * ktw);
    const RowCtx rc = row_ctx(L, tile, lane);
    float4 *wsm = reinterpret_cast<float4 *>(smem + Q.wsm) + warp * Q.nwmax * 32;
    auto slot = [&](int i) { return smem + (size_t)i * Q.stage; };

    OlWin owi = {0, 0u, 0u}, owa = {0, 0u, 0u}; /* outlier windows: issuing, applying */
    float *olacc = reinterpret_cast<float *>(smem + Q.olacc) + warp * 16 * OLTM;
    float olr[OLTH];
#pragma unroll
    for (int t = 0; t < OLTH; t++) olr[t] = 0.f;
    if (active) {
        olwin_load(L, tile, lane, cb, owi);
        owa = owi;
        if (OLTH == 1 && lane < 16) olacc[lane] = 0.f;
    }
    for (int i = 0; i < Q.S - 1; i++)
        if (active && cb + i < ce) issue_weights<BITS>(L, Q, slot(i), warp, lane, tile, cb + i, ktw, owi);
    grid_dep_wait();
    for (int i = 0; i < Q.S - 1; i++) {
        if (cb + i < ce) issue_x(Q, P.xp, slot(i), cb + i);
        cp_async_commit();
    }

    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    float zx = 0.f, y0 = 0.f, y1 = 0.f;
    int jw = 0;
    for (int c = cb; c < ce; c++) {
        cp_async_wait_stages(Q.S);
        __syncthreads();
        const int cn = c + Q.S - 1;
        if (cn < ce) {
            unsigned char *sl = slot((cn - cb) % Q.S);
            if (active) issue_weights<BITS>(L, Q, sl, warp, lane, tile, cn, ktw, owi);
            issue_x(Q, P.xp, sl, cn);
        }
        cp_async_commit();
        if (!active) continue;
        const unsigned char *sl = slot((c - cb) % Q.S);
        decode_windows<BITS, false, (KTW == 4 ? 4 : 0)>(L, Q, sl, wsm, warp, lane, rc, c, ktw);
        apply_outliers1<BITS>(L, Q, sl, olacc, reinterpret_cast<const float *>(sl + K1_XPLAIN), warp, lane, tile, c,
                              owa);
        uint4 cur[BITS];
        const uint4 *cs = reinterpret_cast<const uint4 *>(sl + Q.xb + warp * Q.pw);
#pragma unroll
        for (int u = 0; u < BITS; u++) cur[u] = cs[u * 32 + lane];
        const uint2 *xb = reinterpret_cast<const uint2 *>(sl);
        const float *zb = reinterpret_cast<const float *>(sl + 16 * 32 * 8);
        if (KTW != 0 && 16 % (KTW ? KTW : 1) == 0) {
            /* windows aligned to the chunk: straight-line code, two mma chains */
            constexpr int K = KTW ? KTW : 1;
#pragma unroll
            for (int w = 0; w < 16 / K; w++) {
                float aA[4], aB[4];
                float z = 0.f;
#pragma unroll
                for (int j = 0; j < K; j++) {
                    const int kt = w * K + j;
                    uint32_t a[4];
                    decode_kt<BITS>(cur, kt, a);
                    const uint2 b = xb[kt * 32 + lane];
                    if (j == 0) mma16816_z(aA, a, b.x, b.y);
                    else if (j == 1) mma16816_z(aB, a, b.x, b.y);
                    else if (j & 1) mma16816(aB, a, b.x, b.y);
                    else mma16816(aA, a, b.x, b.y);
                    z += zb[kt * 4 + tq];
                }
                if (K == 1) aB[0] = aB[1] = aB[2] = aB[3] = 0.f;
                const float4 st = wsm[w * 32 + lane];
                y0 = fmaf(st.x, fmaf(st.y, z, (aA[0] + aA[1]) + (aB[0] + aB[1])), y0);
                y1 = fmaf(st.z, fmaf(st.w, z, (aA[2] + aA[3]) + (aB[2] + aB[3])), y1);
            }
            continue;
        }
        jw = W - (16 * c) / ktw;
#pragma unroll
        for (int kt = 0; kt < 16; kt++) {
            uint32_t a[4];
            decode_kt<BITS>(cur, kt, a);
            const uint2 b = xb[kt * 32 + lane];
            mma16816(acc, a, b.x, b.y);
            zx += zb[kt * 4 + tq];
            if (--left == 0) {
                const float4 st = wsm[jw * 32 + lane];
                y0 = fmaf(st.x, fmaf(st.y, zx, acc[0] + acc[1]), y0);
                y1 = fmaf(st.z, fmaf(st.w, zx, acc[2] + acc[3]), y1);
                acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
                zx = 0.f;
                left = ktw;
                W++;
                jw++;
            }
        }
    }
    if (KTW == 0 && active && left != ktw) { /* split ends inside a window (wsm holds the last chunk's windows) */
        const float4 st = wsm[jw * 32 + lane];
        y0 = fmaf(st.x, fmaf(st.y, zx, acc[0] + acc[1]), y0);
        y1 = fmaf(st.z, fmaf(st.w, zx, acc[2] + acc[3]), y1);
    }

    y0 += __shfl_xor_sync(0xffffffffu, y0, 1);
    y0 += __shfl_xor_sync(0xffffffffu, y0, 2);
    y1 += __shfl_xor_sync(0xffffffffu, y1, 1);
    y1 += __shfl_xor_sync(0xffffffffu, y1, 2);

    __syncwarp();
    if (active) {
        y0 += olacc[g];
        y1 += olacc[g + 8];
        const int r0 = tile * 16 + g, r1 = r0 + 8;
        if (tq == 0) {
            if (nsplit == 1) {
                if (r0 < L.rows) P.Y[r0] = y0;
                if (r1 < L.rows) P.Y[r1] = y1;
            } else {
                float *w = P.ws + (size_t)split * L.rows_pad;
                w[r0] = y0;
                w[r1] = y1;
            }
        }
    }
    if (nsplit > 1) split_finish(L, P, 1, blockIdx.x * K1_WARPS * 16, K1_WARPS * 16);
}

/* ---- token tiles (batches 2..32 per pass) -------------------------------- */
/* The codes are dequantized in registers, w = fp16(s) * c + fp16(s * -z) (one
 * HFMA2 per two weights), and multiplied with fp16 X by mma with fp32
 * accumulation: cuBLAS-fp16-like precision, no per-group epilogue.
 * B16: beta1 == 16 (group = k-tile, compile time); else any beta1 % 8 == 0. */
template <int BITS, int NT, bool B16>
__global__ void __launch_bounds__(K2_WARPS * 32) k_gemm(DevLayer L, Pass P, Pipe Q) {
    constexpr int OLTM = 8 * NT, OLTH = 4 * NT;
    extern __shared__ __align__(16) unsigned char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int tile = blockIdx.x * K2_WARPS + warp;
    const bool active = tile < L.ntiles;
    const int split = blockIdx.y, nsplit = gridDim.y;
    const int cb = (int)((long long)L.nchunks * split / nsplit);
    const int ce = (int)((long long)L.nchunks * (split + 1) / nsplit);
    const int T = P.T;
    const int ktw = B16 ? 4 : (L.beta1 >> 2);
    const int glh = L.beta1 >> 3; /* half k-tiles per group */
    int G = (cb * 32) / glh;      /* group of the next half k-tile */
    int left = glh - (cb * 32 - G * glh);
    const RowCtx rc = row_ctx(L, tile, lane);
    uint4 *wsm = reinterpret_cast<uint4 *>(smem + Q.wsm) + warp * Q.nwmax * 32;
    auto slot = [&](int i) { return smem + (size_t)i * Q.stage; };

    OlWin owi = {0, 0u, 0u}, owa = {0, 0u, 0u}; /* outlier windows: issuing, applying */
    float *olacc = reinterpret_cast<float *>(smem + Q.olacc) + warp * 16 * OLTM;
    float olr[OLTH];
#pragma unroll
    for (int t = 0; t < OLTH; t++) olr[t] = 0.f;
    if (active) {
        olwin_load(L, tile, lane, cb, owi);
        owa = owi;
    }
    for (int i = 0; i < Q.S - 1; i++)
        if (active && cb + i < ce) issue_weights<BITS>(L, Q, slot(i), warp, lane, tile, cb + i, ktw, owi);
    grid_dep_wait();
    for (int i = 0; i < Q.S - 1; i++) {
        if (cb + i < ce) issue_x(Q, P.xp, slot(i), cb + i);
        cp_async_commit();
    }

    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (int c = cb; c < ce; c++) {
        cp_async_wait_stages(Q.S);
        __syncthreads();
        const int cn = c + Q.S - 1;
        if (cn < ce) {
            unsigned char *sl = slot((cn - cb) % Q.S);
            if (active) issue_weights<BITS>(L, Q, sl, warp, lane, tile, cn, ktw, owi);
            issue_x(Q, P.xp, sl, cn);
        }
        cp_async_commit();
        if (!active) continue;
        const unsigned char *sl = slot((c - cb) % Q.S);
        decode_windows<BITS, true, (B16 ? 4 : 0)>(L, Q, sl, reinterpret_cast<float4 *>(wsm), warp, lane, rc, c, ktw);
        apply_outliers<BITS, OLTH>(L, Q, sl, olr, warp, lane, tile, c, T, owa, [&](int t, int pin) {
            const int kk = pin & 15;
            const int off = ((pin >> 4) * NT + (t >> 3)) * K2_KT_BYTES + ((t & 7) * 4 + ((kk & 7) >> 1)) * 8 +
                            (kk >> 3) * 4 + (kk & 1) * 2;
            return __half2float(*reinterpret_cast<const __half *>(sl + off));
        });
        const int Wf = (16 * c) / ktw;
        uint4 cur[BITS];
        const uint4 *cs = reinterpret_cast<const uint4 *>(sl + Q.xb + warp * Q.pw);
#pragma unroll
        for (int u = 0; u < BITS; u++) cur[u] = cs[u * 32 + lane];
#pragma unroll
        for (int kt = 0; kt < 16; kt++) {
            uint32_t a[4];
            decode_kt<BITS>(cur, kt, a);
            uint4 s0, s1; /* stats of the groups of the two halves of the k-tile */
            if (B16) {
                s0 = s1 = wsm[(kt >> 2) * 32 + g * 4 + (kt & 3)];
            } else {
                s0 = wsm[((G >> 2) - Wf) * 32 + g * 4 + (G & 3)];
                if (--left == 0) {
                    G++;
                    left = glh;
                }
                s1 = wsm[((G >> 2) - Wf) * 32 + g * 4 + (G & 3)];
                if (--left == 0) {
                    G++;
                    left = glh;
                }
            }
            a[0] = hfma2u(a[0], s0.x, s0.y); /* row g,   k < 8  */
            a[1] = hfma2u(a[1], s0.z, s0.w); /* row g+8, k < 8  */
            a[2] = hfma2u(a[2], s1.x, s1.y); /* row g,   k >= 8 */
            a[3] = hfma2u(a[3], s1.z, s1.w); /* row g+8, k >= 8 */
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const uint2 b = reinterpret_cast<const uint2 *>(sl + (kt * NT + n) * K2_KT_BYTES)[lane];
                mma16816(acc[n], a, b.x, b.y);
            }
        }
    }

#pragma unroll
    for (int t = 0; t < OLTH; t++) olacc[(lane & 15) * OLTM + (lane >> 4) * OLTH + t] = olr[t];
    __syncwarp();
    if (active) {
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int t = n * 8 + 2 * tq + j;
                if (t < T) {
                    acc[n][j] += olacc[g * OLTM + t];
                    acc[n][2 + j] += olacc[(g + 8) * OLTM + t];
                }
            }
        }
        const int r0 = tile * 16 + g, r1 = r0 + 8;
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int t = n * 8 + 2 * tq + j;
                if (t >= T) continue;
                if (nsplit == 1) {
                    if (r0 < L.rows) P.Y[(size_t)t * L.rows + r0] = acc[n][j];
                    if (r1 < L.rows) P.Y[(size_t)t * L.rows + r1] = acc[n][2 + j];
                } else {
                    float *w = P.ws + ((size_t)split * T + t) * L.rows_pad;
                    w[r0] = acc[n][j];
                    w[r1] = acc[n][2 + j];
                }
            }
        }
    }
    if (nsplit > 1) split_finish(L, P, T, blockIdx.x * K2_WARPS * 16, K2_WARPS * 16);
}

/* ======================================================================== */
/* Reference kernel (any beta1): one thread per (row, token)                 */
/* ======================================================================== */

__device__ uint32_t ref_code(const DevLayer &L, int r, int j) {
    const int tile = r >> 4, rr = r & 15, g = rr & 7, rh = rr >> 3;
    const int kt = j >> 4, kk = j & 15, chunk = kt >> 4, kc = kt & 15;
    const int h = kk >> 3, kin = kk & 7, tq = kin >> 1, e = kin & 1;
    const int lane = g * 4 + tq, ri = rh + 2 * h;
    const uint32_t *words = reinterpret_cast<const uint32_t *>(L.codes);
    const size_t cbase = ((size_t)tile * L.nchunks + chunk) * L.bits;
    auto word = [&](int w) -> uint32_t {
        return __ldg(words + ((cbase + (w >> 2)) * 32 + lane) * 4 + (w & 3));
    };
    int w, bit;
    code_pos(L.bits, kc, ri, e, &w, &bit);
    if (w < 0) {
        uint32_t c = 0;
        for (int b = 0; b < 3; b++) c |= ((word(bit + b) >> (15 + 16 * e)) & 1u) << b;
        return c;
    }
    return (word(w) >> bit) & ((1u << L.bits) - 1u);
}

__device__ void ref_stats(const DevLayer &L, int r, int G, float &s, float &z) {
    const int tile = r >> 4, rr = r & 15, g = rr & 7, rh = rr >> 3;
    const int sb = G >> 5, w8 = (G & 31) >> 2, t = G & 3;
    const int lane = g * 4 + t, jp = 2 * w8 + rh;
    const int off = jp * L.pb, wi = off >> 5;
    const uint32_t *base = L.stats + ((size_t)tile * L.nsb + sb) * L.wpl * 32 + lane;
    const uint64_t lo = __ldg(base + wi * 32);
    const uint64_t hi = (wi + 1 < L.wpl) ? __ldg(base + (wi + 1) * 32) : 0u;
    const uint64_t v = ((hi << 32) | lo) >> (off & 31);
    const uint32_t pair = (uint32_t)(v & (L.pb >= 32 ? 0xffffffffull : ((1ull << L.pb) - 1ull)));
    uint2 q = make_uint2(0, 0);
    if (L.bilevel) q = __ldg(L.stats2 + (size_t)min(r / L.beta2, L.nrb - 1) * L.ngroups_pad + G);
    float nz;
    pair_stats(L, pair, q, s, nz);
    z = -nz;
}

__global__ void k_ref(DevLayer L, const float *__restrict__ X, float *__restrict__ Y) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= L.rows) return;
    const float *x = X + (size_t)t * L.cols;
    double acc = 0.0;
    int G = -1;
    float s = 0.f, z = 0.f;
    for (int j = 0; j < L.cols; j++) {
        const int gj = j / L.beta1;
        if (gj != G) {
            G = gj;
            ref_stats(L, r, G, s, z);
        }
        const float w = s * ((float)ref_code(L, r, j) - z);
        acc += (double)w * (double)__ldg(x + __ldg(L.perm + j));
    }
    const size_t ob = (size_t)(r >> 4) * L.nchunks;
    for (int c = 0; c < L.nchunks; c++) {
        const uint32_t e0 = __ldg(L.ol_off + ob + c), e1 = __ldg(L.ol_off + ob + c + 1);
        for (uint32_t e = e0; e < e1; e++) {
            int row, pin;
            float val;
            ol_decode(__ldg(L.ol + e), row, pin, val);
            if (row == (r & 15)) acc += (double)val * (double)__ldg(x + __ldg(L.perm + c * 256 + pin));
        }
    }
    Y[(size_t)t * L.rows + r] = (float)acc;
}

/* ======================================================================== */
/* Small utility kernels                                                     */
/* ======================================================================== */

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

/* ======================================================================== */
/* Host side                                                                 */
/* ======================================================================== */

static spqr_status cuda_fail(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    return spqr_fail(SPQR_ERR_NO_DEVICE, "CUDA: %s: %s", what, cudaGetErrorString(e));
}
#define CK(call, what)                                     \
    do {                                                   \
        cudaError_t e_ = (call);                           \
        if (e_ != cudaSuccess) return cuda_fail(e_, what); \
    } while (0)

static std::mutex g_mu;
static int g_dev_ok = -1; /* -1 unknown, 0 none, 1 ok */
static cudaDeviceProp g_prop;

static spqr_status dev_init(void) {
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
    if (g_prop.major * 10 + g_prop.minor < 75)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "CUDA device %s is sm_%d%d; sm_75 or newer is needed",
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

/* ---- upload -------------------------------------------------------------- */

static void parallel_for(int n, const std::function<void(int, int)> &fn);

static void parallel_for(int n, const std::function<void(int, int)> &fn) {
    unsigned hw = std::thread::hardware_concurrency();
    int nt = (int)std::min<unsigned>(hw ? hw : 1, 32);
    if (nt > n) nt = n;
    if (nt <= 1) {
        fn(0, n);
        return;
    }
    std::vector<std::thread> th;
    for (int i = 0; i < nt; i++) {
        int a = (int)((long long)n * i / nt), b = (int)((long long)n * (i + 1) / nt);
        th.emplace_back(fn, a, b);
    }
    for (auto &t : th) t.join();
}

extern "C" spqr_status spqr_cuda_qlinear_upload(const spqr_qlayer *q, spqr_cuda_qlinear **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: out is NULL");
    *out = NULL;
    if (!q) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: layer is NULL");
    if (q->rows < 1 || q->cols < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad shape %dx%d", q->rows, q->cols);
    if (q->wbits < 2 || q->wbits > 8)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: wbits %d not in 2..8", q->wbits);
    if (q->beta1 < 1 || q->beta2 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad group sizes beta1=%d beta2=%d",
                         q->beta1, q->beta2);
    const int bilevel = q->beta2 > 0;
    const int ngroups = ceil_div(q->cols, q->beta1);
    if (q->ngroups != ngroups)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: ngroups %d != ceil(%d/%d)", q->ngroups,
                         q->cols, q->beta1);
    if (bilevel) {
        if (q->sbits < 1 || q->sbits > 8 || q->zbits < 1 || q->zbits > 8)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: sbits/zbits %d/%d not in 1..8",
                             q->sbits, q->zbits);
        if (q->nrb != ceil_div(q->rows, q->beta2))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: nrb %d != ceil(%d/%d)", q->nrb,
                             q->rows, q->beta2);
        if (!q->scale_code || !q->zero_code || !q->s2_scale || !q->s2_zero || !q->z2_scale ||
            !q->z2_zero)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bilevel statistics missing");
    } else if (!q->scale_f16 || !q->zero_f16) {
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: fp16 statistics missing");
    }
    if (!q->perm || !q->codes) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: codes/perm missing");
    if (q->n_outliers < 0 || (q->n_outliers > 0 && (!q->row_ptr || !q->ol_col || !q->ol_val)) ||
        q->n_outliers > 0xffffffffll)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad outlier arrays");

    DevLayer L;
    memset(&L, 0, sizeof L);
    L.rows = q->rows;
    L.cols = q->cols;
    L.rows_pad = ceil_div(q->rows, 16) * 16;
    L.cols_pad = ceil_div(q->cols, 256) * 256;
    L.ntiles = L.rows_pad / 16;
    L.nchunks = L.cols_pad / 256;
    L.ngroups = ngroups;
    L.ngroups_pad = ceil_div(ceil_div(L.cols_pad, q->beta1), 32) * 32;
    L.nsb = L.ngroups_pad / 32;
    L.beta1 = q->beta1;
    L.beta2 = q->beta2;
    L.nrb = bilevel ? q->nrb : 0;
    L.wbits = q->wbits;
    L.bits = q->wbits <= 4 ? q->wbits : 8;
    L.sbits = bilevel ? q->sbits : 0;
    L.zbits = bilevel ? q->zbits : 0;
    L.pb = bilevel ? q->sbits + q->zbits : 32;
    L.wpl = (16 * L.pb + 31) / 32;
    L.bilevel = bilevel;

    const size_t b_codes = (size_t)L.ntiles * L.nchunks * L.bits * 32 * 16;
    const size_t b_stats = (size_t)L.ntiles * L.nsb * L.wpl * 32 * 4;
    const size_t b_stats2 = bilevel ? (size_t)L.nrb * L.ngroups_pad * 8 : 0;
    const size_t b_olptr = ((size_t)L.ntiles * L.nchunks + 1) * 4;
    const size_t b_ol = (size_t)q->n_outliers * 4;
    const size_t b_perm = (size_t)q->cols * 4;
    const size_t o_codes = 0, o_stats = align256(b_codes), o_stats2 = o_stats + align256(b_stats);
    const size_t o_olptr = o_stats2 + align256(b_stats2), o_ol = o_olptr + align256(b_olptr);
    const size_t o_perm = o_ol + align256(b_ol), total = o_perm + align256(b_perm);

    {
        std::lock_guard<std::mutex> lk(g_mu);
        spqr_status st = dev_init();
        if (st != SPQR_OK) return st;
    }
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    const size_t margin = 64ull << 20;
    if (total + margin > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE,
                         "cuda upload: %dx%d layer needs %.1f MiB of GPU memory (+%.0f MiB "
                         "reserve) but only %.1f MiB of %.1f MiB are free",
                         q->rows, q->cols, total / 1048576.0, margin / 1048576.0, fr / 1048576.0,
                         tot / 1048576.0);

    /* validate permutation and outliers */
    for (int j = 0; j < q->cols; j++)
        if (q->perm[j] < 0 || q->perm[j] >= q->cols)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: perm[%d] = %d out of range", j,
                             q->perm[j]);
    if (q->row_ptr) {
        if (q->row_ptr[0] != 0 || (int64_t)q->row_ptr[q->rows] != q->n_outliers)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: row_ptr does not span the outliers");
        for (int r = 0; r < q->rows; r++) {
            if (q->row_ptr[r + 1] < q->row_ptr[r])
                return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: row_ptr decreases at row %d", r);
            for (uint32_t k = q->row_ptr[r]; k < q->row_ptr[r + 1]; k++) {
                if (q->ol_col[k] >= (uint32_t)q->cols)
                    return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: outlier %u column %u out of range", k,
                                     q->ol_col[k]);
                if (k > q->row_ptr[r] && q->ol_col[k] <= q->ol_col[k - 1])
                    return spqr_fail(SPQR_ERR_INVALID_ARG,
                                     "cuda upload: outlier columns of row %d are not ascending", r);
            }
        }
    }

    unsigned char *h = (unsigned char *)calloc(1, total);
    if (!h) return spqr_fail(SPQR_ERR_NOMEM, "cuda upload: %zu bytes of host staging", total);

    /* codes */
    {
        uint32_t *hc = (uint32_t *)(h + o_codes);
        const int B = L.bits;
        const uint32_t cmask = (1u << (B == 8 ? 8 : B)) - 1u;
        const int rows = q->rows, cols = q->cols, nch = L.nchunks;
        const uint8_t *codes = q->codes;
        parallel_for(L.ntiles, [&](int ta, int tb) {
            for (int tile = ta; tile < tb; tile++)
                for (int ch = 0; ch < nch; ch++)
                    for (int lane = 0; lane < 32; lane++) {
                        const int g = lane >> 2, tq = lane & 3;
                        uint32_t w[32];
                        memset(w, 0, sizeof w);
                        for (int kc = 0; kc < 16; kc++) {
                            const int kt = ch * 16 + kc;
                            for (int ri = 0; ri < 4; ri++) {
                                const int row = tile * 16 + g + 8 * (ri & 1);
                                if (row >= rows) continue;
                                for (int e = 0; e < 2; e++) {
                                    const int k = kt * 16 + 8 * (ri >> 1) + 2 * tq + e;
                                    if (k >= cols) continue;
                                    const uint32_t c = codes[(size_t)row * cols + k] & cmask;
                                    int wd, bit;
                                    code_pos(B, kc, ri, e, &wd, &bit);
                                    if (wd < 0) {
                                        for (int b = 0; b < 3; b++)
                                            w[bit + b] |= ((c >> b) & 1u) << (15 + 16 * e);
                                    } else {
                                        w[wd] |= c << bit;
                                    }
                                }
                            }
                        }
                        for (int u = 0; u < B; u++) {
                            uint32_t *dst = hc + ((((size_t)tile * nch + ch) * B + u) * 32 + lane) * 4;
                            memcpy(dst, w + 4 * u, 16);
                        }
                    }
        });
    }
    /* first-level statistics */
    {
        uint32_t *hs = (uint32_t *)(h + o_stats);
        const uint32_t smask = bilevel ? (1u << q->sbits) - 1u : 0, zmask = bilevel ? (1u << q->zbits) - 1u : 0;
        parallel_for(L.ntiles, [&](int ta, int tb) {
            for (int tile = ta; tile < tb; tile++)
                for (int sb = 0; sb < L.nsb; sb++)
                    for (int lane = 0; lane < 32; lane++) {
                        const int g = lane >> 2, tq = lane & 3;
                        uint32_t w[18];
                        memset(w, 0, sizeof w);
                        for (int j = 0; j < 16; j++) {
                            const int row = tile * 16 + g + 8 * (j & 1);
                            const int G = sb * 32 + 4 * (j >> 1) + tq;
                            if (row >= q->rows || G >= ngroups) continue;
                            const size_t si = (size_t)G * q->rows + row;
                            uint64_t v;
                            if (bilevel)
                                v = (q->scale_code[si] & smask) | ((uint64_t)(q->zero_code[si] & zmask) << q->sbits);
                            else
                                v = (uint64_t)q->scale_f16[si] | ((uint64_t)q->zero_f16[si] << 16);
                            const int off = j * L.pb;
                            const uint64_t sh = v << (off & 31);
                            w[off >> 5] |= (uint32_t)sh;
                            w[(off >> 5) + 1] |= (uint32_t)(sh >> 32);
                        }
                        for (int i = 0; i < L.wpl; i++)
                            hs[(((size_t)tile * L.nsb + sb) * L.wpl + i) * 32 + lane] = w[i];
                    }
        });
    }
    /* second-level statistics */
    if (bilevel) {
        uint32_t *h2 = (uint32_t *)(h + o_stats2);
        for (int rb = 0; rb < L.nrb; rb++)
            for (int G = 0; G < ngroups; G++) {
                const size_t si = (size_t)G * L.nrb + rb, di = ((size_t)rb * L.ngroups_pad + G) * 2;
                h2[di] = (uint32_t)q->s2_scale[si] | ((uint32_t)q->s2_zero[si] << 16);
                h2[di + 1] = (uint32_t)q->z2_scale[si] | ((uint32_t)q->z2_zero[si] << 16);
            }
    }
    /* outliers */
    {
        /* buckets per (tile, chunk), rows ascending, columns ascending within a row */
        uint32_t *hp = (uint32_t *)(h + o_olptr);
        uint32_t *ho = (uint32_t *)(h + o_ol);
        uint32_t k = 0;
        for (int tile = 0; tile < L.ntiles; tile++) {
            uint32_t ptr[16], end[16];
            for (int i = 0; i < 16; i++) {
                const int r = tile * 16 + i;
                ptr[i] = (q->row_ptr && r < q->rows) ? q->row_ptr[r] : 0;
                end[i] = (q->row_ptr && r < q->rows) ? q->row_ptr[r + 1] : 0;
            }
            for (int c = 0; c < L.nchunks; c++) {
                hp[(size_t)tile * L.nchunks + c] = k;
                for (int i = 0; i < 16; i++)
                    while (ptr[i] < end[i] && q->ol_col[ptr[i]] < (uint32_t)(c + 1) * 256) {
                        ho[k++] = (q->ol_col[ptr[i]] & 255u) | ((uint32_t)i << 8) | ((uint32_t)q->ol_val[ptr[i]] << 16);
                        ptr[i]++;
                    }
            }
        }
        hp[(size_t)L.ntiles * L.nchunks] = k;
        memcpy(h + o_perm, q->perm, b_perm);
    }

    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, total);
    if (e != cudaSuccess) {
        free(h);
        (void)cudaGetLastError();
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuda upload: cudaMalloc of %.1f MiB failed: %s",
                         total / 1048576.0, cudaGetErrorString(e));
    }
    e = cudaMemcpy(d, h, total, cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) {
        cudaFree(d);
        return cuda_fail(e, "upload memcpy");
    }
    spqr_cuda_qlinear *w = (spqr_cuda_qlinear *)calloc(1, sizeof *w);
    if (!w) {
        cudaFree(d);
        return spqr_fail(SPQR_ERR_NOMEM, "cuda upload: handle");
    }
    unsigned char *db = (unsigned char *)d;
    L.codes = (const uint4 *)(db + o_codes);
    L.stats = (const uint32_t *)(db + o_stats);
    L.stats2 = bilevel ? (const uint2 *)(db + o_stats2) : NULL;
    L.ol_off = (const uint32_t *)(db + o_olptr);
    L.ol = (const uint32_t *)(db + o_ol);
    L.perm = (const int32_t *)(db + o_perm);
    w->L = L;
    w->dbuf = d;
    w->bytes = total;
    w->b_codes = b_codes;
    w->b_stats = b_stats;
    w->b_stats2 = b_stats2;
    w->b_ol = b_ol + b_olptr;
    w->b_perm = b_perm;
    w->n_ol = q->n_outliers;
    *out = w;
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_qlinear_clone(const spqr_cuda_qlinear *w, spqr_cuda_qlinear **out) {
    if (!out || !w) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda clone: NULL argument");
    *out = NULL;
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    if (w->bytes + (64ull << 20) > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuda clone: needs %.1f MiB, %.1f MiB free",
                         w->bytes / 1048576.0, fr / 1048576.0);
    void *d = NULL;
    CK(cudaMalloc(&d, w->bytes), "cudaMalloc");
    cudaError_t e = cudaMemcpy(d, w->dbuf, w->bytes, cudaMemcpyDeviceToDevice);
    if (e != cudaSuccess) {
        cudaFree(d);
        return cuda_fail(e, "clone memcpy");
    }
    spqr_cuda_qlinear *c = (spqr_cuda_qlinear *)malloc(sizeof *c);
    if (!c) {
        cudaFree(d);
        return spqr_fail(SPQR_ERR_NOMEM, "cuda clone: handle");
    }
    *c = *w;
    const ptrdiff_t delta = (unsigned char *)d - (unsigned char *)w->dbuf;
    auto mv = [&](const void *p) -> const unsigned char * {
        return p ? (const unsigned char *)p + delta : NULL;
    };
    c->L.codes = (const uint4 *)mv(w->L.codes);
    c->L.stats = (const uint32_t *)mv(w->L.stats);
    c->L.stats2 = (const uint2 *)mv(w->L.stats2);
    c->L.ol_off = (const uint32_t *)mv(w->L.ol_off);
    c->L.ol = (const uint32_t *)mv(w->L.ol);
    c->L.perm = (const int32_t *)mv(w->L.perm);
    c->dbuf = d;
    *out = c;
    return SPQR_OK;
}

extern "C" void spqr_cuda_qlinear_free(spqr_cuda_qlinear *w) {
    if (!w) return;
    cudaFree(w->dbuf);
    free(w);
}

extern "C" void spqr_cuda_qlinear_get_info(const spqr_cuda_qlinear *w, spqr_cuda_qlinear_info *info) {
    if (!info) return;
    memset(info, 0, sizeof *info);
    if (!w) return;
    info->rows = w->L.rows;
    info->cols = w->L.cols;
    info->wbits = w->L.wbits;
    info->beta1 = w->L.beta1;
    info->beta2 = w->L.beta2;
    info->bytes_codes = w->b_codes;
    info->bytes_stats = w->b_stats;
    info->bytes_stats2 = w->b_stats2;
    info->bytes_outliers = w->b_ol;
    info->bytes_perm = w->b_perm;
    info->bytes_total = w->b_codes + w->b_stats + w->b_stats2 + w->b_ol + w->b_perm;
    info->n_outliers = w->n_ol;
}

/* ---- qgemm ----------------------------------------------------------------- */

static unsigned char *g_xp;
static size_t g_xp_cap;
static float *g_ws;
static size_t g_ws_cap;
static unsigned *g_cnt;
static size_t g_cnt_cap;

static spqr_status ensure_buf(void **p, size_t *cap, size_t need, bool zero) {
    if (need <= *cap) return SPQR_OK;
    size_t n = std::max(need, *cap * 2);
    if (*p) cudaFree(*p);
    *p = NULL;
    *cap = 0;
    cudaError_t e = cudaMalloc(p, n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        return spqr_fail(SPQR_ERR_NO_DEVICE, "qgemm: scratch allocation of %zu bytes failed: %s", n,
                         cudaGetErrorString(e));
    }
    if (zero) CK(cudaMemset(*p, 0, n), "cudaMemset");
    *cap = n;
    return SPQR_OK;
}

struct KInfo {
    const void *fn;
    int bps;        /* resident blocks per SM at smem_last */
    size_t smem_last;
    size_t pick_s2, pick_s3; /* cache of pick_pipe */
    int pick_S, pick_bps;
    bool pdl;       /* compiled with griddepcontrol (sm_90 code) */
    bool init;
};

static spqr_status kinfo(const void *fn, int threads, size_t smem, KInfo &ki) {
    if (!ki.init) {
        int maxs = 0;
        CK(cudaDeviceGetAttribute(&maxs, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), "cudaDeviceGetAttribute");
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, fn), "cudaFuncGetAttributes");
        CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, maxs - (int)fa.sharedSizeBytes),
           "cudaFuncSetAttribute");
        ki.fn = fn;
        ki.pdl = fa.ptxVersion >= 90 && g_prop.major >= 9;
        ki.smem_last = (size_t)-1;
        ki.init = true;
    }
    if (ki.smem_last != smem) {
        int bps = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, fn, threads, smem), "occupancy");
        ki.bps = bps;
        ki.smem_last = smem;
    }
    return SPQR_OK;
}

/* shared-memory pipeline geometry for a main kernel */
static Pipe make_pipe(const DevLayer &L, int xb, int warps, int S, int tm) {
    Pipe q;
    q.xb = xb;
    q.rw = L.wpl * 128;
    q.pw = L.bits * 512 + q.rw + 256 + OL_CAP * 4;
    q.stage = xb + warps * q.pw;
    const int ktw = L.beta1 / 4;
    ktw <= 16 && 16 % ktw == 0 ? (void)(q.nwmax = 16 / ktw) : (void)(q.nwmax = std::min(8, 16 / std::max(ktw, 1) + 2));
    q.rb16 = L.beta2 > 0 && L.beta2 % 16 == 0;
    q.S = S;
    q.wsm = q.S * q.stage;
    q.tm = tm;
    q.olacc = q.wsm + warps * q.nwmax * 32 * 16;
    return q;
}
static size_t pipe_bytes(const Pipe &q, int warps) { return (size_t)q.olacc + (size_t)warps * 16 * q.tm * 4; }

static int pick_split(const DevLayer &L, int row_blocks, int bps) {
    const int slots = g_prop.multiProcessorCount * bps;
    const int cap = std::max(1, std::min(L.nchunks / 2, 32));
    if (row_blocks >= 4 * slots) return 1;
    int best = 1;
    double best_eff = -1;
    for (int ns = 1; ns <= cap; ns++) {
        const double waves = (double)row_blocks * ns / slots;
        const double eff = waves / std::ceil(waves) - 0.004 * ns;
        if (eff > best_eff + 1e-9) {
            best_eff = eff;
            best = ns;
        }
    }
    return best;
}

template <int BITS>
static const void *gemv_fn(bool b16) {
    return b16 ? (const void *)k_gemv<BITS, 4> : (const void *)k_gemv<BITS, 0>;
}
static const void *gemv_fn_bits(int bits, bool b16) {
    switch (bits) {
    case 2: return gemv_fn<2>(b16);
    case 3: return gemv_fn<3>(b16);
    case 4: return gemv_fn<4>(b16);
    default: return gemv_fn<8>(b16);
    }
}
template <int BITS, int NT>
static const void *gemm_fn3(bool half) {
    return half ? (const void *)k_gemm<BITS, NT, true> : (const void *)k_gemm<BITS, NT, false>;
}
template <int NT>
static const void *gemm_fn2(int bits, bool half) {
    switch (bits) {
    case 2: return gemm_fn3<2, NT>(half);
    case 3: return gemm_fn3<3, NT>(half);
    case 4: return gemm_fn3<4, NT>(half);
    default: return gemm_fn3<8, NT>(half);
    }
}
static const void *gemm_fn(int bits, int nt, bool half) {
    return nt == 1 ? gemm_fn2<1>(bits, half) : nt == 2 ? gemm_fn2<2>(bits, half) : gemm_fn2<4>(bits, half);
}
static int kslot(int bits) { return bits == 2 ? 0 : bits == 3 ? 1 : bits == 4 ? 2 : 3; }

static KInfo g_k1[4][2];
static KInfo g_k2[4][3][2];

static spqr_status launch_main(const void *fn, dim3 grid, dim3 block, size_t smem, bool pdl,
                               DevLayer L, Pass P, Pipe Q) {
    void *args[3] = {&L, &P, &Q};
    if (pdl) {
        cudaLaunchConfig_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = 0;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cudaError_t e = cudaLaunchKernelExC(&cfg, fn, args);
        if (e == cudaSuccess) return SPQR_OK;
        (void)cudaGetLastError(); /* fall back to a plain launch */
    }
    CK(cudaLaunchKernel(fn, grid, block, args, smem, 0), "kernel launch");
    return SPQR_OK;
}

/* 3 stages unless 2 stages allow more resident blocks */
static spqr_status pick_pipe(const void *fn, const DevLayer &L, int xb, int warps, int tm, KInfo &ki, Pipe &q,
                             size_t &smem) {
    Pipe q3 = make_pipe(L, xb, warps, 3, tm), q2 = make_pipe(L, xb, warps, 2, tm);
    size_t s3 = pipe_bytes(q3, warps), s2 = pipe_bytes(q2, warps);
    if (ki.init && ki.pick_s2 == s2 && ki.pick_s3 == s3) {
        q = ki.pick_S == 3 ? q3 : q2;
        smem = ki.pick_S == 3 ? s3 : s2;
        ki.bps = ki.pick_bps;
        return SPQR_OK;
    }
    spqr_status st = kinfo(fn, warps * 32, s2, ki);
    if (st != SPQR_OK) return st;
    const int b2 = ki.bps;
    st = kinfo(fn, warps * 32, s3, ki);
    if (st != SPQR_OK) return st;
    if (ki.bps >= b2 && ki.bps > 0) {
        q = q3;
        smem = s3;
    } else {
        st = kinfo(fn, warps * 32, s2, ki);
        if (st != SPQR_OK) return st;
        q = q2;
        smem = s2;
    }
    if (ki.bps < 1) return spqr_fail(SPQR_ERR_NO_DEVICE, "qgemm: kernel does not fit on this device");
    ki.pick_s2 = s2;
    ki.pick_s3 = s3;
    ki.pick_S = q.S;
    ki.pick_bps = ki.bps;
    return SPQR_OK;
}

struct Plan {
    int kernel, nt, nsplit, row_blocks;
    KInfo *ki;
    Pipe q;
    size_t smem;
};

static spqr_status plan_for(const spqr_cuda_qlinear *W, int T, const spqr_cuda_qgemm_opts *o, Plan &p) {
    const DevLayer &L = W->L;
    p.kernel = o->kernel;
    if (p.kernel == SPQR_CUDA_KERNEL_AUTO)
        p.kernel = (L.beta1 % 8) ? SPQR_CUDA_KERNEL_REF : (T == 1 ? SPQR_CUDA_KERNEL_GEMV : SPQR_CUDA_KERNEL_GEMM);
    if (p.kernel != SPQR_CUDA_KERNEL_REF && L.beta1 % 8)
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "qgemm: tensor-core kernels need beta1 %% 8 == 0 (beta1=%d)",
                         L.beta1);
    p.ki = NULL;
    p.nt = 0;
    p.nsplit = 1;
    p.row_blocks = 0;
    if (p.kernel == SPQR_CUDA_KERNEL_GEMV) {
        p.row_blocks = ceil_div(L.ntiles, K1_WARPS);
        const bool b16 = L.beta1 == 16;
        p.ki = &g_k1[kslot(L.bits)][b16];
        spqr_status st = pick_pipe(gemv_fn_bits(L.bits, b16), L, K1_CHUNK_BYTES, K1_WARPS, 1, *p.ki, p.q, p.smem);
        if (st != SPQR_OK) return st;
    } else if (p.kernel == SPQR_CUDA_KERNEL_GEMM) {
        p.nt = T <= 8 ? 1 : T <= 16 ? 2 : 4;
        const bool half = L.beta1 == 16; /* the specialized (beta1 = 16) variant */
        p.row_blocks = ceil_div(L.ntiles, K2_WARPS);
        p.ki = &g_k2[kslot(L.bits)][p.nt == 1 ? 0 : p.nt == 2 ? 1 : 2][half];
        spqr_status st = pick_pipe(gemm_fn(L.bits, p.nt, half), L, 16 * p.nt * K2_KT_BYTES, K2_WARPS, 8 * p.nt,
                                   *p.ki, p.q, p.smem);
        if (st != SPQR_OK) return st;
    } else {
        return SPQR_OK;
    }
    p.nsplit = o->nsplit > 0 ? std::min(o->nsplit, L.nchunks) : pick_split(L, p.row_blocks, p.ki->bps);
    return SPQR_OK;
}

extern "C" int spqr_cuda_qgemm_auto_split(const spqr_cuda_qlinear *W, int n_tok) {
    if (!W || n_tok < 1) return 0;
    std::lock_guard<std::mutex> lk(g_mu);
    if (dev_init() != SPQR_OK) return 0;
    spqr_cuda_qgemm_opts o;
    memset(&o, 0, sizeof o);
    Plan p;
    if (plan_for(W, std::min(n_tok, 32), &o, p) != SPQR_OK) return 0;
    return p.nsplit;
}

extern "C" spqr_status spqr_cuda_qgemm_ex(const spqr_cuda_qlinear *W, const float *dX, int n_tok,
                                          float *dY, const spqr_cuda_qgemm_opts *opts) {
    if (!W) return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: layer is NULL");
    if (n_tok < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: n_tok %d < 0", n_tok);
    if (n_tok == 0) return SPQR_OK;
    if (!dX || !dY) return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: NULL X or Y");
    spqr_cuda_qgemm_opts o;
    memset(&o, 0, sizeof o);
    if (opts) o = *opts;
    if (o.kernel < 0 || o.kernel > SPQR_CUDA_KERNEL_REF)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: unknown kernel %d", o.kernel);
    const DevLayer &L = W->L;
    std::lock_guard<std::mutex> lk(g_mu);
    spqr_status st = dev_init();
    if (st != SPQR_OK) return st;

    int maxT = 32;
    if (o.max_tokens > 0) maxT = o.max_tokens <= 8 ? 8 : o.max_tokens <= 16 ? 16 : 32;
    int t0 = 0;
    while (t0 < n_tok) {
        int T;
        const int kern0 = o.kernel == SPQR_CUDA_KERNEL_AUTO
                              ? ((L.beta1 % 8) ? SPQR_CUDA_KERNEL_REF
                                               : (n_tok - t0 == 1 ? SPQR_CUDA_KERNEL_GEMV : SPQR_CUDA_KERNEL_GEMM))
                              : o.kernel;
        if (kern0 == SPQR_CUDA_KERNEL_GEMV) T = 1;
        else if (kern0 == SPQR_CUDA_KERNEL_GEMM) T = std::min(n_tok - t0, maxT);
        else T = std::min(n_tok - t0, 65535);
        spqr_cuda_qgemm_opts oo = o;
        oo.kernel = kern0;
        Plan p;
        st = plan_for(W, T, &oo, p);
        if (st != SPQR_OK) return st;
        const float *X = dX + (size_t)t0 * L.cols;
        float *Y = dY + (size_t)t0 * L.rows;
        if (p.kernel == SPQR_CUDA_KERNEL_REF) {
            k_ref<<<dim3(ceil_div(L.rows, 128), T), 128>>>(L, X, Y);
            CK(cudaGetLastError(), "reference kernel launch");
            t0 += T;
            continue;
        }
        Pass P;
        P.X = X;
        P.T = T;
        P.Y = Y;
        const size_t chunk_bytes = p.kernel == SPQR_CUDA_KERNEL_GEMV ? K1_CHUNK_BYTES : (size_t)16 * p.nt * K2_KT_BYTES;
        st = ensure_buf((void **)&g_xp, &g_xp_cap, chunk_bytes * L.nchunks, false);
        if (st != SPQR_OK) return st;
        if (p.nsplit > 1) {
            st = ensure_buf((void **)&g_ws, &g_ws_cap, (size_t)p.nsplit * T * L.rows_pad * sizeof(float), false);
            if (st != SPQR_OK) return st;
            st = ensure_buf((void **)&g_cnt, &g_cnt_cap, (size_t)p.row_blocks * sizeof(unsigned), true);
            if (st != SPQR_OK) return st;
        }
        P.xp = g_xp;
        P.ws = g_ws;
        P.cnt = g_cnt;
        const int nkt = L.cols_pad / 16;
        const bool pdl = !o.no_pdl && p.ki->pdl;
        if (p.kernel == SPQR_CUDA_KERNEL_GEMV) {
            k_prep1<<<ceil_div(nkt, 8), 256>>>(L, X, g_xp);
            CK(cudaGetLastError(), "prep kernel launch");
            st = launch_main(p.ki->fn, dim3(p.row_blocks, p.nsplit), dim3(K1_WARPS * 32), p.smem, pdl, L, P, p.q);
        } else {
            const int blocks = ceil_div(nkt * p.nt, 8);
            if (p.nt == 1) k_prep2<1><<<blocks, 256>>>(L, X, T, g_xp);
            else if (p.nt == 2) k_prep2<2><<<blocks, 256>>>(L, X, T, g_xp);
            else k_prep2<4><<<blocks, 256>>>(L, X, T, g_xp);
            CK(cudaGetLastError(), "prep kernel launch");
            st = launch_main(p.ki->fn, dim3(p.row_blocks, p.nsplit), dim3(K2_WARPS * 32), p.smem, pdl, L, P,
                             p.q);
        }
        if (st != SPQR_OK) return st;
        t0 += T;
    }
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_qgemm(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY) {
    return spqr_cuda_qgemm_ex(W, dX, n_tok, dY, NULL);
}

/* ---- runtime helpers ------------------------------------------------------- */

extern "C" spqr_status spqr_cuda_malloc(void **dptr, size_t bytes) {
    if (!dptr) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda_malloc: NULL out pointer");
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
