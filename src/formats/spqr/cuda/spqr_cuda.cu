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
#include "formats/spqr/qlayer.h"
#include "util/common.h"
}
#include "formats/spqr/cuda/spqr_cuda.h"

/* ======================================================================== */
/* Geometry and constants                                                    */
/* ======================================================================== */

#define WPB 4               /* warps (row tiles) per block of the main kernel */
#define QCOLS 256           /* permuted columns per quad (4 windows of 64)     */
#define MAGIC16 0x64006400u /* half2(1024, 1024)                               */

enum { SM_BIL4 = 0, SM_F16 = 1 }; /* statistics modes of the fast layout */

struct DevLayer {
    int rows, cols, rows_pad, cols_pad, ntiles, nquads, ngroups;
    int beta1, beta2, nrb, wbits, B, sbits, zbits;
    int fast;    /* 1: fast layout (k_main, k_ref_fast); 0: generic (k_ref_generic) */
    int smode;   /* SM_BIL4 or SM_F16                                        */
    int g8;      /* beta1 == 8: two groups per 16-column quarter             */
    int m1;      /* beta1 == 16 (group of quarter = window quarter index)    */
    uint32_t gmagic; /* G = umulhi(4w + t, gmagic) when beta1 = 16m, m > 1   */
    int sw;      /* statistic words per lane per quad                        */
    int ng2;     /* row stride of stats2: groups padded so every quad's index is valid */
    int s2step;  /* groups per quad when that is an integer (else 0)          */
    const uint4 *codes;     /* fast: [ntiles][nquads][B][32] uint4          */
    const uint32_t *stats;  /* fast: per (tile, quad): see stat_word_index   */
    const uint2 *stats2;    /* fast BIL4: [nrb][ngroups]                     */
    const uint32_t *ol_off; /* fast: [ntiles * nquads + 1]                   */
    const uint32_t *ol;     /* fast: col-in-quad | row-in-tile << 8 | fp16 << 16 */
    const int32_t *perm;    /* [cols]                                        */
    const uint32_t *orow;   /* fast: row-ordered outliers (batch-T kernel):  */
    const uint32_t *ocol;   /*   CSR offsets [rows + 1], permuted columns,   */
    const uint16_t *oval;   /*   fp16 values                                 */
    const uint8_t *gcodes;  /* generic: [rows][cols]                         */
    const float2 *gstats;   /* generic: [rows][ngroups] (scale, zero)        */
    const uint32_t *grow;   /* generic: outlier CSR row offsets [rows + 1]   */
    const uint32_t *gcol;   /* generic: permuted columns                     */
    const float *gval;      /* generic: values                               */
};

struct MainArgs {
    DevLayer L;
    const __half *xp;  /* batch T: [8*NT][cols_pad] permuted fp16 inputs      */
    const uint4 *xg;   /* batch 1: [nwin + 1][8][16 halves] B planes          */
    const float2 *ox;  /* batch 1: [nwin][4][NG] (1024 * sum b, sum sigma*b)  */
    const float *xf;   /* batch 1: [cols_pad] float32 permuted x (outliers)   */
    int T;             /* tokens of this pass                                  */
    int qper;          /* quads per split                                      */
    float *Y;          /* [T][rows]                                            */
    float *ws;         /* split-K partials [nsplit][T][rows_pad]               */
    unsigned *cnt;     /* split-K arrival counters [gridDim.x]                 */
};

struct spqr_cuda_qlinear {
    DevLayer L;
    void *dbuf;
    size_t bytes;
    size_t b_codes, b_stats, b_stats2, b_ol, b_perm;
    int64_t n_ol;
    int exact_stats;
};

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* ---- code placement in a lane's words (shared by the packer and kernels) --
 * Per (tile, window) a lane (g = lane / 4, t = lane % 4) holds 32 codes as 16
 * pairs p = 4*kt + r (k-tile kt = 0..3, register r = 0..3 of the mma A
 * fragment) with elements e = 0..1 (low / high half of the half2). Pair
 * (p, e) is the code of row g + 8*(r & 1), window column
 * 16*t + 4*kt + 2*(r >> 1) + e. Registers r = 0, 1 multiply the B register
 * b0 and r = 2, 3 multiply b1, so the "duo" (kt, h) = pairs 4kt + 2h and
 * 4kt + 2h + 1 shares one input pair. The B container words of a window
 * hold every pair with element 1 exactly 16 bits above element 0; one LOP3
 * with 0x6400 then yields half2(1024 + sigma * c) where sigma is the field's
 * bit scale, and both pairs of a duo have the same sigma (duo_scale):
 *   B=4: word kt; r = 0/2/1/3 at bits 0/4/8/12 (sigma 1 for h = 0, 16 for
 *        h = 1; r = 1, 3 are read after a shift by 8)
 *   B=3: three words of five 3-bit slots (bits 0, 3, 6, 9, 12; read at
 *        sigma 1, 8, 1 (>> 6), 1 (>> 9), 8 (>> 9)) and one pair spread over
 *        bits 15/31 of the three words (bit b of each code in word b); the
 *        slot of each pair is in k_b3_loc
 *   B=2: two words of eight 2-bit slots (bit 2s; read at sigma 1, 4, 16 for
 *        s = 0..2, 1, 4 (>> 6) for s = 3, 4, and 1, 4, 16 (>> 10) for
 *        s = 5..7); the slot of each pair is in k_b2_loc
 *   B=8: word p/2, byte p%2 (element 1 two bytes higher), sigma 1
 * code_loc returns the word (0..B-1; -1 for the spread pair) and bit. */
#define B3_SPREAD 15
/* B=3: word * 8 + slot of pair p (15 = the spread pair). Written as constant
 * expressions so that device code with a compile-time p folds them. */
__host__ __device__ constexpr int b3_loc(int p) {
    return p == 0 ? 0 : p == 1 ? 2 : p == 2 ? 1 : p == 3 ? 4 : p == 4 ? 3 : p == 5 ? 8 : p == 6 ? 9 : p == 7 ? 12
         : p == 8 ? 10 : p == 9 ? 11 : p == 10 ? 17 : p == 11 ? 20 : p == 12 ? 16 : p == 13 ? 18 : p == 14 ? 19
         : B3_SPREAD;
}
/* B=2: word * 8 + slot of pair p */
__host__ __device__ constexpr int b2_loc(int p) {
    return p == 0 ? 0 : p == 1 ? 3 : p == 2 ? 6 : p == 3 ? 9 : p == 4 ? 5 : p == 5 ? 8 : p == 6 ? 12 : p == 7 ? 14
         : p == 8 ? 11 : p == 9 ? 13 : p == 10 ? 2 : p == 11 ? 7 : p == 12 ? 1 : p == 13 ? 4 : p == 14 ? 10 : 15;
}
/* bit scale (log2 sigma) at which a slot is read */
__host__ __device__ constexpr int b3_slot_k(int slot) { return (slot == 1 || slot == 4) ? 3 : 0; }
__host__ __device__ constexpr int b2_slot_k(int slot) {
    return (slot == 0 || slot == 3 || slot == 5) ? 0 : (slot == 1 || slot == 4 || slot == 6) ? 2 : 4;
}
/* log2 of the bit scale sigma of duo (kt, h) */
__host__ __device__ static inline int duo_k(int B, int kt, int h) {
    const int p = 4 * kt + 2 * h;
    switch (B) {
    case 4: return h ? 4 : 0;
    case 3: {
        const int l = b3_loc(p);
        return l == B3_SPREAD ? 0 : b3_slot_k(l & 7);
    }
    case 2: return b2_slot_k(b2_loc(p) & 7);
    default: return 0;
    }
}
__host__ __device__ static inline void code_loc(int B, int p, int e, int *word, int *bit) {
    switch (B) {
    case 4: {
        const int r = p & 3;
        *word = p >> 2;
        *bit = 4 * (((r & 1) << 1) | (r >> 1)) + 16 * e;
        break;
    }
    case 2: {
        const int l = b2_loc(p);
        *word = l >> 3;
        *bit = 2 * (l & 7) + 16 * e;
        break;
    }
    case 3: {
        const int l = b3_loc(p);
        if (l == B3_SPREAD) {
            *word = -1;
            *bit = 15 + 16 * e;
        } else {
            *word = l >> 3;
            *bit = 3 * (l & 7) + 16 * e;
        }
        break;
    }
    default: /* 8 */
        *word = p >> 1;
        *bit = 8 * ((p & 1) + 2 * e);
        break;
    }
}

/* Where statistic word i (0..sw-1) of lane `lane` for (tile, quad) lives,
 * as a u32 index. Lanes of one (tile, quad) read 8-byte (sw == 2) or 16-byte
 * vectors that are contiguous across the warp. */
__host__ __device__ static inline size_t stat_word_index(int sw, int nquads, int tile, int q, int lane, int i) {
    const size_t tq = (size_t)tile * nquads + q;
    if (sw == 2) return (tq * 32 + lane) * 2 + i;
    return ((tq * (sw / 4) + i / 4) * 32 + lane) * 4 + (i & 3);
}
/* u32 index of code word j (0..4B-1 within the quad; window wi owns words
 * wi*B .. wi*B+B-1) of lane `lane` for (tile, quad) */
__host__ __device__ static inline size_t code_word_index(int B, int nquads, int tile, int q, int lane, int j) {
    return ((((size_t)tile * nquads + q) * B + j / 4) * 32 + lane) * 4 + (j & 3);
}
/* first-level group of (window w, quarter t, group-of-quarter grp) */
__host__ __device__ static inline int group_of(const DevLayer &L, int w, int t, int grp) {
    int G;
    if (L.g8) {
        G = 8 * w + 2 * t + grp;
    } else {
        const uint32_t n = (uint32_t)(4 * w + t);
#ifdef __CUDA_ARCH__
        G = L.m1 ? (int)n : (int)__umulhi(n, L.gmagic);
#else
        G = L.m1 ? (int)n : (int)(((uint64_t)n * L.gmagic) >> 32);
#endif
    }
    return G < L.ngroups ? G : L.ngroups - 1;
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
__device__ __forceinline__ uint32_t hmul2u(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
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
__device__ __forceinline__ float h2f(uint32_t bits16) {
    return __half2float(__ushort_as_half((unsigned short)(bits16 & 0xffffu)));
}

/* ---- code decoding ------------------------------------------------------ */

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
        const int l = b3_loc(p);
        if (l == B3_SPREAD) {
            uint32_t v = lop3_and_or(cword<B>(c, wi * 3 + 0) >> 15, 0x00010001u, MAGIC16);
            v = lop3_and_or(cword<B>(c, wi * 3 + 1) >> 14, 0x00020002u, v);
            *k = 0;
            return lop3_and_or(cword<B>(c, wi * 3 + 2) >> 13, 0x00040004u, v);
        }
        const uint32_t q = cword<B>(c, wi * 3 + (l >> 3));
        const int s = l & 7;
        *k = b3_slot_k(s);
        const uint32_t src = s <= 1 ? q : s == 2 ? q >> 6 : q >> 9;
        return lop3_and_or(src, (s == 1 || s == 4) ? 0x00380038u : 0x00070007u, MAGIC16);
    } else if (B == 2) {
        const int l = b2_loc(p);
        const uint32_t q = cword<B>(c, wi * 2 + (l >> 3));
        const int s = l & 7;
        const int kk = b2_slot_k(s);
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

/* ======================================================================== */
/* Pipeline stages shared by the batch-1 and batch-T kernels                 */
/* ======================================================================== */

template <int SM, bool G8>
struct StatCfg {
    static constexpr int NG = G8 ? 2 : 1;                   /* groups per quarter          */
    static constexpr int SW = (SM == SM_BIL4 ? 2 : 8) * NG; /* stat words / lane / quad     */
    static constexpr int S2 = SM == SM_BIL4 ? 4 * NG : 1;   /* stats2 entries / quarter / quad */
};

/* Shared memory of one warp: NS pipeline stages, each holding one quad of
 * the warp's tile (codes and statistics exactly as each lane will read them,
 * the second-level statistics of the 4 quarters, up to OL_CAP outlier
 * entries), then the bucket offsets of the warp's quads and the per-lane
 * outlier accumulators (batch-1 kernel). */
#define OL_CAP 64
#define MAXQ 128 /* quads per split (their bucket offsets are staged) */
template <int B, int SM, bool G8>
struct Stage {
    static constexpr int SW = StatCfg<SM, G8>::SW, S2 = StatCfg<SM, G8>::S2;
    static constexpr int CODES = 0;
    static constexpr int STATS = CODES + B * 512;
    static constexpr int STATS2 = STATS + SW * 128;
    static constexpr int ENT = STATS2 + (SM == SM_BIL4 ? 4 * S2 * 8 : 0);
    static constexpr int BYTES = ENT + OL_CAP * 4;
#ifndef SPQR_CUDA_NS
#define SPQR_CUDA_NS 2
#endif
    static constexpr int NS = SPQR_CUDA_NS; /* stages: NS - 1 quads in flight while one is computed (2 measured best on H200) */
};
template <int B, int SM, bool G8>
struct WarpSmem {
    static constexpr int OFF = Stage<B, SM, G8>::NS * Stage<B, SM, G8>::BYTES; /* u32 [MAXQ + 1] */
    static constexpr int ACC = OFF + 4 * (MAXQ + 4);                             /* float [32][17] */
    static constexpr int BYTES_GEMV = ACC + 32 * 17 * 4;
    static constexpr int BYTES_GEMM = OFF;
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp16(void *s, const void *g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(s)), "l"(g));
}
__device__ __forceinline__ void cp8(void *s, const void *g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(smem_u32(s)), "l"(g));
}
__device__ __forceinline__ void cp4(void *s, const void *g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_u32(s)), "l"(g));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* per-lane constants and source pointers of one warp's tile */
template <int B, int SM, bool G8>
struct Src {
    const uint4 *codes;   /* this lane's first code vector of quad 0          */
    const uint32_t *stats;/* this lane's first stat word (vector) of quad 0   */
    const uint2 *s2;      /* stats2 entry this lane copies, at quad 0          */
    const uint2 *s2row;   /* stats2 row of the tile's row block                */
    int lane, g, t, s2wi, s2t, s2grp;
};

template <int B, int SM, bool G8>
__device__ __forceinline__ void src_init(Src<B, SM, G8> &s, const DevLayer &L, int tile, int lane) {
    typedef StatCfg<SM, G8> SC;
    s.lane = lane;
    s.g = lane >> 2;
    s.t = lane & 3;
    s.codes = L.codes + (size_t)tile * L.nquads * B * 32 + lane;
    if (SC::SW == 2) s.stats = L.stats + ((size_t)tile * L.nquads * 32 + lane) * 2;
    else s.stats = L.stats + ((size_t)tile * L.nquads * (SC::SW / 4) * 32 + lane) * 4;
    s.s2 = s.s2row = NULL;
    s.s2wi = lane / (4 * SC::NG);
    s.s2t = (lane / SC::NG) & 3;
    s.s2grp = lane % SC::NG;
    if (SM == SM_BIL4) {
        s.s2row = L.stats2 + (size_t)min((16 * tile + s.g) / L.beta2, L.nrb - 1) * L.ng2;
        /* quad 0's group, unclamped (stats2 rows are padded to every quad's groups) */
        const int G0 = L.g8 ? 8 * s.s2wi + 2 * s.s2t + s.s2grp : L.m1 ? 4 * s.s2wi + s.s2t
                                                                        : (int)__umulhi(4 * s.s2wi + s.s2t, L.gmagic);
        s.s2 = s.s2row + G0;
    }
}

/* issue the asynchronous copies of quad q into stage memory st; the outlier
 * entries [e0, e0 + min(n, OL_CAP)) too when OL */
template <int B, int SM, bool G8, bool OL>
__device__ __forceinline__ void issue_quad(unsigned char *st, const DevLayer &L, const Src<B, SM, G8> &s, int q,
                                           uint32_t e0, uint32_t n) {
    typedef Stage<B, SM, G8> S;
    typedef StatCfg<SM, G8> SC;
    const uint4 *cg = s.codes + (size_t)q * B * 32;
    uint4 *cs = reinterpret_cast<uint4 *>(st + S::CODES) + s.lane;
#pragma unroll
    for (int u = 0; u < B; u++) cp16(cs + u * 32, cg + u * 32);
    if (SC::SW == 2) {
        cp8(reinterpret_cast<uint2 *>(st + S::STATS) + s.lane, s.stats + (size_t)q * 64);
    } else {
        const uint32_t *sg = s.stats + (size_t)q * (SC::SW / 4) * 128;
        uint4 *ss = reinterpret_cast<uint4 *>(st + S::STATS) + s.lane;
#pragma unroll
        for (int i = 0; i < SC::SW / 4; i++) cp16(ss + i * 32, sg + i * 128);
    }
    if (SM == SM_BIL4 && s.lane < 4 * SC::S2) { /* second-level statistics: lane = (window, quarter, group) */
        uint2 *d2 = reinterpret_cast<uint2 *>(st + S::STATS2) + s.s2t * SC::S2 + s.s2wi * SC::NG + s.s2grp;
        const uint2 *src = L.s2step ? s.s2 + (size_t)q * L.s2step
                                    : s.s2row + group_of(L, 4 * q + s.s2wi, s.s2t, s.s2grp);
        cp8(d2, src);
    }
    if (OL) {
        uint32_t *es = reinterpret_cast<uint32_t *>(st + S::ENT);
        const uint32_t m = min(n, (uint32_t)OL_CAP);
        if ((uint32_t)s.lane < m) cp4(es + s.lane, L.ol + e0 + s.lane);
        if ((uint32_t)s.lane + 32 < m) cp4(es + s.lane + 32, L.ol + e0 + s.lane + 32);
    }
}

template <int B, int SM, bool G8>
__device__ __forceinline__ void read_stage(const unsigned char *st, int lane, uint4 (&cr)[B],
                                           uint32_t (&sr)[StatCfg<SM, G8>::SW]) {
    typedef Stage<B, SM, G8> S;
    typedef StatCfg<SM, G8> SC;
#pragma unroll
    for (int u = 0; u < B; u++) cr[u] = reinterpret_cast<const uint4 *>(st + S::CODES)[u * 32 + lane];
    if (SC::SW == 2) {
        const uint2 v = reinterpret_cast<const uint2 *>(st + S::STATS)[lane];
        sr[0] = v.x;
        sr[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < SC::SW / 4; i++) {
            const uint4 v = reinterpret_cast<const uint4 *>(st + S::STATS)[i * 32 + lane];
            sr[4 * i] = v.x;
            sr[4 * i + 1] = v.y;
            sr[4 * i + 2] = v.z;
            sr[4 * i + 3] = v.w;
        }
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
        const uint32_t x = G8 ? sr[wi] : sr[wi >> 1];
        const int base = 8 * (G8 ? grp : (wi & 1)) + 4 * h;
        const uint2 q2 = s2q[G8 ? 2 * wi + grp : wi];
        const float2 z2 = __half22float2(*reinterpret_cast<const __half2 *>(&q2.x)); /* s2_zero, z2_zero */
        const float2 c2 = __half22float2(*reinterpret_cast<const __half2 *>(&q2.y)); /* s2_scale, -z2_scale */
        /* exact: the codes as floats through 2^23 + code, then as qlayer.h defines s and -z */
        const float sc = u2f4(x, base), zc = u2f4(x, base + 16);
        return make_float2(c2.x * (sc - z2.x), c2.y * (zc - z2.y));
    } else {
        const uint32_t v = sr[G8 ? 4 * wi + 2 * grp + h : 2 * wi + h];
        return __half22float2(*reinterpret_cast<const __half2 *>(&v));
    }
}

/* (s, s) and (-s*z, -s*z) from a half2 (s, -z) */
__device__ __forceinline__ void stat_pair(uint32_t v, uint32_t &ss, uint32_t &nsz) {
    ss = prmt(v, v, 0x1010u);
    nsz = hmul2u(ss, prmt(v, v, 0x3232u));
}

/* split-K: partial results are in ws; the last block of a row block sums
 * them in split order (deterministic) */
__device__ void split_finish(const MainArgs &A, int row0) {
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned old = atomicAdd(&A.cnt[blockIdx.x], 1u);
        s_last = (old == gridDim.y - 1);
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const DevLayer &L = A.L;
    const int nrow = min(16 * WPB, L.rows - row0);
    const int ns = gridDim.y;
    for (int idx = threadIdx.x; idx < A.T * nrow; idx += blockDim.x) {
        const int t = idx / nrow, r = row0 + idx % nrow;
        float s = 0.f;
        for (int sp = 0; sp < ns; sp++) s += __ldcg(&A.ws[((size_t)sp * A.T + t) * L.rows_pad + r]);
        A.Y[(size_t)t * L.rows + r] = s;
    }
    if (threadIdx.x == 0) A.cnt[blockIdx.x] = 0;
}

__device__ __forceinline__ void mma16816_zc(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    d[0] = d[1] = d[2] = d[3] = 0.f;
    mma16816(d, a, b0, b1);
}

/* ======================================================================== */
/* Batch-1 kernel: the 4 quarters' groups in the mma's n dimension           */
/* ======================================================================== */
/* B column n = 2*t + plane holds the inputs of quarter t (plane 0: fp16(x),
 * plane 1: fp16(x - fp16(x)), divided by the bit scale of each duo), zero
 * elsewhere, so C[row][2t + plane] is the raw dot product of quarter t: lane
 * (g, t) receives exactly its own rows and quarter. A holds the raw fields
 * 1024 + sigma*c; y += s * (dot - off - z * xs) with off = 1024 * sum(b) and
 * xs = sum(sigma * b) per quarter from the prep kernel. */
template <int B, int SM, bool G8>
__global__ void __launch_bounds__(WPB * 32) k_gemv(MainArgs A) {
    typedef Stage<B, SM, G8> S;
    typedef StatCfg<SM, G8> SC;
    typedef WarpSmem<B, SM, G8> WS;
    constexpr int NS = S::NS;
    extern __shared__ __align__(16) unsigned char smem[];
    const DevLayer &L = A.L;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned char *wsm = smem + warp * WS::BYTES_GEMV;
    uint32_t *s_off = reinterpret_cast<uint32_t *>(wsm + WS::OFF);
    float *acc = reinterpret_cast<float *>(wsm + WS::ACC); /* [lane][17] */
    const int tile = blockIdx.x * WPB + warp;
    const bool active = tile < L.ntiles;
    const int q0 = blockIdx.y * A.qper, q1 = min(q0 + A.qper, L.nquads);
    for (int i = 0; i < 17; i++) acc[lane * 17 + i] = 0.f;
    float y0 = 0.f, y1 = 0.f; /* rows g, g+8 over the lane's quarters */

    if (active && q0 < q1) {
        Src<B, SM, G8> s;
        src_init(s, L, tile, lane);
        const uint32_t *off = L.ol_off + (size_t)tile * L.nquads + q0;
        for (int i = lane; i <= q1 - q0; i += 32) s_off[i] = __ldg(off + i);
        __syncwarp();
#pragma unroll
        for (int k = 0; k < NS - 1; k++) {
            if (q0 + k < q1) issue_quad<B, SM, G8, true>(wsm + k * S::BYTES, L, s, q0 + k, s_off[k], s_off[k + 1] - s_off[k]);
            cp_commit();
        }
        /* B fragments: lanes with g / 2 == t read their plane of quarter t, the others a zero line */
        const bool own = (s.g >> 1) == s.t;
        grid_dep_wait(); /* the prep kernel's inputs are complete past this point */
        const uint4 *xg = A.xg + (own ? 2 * s.g : 16 * (L.cols_pad / 64));
        const int xstride = own ? 16 : 0; /* uint4 per window */
        const float2 *ox = A.ox + (size_t)s.t * SC::NG;
        for (int qb = q0; qb < q1; qb += NS) {
#pragma unroll
        for (int j = 0; j < NS; j++) { /* stage j holds quad qb + j */
            const int q = qb + j;
            if (q >= q1) break;
            const int k = q - q0;
            __syncwarp();
            if (q + NS - 1 < q1)
                issue_quad<B, SM, G8, true>(wsm + ((j + NS - 1) % NS) * S::BYTES, L, s, q + NS - 1, s_off[k + NS - 1],
                                            s_off[k + NS] - s_off[k + NS - 1]);
            cp_commit();
            cp_wait<NS - 1>();
            __syncwarp();
            const unsigned char *st = wsm + j * S::BYTES;
            uint4 cr[B];
            uint32_t sr[SC::SW];
            read_stage<B, SM, G8>(st, lane, cr, sr);
            const uint2 *s2q = reinterpret_cast<const uint2 *>(st + S::STATS2) + s.t * SC::S2;
#pragma unroll
            for (int wi = 0; wi < 4; wi++) {
                const int w = 4 * q + wi;
                const uint4 *xr = xg + (size_t)w * xstride;
                const uint4 xa = __ldg(xr), xb = __ldg(xr + 1);
#pragma unroll
                for (int grp = 0; grp < SC::NG; grp++) {
                    float c[4];
#pragma unroll
                    for (int kk = 0; kk < 4 / SC::NG; kk++) {
                        const int kt = grp * (4 / SC::NG) + kk;
                        uint32_t a[4];
                        decode_raw<B>(cr, wi, kt, a);
                        const uint4 &xv = kt < 2 ? xa : xb;
                        const uint32_t b0 = (kt & 1) ? xv.z : xv.x, b1 = (kt & 1) ? xv.w : xv.y;
                        if (kk == 0) mma16816_zc(c, a, b0, b1);
                        else mma16816(c, a, b0, b1);
                    }
                    const float2 o = __ldg(ox + ((size_t)w * 4) * SC::NG + grp); /* (off, xs) */
                    const float2 st0 = stats_f32<SM, G8>(sr, s2q, wi, grp, 0);
                    const float2 st1 = stats_f32<SM, G8>(sr, s2q, wi, grp, 1);
                    y0 = fmaf(st0.x, fmaf(st0.y, o.y, (c[0] + c[1]) - o.x), y0);
                    y1 = fmaf(st1.x, fmaf(st1.y, o.y, (c[2] + c[3]) - o.x), y1);
                }
            }
            /* outliers of quad q into this lane's private accumulators */
            const uint32_t *es = reinterpret_cast<const uint32_t *>(st + S::ENT);
            const uint32_t e0 = s_off[k], n = s_off[k + 1] - e0;
            for (uint32_t i = lane; i < n; i += 32) {
                const uint32_t en = i < OL_CAP ? es[i] : __ldg(L.ol + e0 + i);
                const int col = q * QCOLS + (int)(en & 255u), row = (int)((en >> 8) & 15u);
                acc[lane * 17 + row] += h2f(en >> 16) * __ldg(A.xf + col);
            }
        }
        }
        cp_wait<0>();
    } else {
        grid_dep_wait();
    }
    /* rows g, g+8: sum over the 4 quarters, then the outlier sums of the row */
    y0 += __shfl_xor_sync(0xffffffffu, y0, 1);
    y0 += __shfl_xor_sync(0xffffffffu, y0, 2);
    y1 += __shfl_xor_sync(0xffffffffu, y1, 1);
    y1 += __shfl_xor_sync(0xffffffffu, y1, 2);
    __syncwarp();
    float ol = 0.f; /* lane r < 16: outlier sum of row r */
    if (lane < 16)
        for (int i = 0; i < 32; i++) ol += acc[i * 17 + lane];
    const int g = lane >> 2;
    const float o0 = __shfl_sync(0xffffffffu, ol, g), o1 = __shfl_sync(0xffffffffu, ol, g + 8);
    const bool split = gridDim.y > 1;
    if (active && (lane & 3) == 0) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = 16 * tile + g + 8 * h;
            if (row >= L.rows) continue;
            const float v = h ? y1 + o1 : y0 + o0;
            if (split) A.ws[(size_t)blockIdx.y * L.rows_pad + row] = v;
            else A.Y[row] = v;
        }
    }
    if (split) split_finish(A, blockIdx.x * WPB * 16);
}

/* ======================================================================== */
/* Batch-T kernel: tokens in the mma's n dimension, fp16 weights             */
/* ======================================================================== */
template <int B, int SM, bool G8, int NT>
__device__ __forceinline__ void compute_quad(const unsigned char *st, const DevLayer &L, int lane, int g, int t, int q,
                                             const __half *__restrict__ xp, float (&c)[NT][4]) {
    typedef Stage<B, SM, G8> S;
    typedef StatCfg<SM, G8> SC;
    uint4 cr[B];
    uint32_t sr[SC::SW];
    read_stage<B, SM, G8>(st, lane, cr, sr);
    const uint2 *s2q = reinterpret_cast<const uint2 *>(st + S::STATS2) + t * SC::S2;
#pragma unroll
    for (int wi = 0; wi < 4; wi++) {
        const int w = 4 * q + wi;
        constexpr int NX = NT <= 2 ? NT : 1;
        uint4 xa[NX], xb[NX];
        const __half *xw = xp + (size_t)g * L.cols_pad + 64 * w + 16 * t;
        if (NT <= 2) {
#pragma unroll
            for (int nt = 0; nt < NX; nt++) {
                const uint4 *xr = reinterpret_cast<const uint4 *>(xw + (size_t)8 * nt * L.cols_pad);
                xa[nt] = __ldg(xr);
                xb[nt] = __ldg(xr + 1);
            }
        }
        uint32_t ss[2][SC::NG], nsz[2][SC::NG];
#pragma unroll
        for (int grp = 0; grp < SC::NG; grp++) {
            uint32_t p0, p1;
            if (SM == SM_BIL4) {
                uint32_t x = G8 ? sr[wi] : sr[wi >> 1];
                const int sh = G8 ? 8 * grp : 8 * (wi & 1);
                if (sh) x >>= sh;
                p0 = unbias<0>(lop3_and_or(x, 0x000f000fu, MAGIC16));
                p1 = unbias<4>(lop3_and_or(x, 0x00f000f0u, MAGIC16));
                const uint2 q2 = s2q[G8 ? 2 * wi + grp : wi];
                p0 = hmul2u(hsub2u(p0, q2.x), q2.y);
                p1 = hmul2u(hsub2u(p1, q2.x), q2.y);
            } else {
                const int i = G8 ? 4 * wi + 2 * grp : 2 * wi;
                p0 = sr[i];
                p1 = sr[i + 1];
            }
            stat_pair(p0, ss[0][grp], nsz[0][grp]);
            stat_pair(p1, ss[1][grp], nsz[1][grp]);
        }
#pragma unroll
        for (int kt = 0; kt < 4; kt++) {
            uint32_t a[4];
            decode_kt<B>(cr, wi, kt, a);
            const int grp = G8 ? (kt >> 1) : 0;
            a[0] = hfma2u(a[0], ss[0][grp], nsz[0][grp]);
            a[2] = hfma2u(a[2], ss[0][grp], nsz[0][grp]);
            a[1] = hfma2u(a[1], ss[1][grp], nsz[1][grp]);
            a[3] = hfma2u(a[3], ss[1][grp], nsz[1][grp]);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if (NT <= 2) {
                    const uint4 &xv = kt < 2 ? xa[nt] : xb[nt];
                    mma16816(c[nt], a, (kt & 1) ? xv.z : xv.x, (kt & 1) ? xv.w : xv.y);
                } else {
                    const uint2 xv = __ldg(reinterpret_cast<const uint2 *>(xw + (size_t)8 * nt * L.cols_pad + 4 * kt));
                    mma16816(c[nt], a, xv.x, xv.y);
                }
            }
        }
    }
}

template <int B, int SM, bool G8, int NT>
__global__ void __launch_bounds__(WPB * 32) k_gemm(MainArgs A) {
    typedef Stage<B, SM, G8> S;
    typedef WarpSmem<B, SM, G8> WS;
    constexpr int NS = S::NS;
    extern __shared__ __align__(16) unsigned char smem[];
    const DevLayer &L = A.L;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned char *wsm = smem + warp * WS::BYTES_GEMM;
    const int tile = blockIdx.x * WPB + warp;
    const bool active = tile < L.ntiles;
    const int q0 = blockIdx.y * A.qper, q1 = min(q0 + A.qper, L.nquads);
    float c[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.f;
    const int g = lane >> 2, t = lane & 3;
    if (active && q0 < q1) {
        Src<B, SM, G8> s;
        src_init(s, L, tile, lane);
#pragma unroll
        for (int k = 0; k < NS - 1; k++) {
            if (q0 + k < q1) issue_quad<B, SM, G8, false>(wsm + k * S::BYTES, L, s, q0 + k, 0, 0);
            cp_commit();
        }
        grid_dep_wait();
        for (int qb = q0; qb < q1; qb += NS) {
#pragma unroll
        for (int j = 0; j < NS; j++) { /* stage j holds quad qb + j */
            const int q = qb + j;
            if (q >= q1) break;
            __syncwarp();
            if (q + NS - 1 < q1) issue_quad<B, SM, G8, false>(wsm + ((j + NS - 1) % NS) * S::BYTES, L, s, q + NS - 1, 0, 0);
            cp_commit();
            cp_wait<NS - 1>();
            __syncwarp();
            compute_quad<B, SM, G8, NT>(wsm + j * S::BYTES, L, lane, g, t, q, A.xp, c);
        }
        }
        cp_wait<0>();
    } else {
        grid_dep_wait();
    }
    const bool split = gridDim.y > 1;
    if (active) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int lr = g + 8 * (j >> 1), n = 8 * nt + 2 * t + (j & 1);
                const int row = 16 * tile + lr;
                if (n >= A.T || row >= L.rows) continue;
                if (split) A.ws[((size_t)blockIdx.y * A.T + n) * L.rows_pad + row] = c[nt][j];
                else A.Y[(size_t)n * L.rows + row] = c[nt][j];
            }
    }
    if (split) split_finish(A, blockIdx.x * WPB * 16);
}

/* Outliers of the batch-T kernel, added to Y after it: 8 lanes per row of
 * the row-ordered copy of the outliers (4 rows per warp); each lane sums its
 * entries for all tokens in registers, then the 8 lanes' sums are combined
 * with shuffles (a fixed order). */
template <int NT>
__global__ void __launch_bounds__(128) k_outliers(DevLayer L, const __half *__restrict__ xpT, int T,
                                                  float *__restrict__ Y) {
    const int lane = threadIdx.x & 31, sub = lane & 7;
    const int r = (blockIdx.x * 128 + threadIdx.x) >> 3;
    const bool ok = r < L.rows;
    float acc[8 * NT];
#pragma unroll
    for (int n = 0; n < 8 * NT; n++) acc[n] = 0.f;
    const uint32_t k1 = ok ? __ldg(L.orow + r + 1) : 0;
    /* four entries per lane and step, their loads issued before any use */
    for (uint32_t k = (ok ? __ldg(L.orow + r) : 0) + sub; k < k1; k += 32) {
        uint32_t col[4];
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const uint32_t kk = k + 8 * u;
            col[u] = kk < k1 ? __ldg(L.ocol + kk) : 0u;
            v[u] = kk < k1 ? h2f(__ldg(L.oval + kk)) : 0.f;
        }
        uint4 xv[4][NT];
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int o = 0; o < NT; o++)
                xv[u][o] = __ldg(reinterpret_cast<const uint4 *>(xpT + (size_t)col[u] * (8 * NT)) + o);
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int o = 0; o < NT; o++) {
                const uint32_t hh[4] = {xv[u][o].x, xv[u][o].y, xv[u][o].z, xv[u][o].w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&hh[i]));
                    acc[8 * o + 2 * i] = fmaf(v[u], f.x, acc[8 * o + 2 * i]);
                    acc[8 * o + 2 * i + 1] = fmaf(v[u], f.y, acc[8 * o + 2 * i + 1]);
                }
            }
    }
#pragma unroll
    for (int n = 0; n < 8 * NT; n++) {
        float a = acc[n];
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        a += __shfl_xor_sync(0xffffffffu, a, 2);
        a += __shfl_xor_sync(0xffffffffu, a, 4);
        acc[n] = a;
    }
    if (!ok) return;
#pragma unroll
    for (int n = 0; n < 8 * NT; n++)
        if ((n & 7) == sub && n < T) Y[(size_t)n * L.rows + r] += acc[n];
}

/* ======================================================================== */
/* Prep kernels                                                              */
/* ======================================================================== */

/* batch-1 inputs, one thread per column j of window w, quarter t:
 * xg[w][2t + plane][16] halves: plane 0 = fp16(x / sigma), plane 1 =
 * fp16(x / sigma - plane 0), sigma the bit scale of the column's duo; the
 * window w = nwin is the zero line. ox[w][t] (x 2 halves when ng = 2) =
 * (1024 * sum b, sum sigma * b) with b = plane 0 + plane 1. xf: float32
 * permuted x (outliers). */
__global__ void __launch_bounds__(256) k_prep1(const int32_t *__restrict__ perm, int cols, int cols_pad, int B,
                                               int ng, const float *__restrict__ X, __half *__restrict__ xg,
                                               float2 *__restrict__ ox, float *__restrict__ xf) {
    grid_dep_launch();
    const int j = blockIdx.x * blockDim.x + threadIdx.x; /* grid covers cols_pad + 64 exactly */
    const int nwin = cols_pad / 64, w = j >> 6, t = (j >> 4) & 3, i = j & 15;
    const float x = j < cols ? __ldg(X + __ldg(perm + j)) : 0.f;
    const int kt = i >> 2, k = duo_k(B, kt, (i >> 1) & 1);
    const float sig = (float)(1 << k);
    const __half hi = __float2half_rn(x / sig);
    const __half lo = __float2half_rn(x / sig - __half2float(hi));
    __half *d = xg + ((size_t)w * 8 + 2 * t) * 16 + i;
    d[0] = hi;
    d[16] = lo;
    if (w >= nwin) return; /* zero line: whole warps, no shuffles below for them */
    xf[j] = x;
    const float b = __half2float(hi) + __half2float(lo);
    float o = 1024.f * b, xs = sig * b;
    const int span = ng == 2 ? 8 : 16;
    for (int m = 1; m < span; m <<= 1) {
        o += __shfl_xor_sync(0xffffffffu, o, m);
        xs += __shfl_xor_sync(0xffffffffu, xs, m);
    }
    if ((i & (span - 1)) == 0) ox[((size_t)w * 4 + t) * ng + (ng == 2 ? (i >> 3) : 0)] = make_float2(o, xs);
}

/* batch-T inputs: xp[n][j] = xpT[j][n] = fp16(X[n][perm[j]]) for n < T,
 * j < cols; zero padding up to Tpad tokens and cols_pad columns */
__global__ void __launch_bounds__(256) k_prep(const int32_t *__restrict__ perm, int cols, int cols_pad,
                                              const float *__restrict__ X, int T, int Tpad, __half *__restrict__ xp,
                                              __half *__restrict__ xpT) {
    grid_dep_launch();
    const int n = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols_pad) return;
    float v = 0.f;
    if (n < T && j < cols) v = __ldg(X + (size_t)n * cols + __ldg(perm + j));
    const __half h = __float2half_rn(v);
    xp[(size_t)n * cols_pad + j] = h;
    xpT[(size_t)j * Tpad + n] = h;
}

/* dequantized weight (row r, permuted column j) read from the fast layout,
 * in float32 exactly as qlayer.h defines it (for the statistics the layout
 * holds: exact for bilevel 4-bit codes and for fp16 statistics) */
__device__ float deq_fast(const DevLayer &L, int r, int j) {
    const int tile = r >> 4, lr = r & 15, g = lr & 7, h = lr >> 3;
    const int q = j / QCOLS, wi = (j % QCOLS) / 64, cw = j % 64, t = cw / 16, cq = cw % 16;
    const int kt = cq / 4, sl = cq % 4, lane = 4 * g + t;
    const int p = 4 * kt + h + 2 * (sl >> 1), e = sl & 1;
    const uint32_t *cw32 = reinterpret_cast<const uint32_t *>(L.codes);
    int wd, bit;
    code_loc(L.B, p, e, &wd, &bit);
    uint32_t code;
    if (wd < 0) {
        code = 0;
        for (int b = 0; b < 3; b++)
            code |= ((cw32[code_word_index(3, L.nquads, tile, q, lane, wi * 3 + b)] >> bit) & 1u) << b;
    } else {
        const uint32_t v = cw32[code_word_index(L.B, L.nquads, tile, q, lane, wi * L.B + wd)];
        code = (v >> bit) & ((1u << L.B) - 1u);
    }
    const int grp = L.g8 ? (kt >> 1) : 0;
    float s, nz;
    if (L.smode == SM_BIL4) {
        const int i = L.g8 ? wi : (wi >> 1);
        const int base = 8 * (L.g8 ? grp : (wi & 1)) + 4 * h;
        const uint32_t sw = L.stats[stat_word_index(L.sw, L.nquads, tile, q, lane, i)];
        const uint32_t sc = (sw >> base) & 15u, zc = (sw >> (base + 16)) & 15u;
        const int G = group_of(L, 4 * q + wi, t, grp);
        const int rb = min(r / L.beta2, L.nrb - 1);
        const uint2 q2 = L.stats2[(size_t)rb * L.ng2 + G];
        s = h2f(q2.y) * ((float)sc - h2f(q2.x));
        nz = h2f(q2.y >> 16) * ((float)zc - h2f(q2.x >> 16));
    } else {
        const int i = L.g8 ? 4 * wi + 2 * grp + h : 2 * wi + h;
        const uint32_t v = L.stats[stat_word_index(L.sw, L.nquads, tile, q, lane, i)];
        s = h2f(v);
        nz = h2f(v >> 16);
    }
    return s * ((float)code + nz);
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
        const int tile = r >> 4, lr = r & 15;
        for (int q = 0; q < L.nquads; q++) {
            const uint32_t e0 = L.ol_off[(size_t)tile * L.nquads + q], e1 = L.ol_off[(size_t)tile * L.nquads + q + 1];
            for (uint32_t e = e0; e < e1; e++) {
                const uint32_t en = L.ol[e];
                if ((int)((en >> 8) & 15u) != lr) continue;
                const int col = q * QCOLS + (int)(en & 255u);
                acc += (double)h2f(en >> 16) * (double)__ldg(x + __ldg(L.perm + col));
            }
        }
    } else {
        int G = -1;
        float s = 0.f, z = 0.f;
        for (int j = 0; j < L.cols; j++) {
            if (j / L.beta1 != G) {
                G = j / L.beta1;
                const float2 sz = L.gstats[(size_t)r * L.ngroups + G];
                s = sz.x;
                z = sz.y;
            }
            const float w = s * ((float)L.gcodes[(size_t)r * L.cols + j] - z);
            acc += (double)w * (double)__ldg(x + __ldg(L.perm + j));
        }
        for (uint32_t k = L.grow[r]; k < L.grow[r + 1]; k++)
            acc += (double)L.gval[k] * (double)__ldg(x + __ldg(L.perm + L.gcol[k]));
    }
    Y[(size_t)n * L.rows + r] = (float)acc;
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

/* ---- upload -------------------------------------------------------------- */

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

/* (scale, zero) of (row r, group g) exactly as qlayer.h defines them */
static void host_stats(const spqr_qlayer *q, int r, int g, float *s, float *z) { spqr_qlayer_group_stats(q, r, g, s, z); }

static spqr_status validate_layer(const spqr_qlayer *q) {
    if (q->rows < 1 || q->cols < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad shape %dx%d", q->rows, q->cols);
    if (q->wbits < 2 || q->wbits > 8)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: wbits %d not in 2..8", q->wbits);
    if (q->beta1 < 1 || q->beta2 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad group sizes beta1=%d beta2=%d", q->beta1,
                         q->beta2);
    if (q->ngroups != ceil_div(q->cols, q->beta1))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: ngroups %d != ceil(%d/%d)", q->ngroups, q->cols,
                         q->beta1);
    if (q->beta2 > 0) {
        if (q->sbits < 1 || q->sbits > 8 || q->zbits < 1 || q->zbits > 8)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: sbits/zbits %d/%d not in 1..8", q->sbits,
                             q->zbits);
        if (q->nrb != ceil_div(q->rows, q->beta2))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: nrb %d != ceil(%d/%d)", q->nrb, q->rows,
                             q->beta2);
        if (!q->scale_code || !q->zero_code || !q->s2_scale || !q->s2_zero || !q->z2_scale || !q->z2_zero)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bilevel statistics missing");
    } else if (!q->scale_f16 || !q->zero_f16) {
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: fp16 statistics missing");
    }
    if (!q->perm || !q->codes) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: codes/perm missing");
    if (q->n_outliers < 0 || (q->n_outliers > 0 && (!q->row_ptr || !q->ol_col || !q->ol_val)) ||
        q->n_outliers > 0xffffffffll)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: bad outlier arrays");
    return SPQR_OK;
}

static spqr_status validate_contents(const spqr_qlayer *q) {
    for (int j = 0; j < q->cols; j++)
        if (q->perm[j] < 0 || q->perm[j] >= q->cols)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: perm[%d] = %d out of range", j, q->perm[j]);
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
    return SPQR_OK;
}

/* the fast layout's sections, host side */
static void pack_fast(const spqr_qlayer *q, const DevLayer &L, uint32_t *hc, uint32_t *hs, uint2 *h2,
                      uint32_t *hp, uint32_t *ho) {
    const int rows = q->rows, cols = q->cols, B = L.B, nq = L.nquads;
    const uint32_t cmask = (1u << B) - 1u;
    const uint8_t *codes = q->codes;
    /* codes */
    parallel_for(L.ntiles, [&](int ta, int tb) {
        for (int tile = ta; tile < tb; tile++)
            for (int qq = 0; qq < nq; qq++)
                for (int lane = 0; lane < 32; lane++) {
                    const int g = lane >> 2, t = lane & 3;
                    uint32_t w[32];
                    memset(w, 0, sizeof w);
                    for (int wi = 0; wi < 4; wi++)
                        for (int p = 0; p < 16; p++)
                            for (int e = 0; e < 2; e++) {
                                const int kt = p >> 2, r = p & 3;
                                const int row = tile * 16 + g + 8 * (r & 1);
                                const int col = qq * QCOLS + wi * 64 + 16 * t + 4 * kt + 2 * (r >> 1) + e;
                                if (row >= rows || col >= cols) continue;
                                const uint32_t c = codes[(size_t)row * cols + col] & cmask;
                                int wd, bit;
                                code_loc(B, p, e, &wd, &bit);
                                if (wd < 0) {
                                    for (int b = 0; b < 3; b++) w[wi * 3 + b] |= ((c >> b) & 1u) << bit;
                                } else {
                                    w[wi * B + wd] |= c << bit;
                                }
                            }
                    for (int j = 0; j < 4 * B; j++) hc[code_word_index(B, nq, tile, qq, lane, j)] = w[j];
                }
    });
    /* first-level statistics */
    parallel_for(L.ntiles, [&](int ta, int tb) {
        for (int tile = ta; tile < tb; tile++)
            for (int qq = 0; qq < nq; qq++)
                for (int lane = 0; lane < 32; lane++) {
                    const int g = lane >> 2, t = lane & 3;
                    uint32_t w[16];
                    memset(w, 0, sizeof w);
                    for (int wi = 0; wi < 4; wi++)
                        for (int grp = 0; grp < (L.g8 ? 2 : 1); grp++)
                            for (int h = 0; h < 2; h++) {
                                const int row = tile * 16 + g + 8 * h;
                                const int G = group_of(L, qq * 4 + wi, t, grp);
                                if (row >= rows) continue;
                                if (L.smode == SM_BIL4) {
                                    const size_t si = (size_t)G * rows + row;
                                    const int i = L.g8 ? wi : (wi >> 1);
                                    const int base = 8 * (L.g8 ? grp : (wi & 1)) + 4 * h;
                                    w[i] |= ((uint32_t)q->scale_code[si] & 15u) << base;
                                    w[i] |= ((uint32_t)q->zero_code[si] & 15u) << (base + 16);
                                } else {
                                    uint16_t sh, zh;
                                    if (q->beta2 == 0) {
                                        sh = q->scale_f16[(size_t)G * rows + row];
                                        zh = q->zero_f16[(size_t)G * rows + row];
                                    } else {
                                        float s, z;
                                        host_stats(q, row, G, &s, &z);
                                        sh = spqr_f32_to_f16(s);
                                        zh = spqr_f32_to_f16(z);
                                    }
                                    const int i = L.g8 ? 4 * wi + 2 * grp + h : 2 * wi + h;
                                    w[i] = (uint32_t)sh | ((uint32_t)(zh ^ 0x8000u) << 16);
                                }
                            }
                    for (int i = 0; i < L.sw; i++) hs[stat_word_index(L.sw, nq, tile, qq, lane, i)] = w[i];
                }
    });
    /* second-level statistics: x = s2_zero | z2_zero << 16, y = s2_scale | -z2_scale << 16 */
    if (L.smode == SM_BIL4)
        for (int rb = 0; rb < L.nrb; rb++)
            for (int G = 0; G < L.ngroups; G++) { /* the padding groups stay zero */
                const size_t si = (size_t)G * L.nrb + rb;
                h2[(size_t)rb * L.ng2 + G] =
                    make_uint2((uint32_t)q->s2_zero[si] | ((uint32_t)q->z2_zero[si] << 16),
                               (uint32_t)q->s2_scale[si] | ((uint32_t)(q->z2_scale[si] ^ 0x8000u) << 16));
            }
    /* outliers: buckets per (tile, quad), rows ascending, columns ascending within a row */
    uint32_t k = 0;
    for (int tile = 0; tile < L.ntiles; tile++) {
        uint32_t ptr[16], end[16];
        for (int i = 0; i < 16; i++) {
            const int r = tile * 16 + i;
            ptr[i] = (q->row_ptr && r < rows) ? q->row_ptr[r] : 0;
            end[i] = (q->row_ptr && r < rows) ? q->row_ptr[r + 1] : 0;
        }
        for (int qq = 0; qq < nq; qq++) {
            hp[(size_t)tile * nq + qq] = k;
            for (int i = 0; i < 16; i++)
                while (ptr[i] < end[i] && q->ol_col[ptr[i]] < (uint32_t)(qq + 1) * QCOLS) {
                    ho[k++] = (q->ol_col[ptr[i]] & 255u) | ((uint32_t)i << 8) | ((uint32_t)q->ol_val[ptr[i]] << 16);
                    ptr[i]++;
                }
        }
    }
    hp[(size_t)L.ntiles * nq] = k;
}

extern "C" spqr_status spqr_cuda_qlinear_upload(const spqr_qlayer *q, spqr_cuda_qlinear **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: out is NULL");
    *out = NULL;
    if (!q) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: layer is NULL");
    spqr_status st = validate_layer(q);
    if (st != SPQR_OK) return st;

    DevLayer L;
    memset(&L, 0, sizeof L);
    L.rows = q->rows;
    L.cols = q->cols;
    L.rows_pad = ceil_div(q->rows, 16) * 16;
    L.cols_pad = ceil_div(q->cols, QCOLS) * QCOLS;
    L.ntiles = L.rows_pad / 16;
    L.nquads = L.cols_pad / QCOLS;
    L.ngroups = q->ngroups;
    L.beta1 = q->beta1;
    L.beta2 = q->beta2;
    L.nrb = q->beta2 > 0 ? q->nrb : 0;
    L.wbits = q->wbits;
    L.B = q->wbits <= 4 ? q->wbits : 8;
    L.sbits = q->beta2 > 0 ? q->sbits : 0;
    L.zbits = q->beta2 > 0 ? q->zbits : 0;
    L.fast = q->beta1 == 8 || q->beta1 % 16 == 0;
    L.g8 = q->beta1 == 8;
    L.m1 = q->beta1 == 16;
    if (L.fast && !L.g8 && !L.m1) L.gmagic = (uint32_t)((0x100000000ull / (uint64_t)(q->beta1 / 16)) + 1);
    const bool bil4 = q->beta2 > 0 && q->beta2 % 16 == 0 && q->sbits <= 4 && q->zbits <= 4;
    if (L.fast) {
        const int m = L.g8 ? 1 : q->beta1 / 16;
        L.ng2 = L.g8 ? 32 * L.nquads : (16 * L.nquads - 1) / m + 1;
        L.s2step = L.g8 ? 32 : (16 % m == 0 ? 16 / m : 0);
        if (L.ng2 < L.ngroups) L.ng2 = L.ngroups;
    }
    L.smode = bil4 ? SM_BIL4 : SM_F16;
    L.sw = (bil4 ? 2 : 8) * (L.g8 ? 2 : 1);
    const int exact = !L.fast || bil4 || q->beta2 == 0;

    size_t b_codes = 0, b_stats = 0, b_stats2 = 0, b_olptr = 0, b_ol = 0;
    const size_t b_perm = (size_t)q->cols * 4;
    if (L.fast) {
        b_codes = (size_t)L.ntiles * L.nquads * L.B * 512;
        b_stats = (size_t)L.ntiles * L.nquads * L.sw * 128;
        b_stats2 = bil4 ? (size_t)L.nrb * L.ng2 * 8 : 0;
        b_olptr = ((size_t)L.ntiles * L.nquads + 1) * 4;
        b_ol = (size_t)q->n_outliers * 4;
    } else {
        b_codes = (size_t)q->rows * q->cols;
        b_stats = (size_t)q->rows * q->ngroups * 8;
        b_olptr = ((size_t)q->rows + 1) * 4;
        b_ol = (size_t)q->n_outliers * 8;
    }
    const size_t o_codes = 0, o_stats = align256(b_codes), o_stats2 = o_stats + align256(b_stats);
    const size_t o_olptr = o_stats2 + align256(b_stats2), o_ol = o_olptr + align256(b_olptr);
    const size_t o_perm = o_ol + align256(b_ol);
    /* fast layout: the row-ordered outlier copy for the batch-T kernel */
    const size_t b_orow = L.fast ? ((size_t)q->rows + 1) * 4 : 0, b_ocol = L.fast ? (size_t)q->n_outliers * 4 : 0;
    const size_t b_oval = L.fast ? (size_t)q->n_outliers * 2 : 0;
    const size_t o_orow = o_perm + align256(b_perm), o_ocol = o_orow + align256(b_orow);
    const size_t o_oval = o_ocol + align256(b_ocol), total = o_oval + align256(b_oval);

    {
        std::lock_guard<std::mutex> lk(g_mu);
        st = dev_init();
        if (st != SPQR_OK) return st;
    }
    size_t fr = 0, tot = 0;
    st = spqr_cuda_mem_info(&fr, &tot);
    if (st != SPQR_OK) return st;
    const size_t margin = 64ull << 20;
    if (total + margin > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE,
                         "cuda upload: %dx%d layer needs %.1f MiB of GPU memory (+%.0f MiB "
                         "reserve) but only %.1f MiB of %.1f MiB are free",
                         q->rows, q->cols, total / 1048576.0, margin / 1048576.0, fr / 1048576.0,
                         tot / 1048576.0);
    st = validate_contents(q);
    if (st != SPQR_OK) return st;

    unsigned char *h = (unsigned char *)calloc(1, total);
    if (!h) return spqr_fail(SPQR_ERR_NOMEM, "cuda upload: %zu bytes of host staging", total);
    if (L.fast) {
        pack_fast(q, L, (uint32_t *)(h + o_codes), (uint32_t *)(h + o_stats), (uint2 *)(h + o_stats2),
                  (uint32_t *)(h + o_olptr), (uint32_t *)(h + o_ol));
    } else {
        memcpy(h + o_codes, q->codes, b_codes);
        float2 *gs = (float2 *)(h + o_stats);
        for (int r = 0; r < q->rows; r++)
            for (int G = 0; G < q->ngroups; G++) {
                float s, z;
                host_stats(q, r, G, &s, &z);
                gs[(size_t)r * q->ngroups + G] = make_float2(s, z);
            }
        uint32_t *gr = (uint32_t *)(h + o_olptr);
        uint32_t *gc = (uint32_t *)(h + o_ol);
        float *gv = (float *)(h + o_ol + (size_t)q->n_outliers * 4);
        for (int r = 0; r <= q->rows; r++) gr[r] = q->row_ptr ? q->row_ptr[r] : 0;
        for (int64_t k = 0; k < q->n_outliers; k++) {
            gc[k] = q->ol_col[k];
            gv[k] = spqr_f16_to_f32(q->ol_val[k]);
        }
    }
    memcpy(h + o_perm, q->perm, b_perm);
    if (L.fast) {
        uint32_t *orow = (uint32_t *)(h + o_orow), *ocol = (uint32_t *)(h + o_ocol);
        uint16_t *oval = (uint16_t *)(h + o_oval);
        for (int r = 0; r <= q->rows; r++) orow[r] = q->row_ptr ? q->row_ptr[r] : 0;
        for (int64_t k = 0; k < q->n_outliers; k++) {
            ocol[k] = q->ol_col[k];
            oval[k] = q->ol_val[k];
        }
    }

    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, total);
    if (e != cudaSuccess) {
        free(h);
        (void)cudaGetLastError();
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuda upload: cudaMalloc of %.1f MiB failed: %s", total / 1048576.0,
                         cudaGetErrorString(e));
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
    if (L.fast) {
        L.codes = (const uint4 *)(db + o_codes);
        L.stats = (const uint32_t *)(db + o_stats);
        L.stats2 = bil4 ? (const uint2 *)(db + o_stats2) : NULL;
        L.ol_off = (const uint32_t *)(db + o_olptr);
        L.ol = (const uint32_t *)(db + o_ol);
    } else {
        L.gcodes = (const uint8_t *)(db + o_codes);
        L.gstats = (const float2 *)(db + o_stats);
        L.grow = (const uint32_t *)(db + o_olptr);
        L.gcol = (const uint32_t *)(db + o_ol);
        L.gval = (const float *)(db + o_ol + (size_t)q->n_outliers * 4);
    }
    L.perm = (const int32_t *)(db + o_perm);
    if (L.fast) {
        L.orow = (const uint32_t *)(db + o_orow);
        L.ocol = (const uint32_t *)(db + o_ocol);
        L.oval = (const uint16_t *)(db + o_oval);
    }
    w->L = L;
    w->dbuf = d;
    w->bytes = total;
    w->b_codes = b_codes;
    w->b_stats = b_stats;
    w->b_stats2 = b_stats2;
    w->b_ol = b_ol + b_olptr;
    w->b_perm = b_perm;
    w->n_ol = q->n_outliers;
    w->exact_stats = exact;
    *out = w;
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_qlinear_clone(const spqr_cuda_qlinear *w, spqr_cuda_qlinear **out) {
    if (!out || !w) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda clone: NULL argument");
    *out = NULL;
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    if (w->bytes + (64ull << 20) > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuda clone: needs %.1f MiB, %.1f MiB free", w->bytes / 1048576.0,
                         fr / 1048576.0);
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
    auto mv = [&](const void *p) -> const unsigned char * { return p ? (const unsigned char *)p + delta : NULL; };
    c->L.codes = (const uint4 *)mv(w->L.codes);
    c->L.stats = (const uint32_t *)mv(w->L.stats);
    c->L.stats2 = (const uint2 *)mv(w->L.stats2);
    c->L.ol_off = (const uint32_t *)mv(w->L.ol_off);
    c->L.ol = (const uint32_t *)mv(w->L.ol);
    c->L.perm = (const int32_t *)mv(w->L.perm);
    c->L.gcodes = (const uint8_t *)mv(w->L.gcodes);
    c->L.gstats = (const float2 *)mv(w->L.gstats);
    c->L.grow = (const uint32_t *)mv(w->L.grow);
    c->L.gcol = (const uint32_t *)mv(w->L.gcol);
    c->L.gval = (const float *)mv(w->L.gval);
    c->L.orow = (const uint32_t *)mv(w->L.orow);
    c->L.ocol = (const uint32_t *)mv(w->L.ocol);
    c->L.oval = (const uint16_t *)mv(w->L.oval);
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
    info->fast = w->L.fast;
    info->exact_stats = w->exact_stats;
}

/* ---- qgemm ----------------------------------------------------------------- */

static __half *g_xp;
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

typedef void (*main_fn)(MainArgs);
struct MainK {
    main_fn fn;
    int smem; /* dynamic shared memory per block */
};

/* nt == 0: the batch-1 kernel; 1, 2, 4, 8: the batch-T kernel */
template <int B, int SM, bool G8, int NT>
static MainK mk() {
    if (NT == 0) return MainK{k_gemv<B, SM, G8>, WPB * WarpSmem<B, SM, G8>::BYTES_GEMV};
    return MainK{k_gemm<B, SM, G8, NT == 0 ? 1 : NT>, WPB * WarpSmem<B, SM, G8>::BYTES_GEMM};
}
template <int B, int SM, bool G8>
static MainK pick_nt(int nt) {
    switch (nt) {
    case 0: return mk<B, SM, G8, 0>();
    case 1: return mk<B, SM, G8, 1>();
    case 2: return mk<B, SM, G8, 2>();
    case 4: return mk<B, SM, G8, 4>();
    default: return mk<B, SM, G8, 8>();
    }
}
template <int B>
static MainK pick_stat(int smode, bool g8, int nt) {
    if (smode == SM_BIL4) return g8 ? pick_nt<B, SM_BIL4, true>(nt) : pick_nt<B, SM_BIL4, false>(nt);
    return g8 ? pick_nt<B, SM_F16, true>(nt) : pick_nt<B, SM_F16, false>(nt);
}
static MainK pick_main(const DevLayer &L, int nt) {
    switch (L.B) {
    case 2: return pick_stat<2>(L.smode, L.g8, nt);
    case 3: return pick_stat<3>(L.smode, L.g8, nt);
    case 4: return pick_stat<4>(L.smode, L.g8, nt);
    default: return pick_stat<8>(L.smode, L.g8, nt);
    }
}
static int nt_slot(int nt) { return nt == 0 ? 0 : nt == 1 ? 1 : nt == 2 ? 2 : nt == 4 ? 3 : 4; }

struct KInfo {
    MainK k;
    int bps;  /* resident blocks per SM */
    bool pdl; /* compiled with griddepcontrol (sm_90 code) */
    bool init;
};
/* [B slot][smode][g8][nt slot] */
static KInfo g_ki[4][2][2][5];

static spqr_status kinfo(const DevLayer &L, int nt, KInfo **out) {
    const int bs = L.B == 2 ? 0 : L.B == 3 ? 1 : L.B == 4 ? 2 : 3;
    KInfo &ki = g_ki[bs][L.smode][L.g8][nt_slot(nt)];
    if (!ki.init) {
        ki.k = pick_main(L, nt);
        const void *fn = (const void *)ki.k.fn;
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, fn), "cudaFuncGetAttributes");
        CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, ki.k.smem), "cudaFuncSetAttribute");
        int bps = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, fn, WPB * 32, ki.k.smem), "occupancy");
        if (bps < 1) return spqr_fail(SPQR_ERR_NO_DEVICE, "qgemm: kernel does not fit on this device");
        ki.bps = bps;
        ki.pdl = fa.ptxVersion >= 90 && g_prop.major >= 9;
        ki.init = true;
    }
    *out = &ki;
    return SPQR_OK;
}

/* split-K factor: enough warps for one full wave of the device, at least two
 * quads per split, at most MAXQ */
static int pick_split(const DevLayer &L, int bps) {
    const int slots = g_prop.multiProcessorCount * bps; /* resident blocks */
    const int row_blocks = ceil_div(L.ntiles, WPB);
    const int need = ceil_div(L.nquads, MAXQ);
    const int cap = std::max(need, L.nquads / 2);
    if (row_blocks * need >= slots) return need;
    int best = need;
    double best_eff = -1;
    for (int ns = need; ns <= cap; ns++) {
        const int qper = ceil_div(L.nquads, ns);
        const int used = ceil_div(L.nquads, qper); /* splits that get work */
        const double waves = (double)row_blocks * used / slots;
        /* utilization of the last wave, with a small cost per extra split */
        const double eff = waves / std::ceil(waves) * std::min(1.0, waves) - 0.01 * used;
        if (eff > best_eff + 1e-9) {
            best_eff = eff;
            best = used;
        }
    }
    return best;
}

static spqr_status launch_main(const MainK &k, dim3 grid, bool pdl, MainArgs A) {
    void *args[1] = {&A};
    main_fn fn = k.fn;
    if (pdl) {
        cudaLaunchConfig_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.gridDim = grid;
        cfg.blockDim = dim3(WPB * 32);
        cfg.dynamicSmemBytes = (size_t)k.smem;
        cfg.stream = 0;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cudaError_t e = cudaLaunchKernelExC(&cfg, (const void *)fn, args);
        if (e == cudaSuccess) return SPQR_OK;
        (void)cudaGetLastError(); /* fall back to a plain launch */
    }
    CK(cudaLaunchKernel((const void *)fn, grid, dim3(WPB * 32), args, (size_t)k.smem, 0), "kernel launch");
    return SPQR_OK;
}

static int auto_nt(int T) { return T <= 8 ? 1 : T <= 16 ? 2 : T <= 32 ? 4 : 8; }

extern "C" int spqr_cuda_qgemm_auto_split(const spqr_cuda_qlinear *W, int n_tok) {
    if (!W || n_tok < 1) return 0;
    if (!W->L.fast) return 1;
    std::lock_guard<std::mutex> lk(g_mu);
    if (dev_init() != SPQR_OK) return 0;
    KInfo *ki = NULL;
    if (kinfo(W->L, n_tok == 1 ? 0 : auto_nt(std::min(n_tok, 64)), &ki) != SPQR_OK) return 0;
    return pick_split(W->L, ki->bps);
}

extern "C" spqr_status spqr_cuda_qgemm_ex(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY,
                                          const spqr_cuda_qgemm_opts *opts) {
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
    int kern = o.kernel;
    if (kern == SPQR_CUDA_KERNEL_AUTO)
        kern = !L.fast ? SPQR_CUDA_KERNEL_REF : n_tok == 1 ? SPQR_CUDA_KERNEL_GEMV : SPQR_CUDA_KERNEL_GEMM;
    if (kern != SPQR_CUDA_KERNEL_REF && !L.fast)
        return spqr_fail(SPQR_ERR_UNSUPPORTED,
                         "qgemm: tensor-core kernels need beta1 = 8 or a multiple of 16 (beta1=%d)", L.beta1);
    if (kern == SPQR_CUDA_KERNEL_REF) {
        for (int t0 = 0; t0 < n_tok; t0 += 65535) {
            const int T = std::min(n_tok - t0, 65535);
            k_ref<<<dim3(ceil_div(L.rows, 128), T), 128>>>(L, dX + (size_t)t0 * L.cols, dY + (size_t)t0 * L.rows);
            CK(cudaGetLastError(), "reference kernel launch");
        }
        return SPQR_OK;
    }
    /* tokens per pass: GEMV = 1, GEMM = max_tokens or automatic (<= 64) */
    int maxT = 64;
    if (kern == SPQR_CUDA_KERNEL_GEMV) maxT = 1;
    else if (o.max_tokens > 0) maxT = o.max_tokens <= 8 ? 8 : o.max_tokens <= 16 ? 16 : o.max_tokens <= 32 ? 32 : 64;
    const int nwin = L.cols_pad / 64, row_blocks = ceil_div(L.ntiles, WPB);
    for (int t0 = 0; t0 < n_tok;) {
        const int T = std::min(n_tok - t0, maxT);
        const bool gemv = kern == SPQR_CUDA_KERNEL_GEMV;
        const int nt = gemv ? 0 : auto_nt(T);
        KInfo *ki = NULL;
        st = kinfo(L, nt, &ki);
        if (st != SPQR_OK) return st;
        int nsplit = o.nsplit > 0 ? std::min(o.nsplit, L.nquads) : pick_split(L, ki->bps);
        nsplit = std::max(nsplit, ceil_div(L.nquads, MAXQ));
        const int qper = ceil_div(L.nquads, nsplit);
        nsplit = ceil_div(L.nquads, qper);
        /* input buffers: batch 1: xg | ox | xf; batch T: xp | xpT */
        const size_t b_xg = align256((size_t)(nwin + 1) * 8 * 16 * sizeof(__half));
        const size_t b_ox = align256((size_t)nwin * 4 * 2 * sizeof(float2));
        const size_t b_xf = align256((size_t)L.cols_pad * sizeof(float));
        const size_t b_xp = align256((size_t)8 * std::max(nt, 1) * L.cols_pad * sizeof(__half));
        st = ensure_buf((void **)&g_xp, &g_xp_cap, gemv ? b_xg + b_ox + b_xf : 2 * b_xp, false);
        if (st != SPQR_OK) return st;
        if (nsplit > 1) {
            st = ensure_buf((void **)&g_ws, &g_ws_cap, (size_t)nsplit * T * L.rows_pad * sizeof(float), false);
            if (st != SPQR_OK) return st;
            st = ensure_buf((void **)&g_cnt, &g_cnt_cap, (size_t)row_blocks * sizeof(unsigned), true);
            if (st != SPQR_OK) return st;
        }
        const float *X = dX + (size_t)t0 * L.cols;
        unsigned char *xb = (unsigned char *)g_xp;
        MainArgs A;
        memset(&A, 0, sizeof A);
        A.L = L;
        A.T = T;
        A.qper = qper;
        A.Y = dY + (size_t)t0 * L.rows;
        A.ws = g_ws;
        A.cnt = g_cnt;
        if (gemv) {
            A.xg = (const uint4 *)xb;
            A.ox = (const float2 *)(xb + b_xg);
            A.xf = (const float *)(xb + b_xg + b_ox);
            k_prep1<<<(L.cols_pad + 64) / 64, 64>>>(L.perm, L.cols, L.cols_pad, L.B, L.g8 ? 2 : 1, X,
                                                           (__half *)xb, (float2 *)(xb + b_xg),
                                                           (float *)(xb + b_xg + b_ox));
        } else {
            __half *xp = (__half *)xb, *xpT = (__half *)(xb + b_xp);
            A.xp = xp;
            k_prep<<<dim3(L.cols_pad / 256, 8 * nt), 256>>>(L.perm, L.cols, L.cols_pad, X, T, 8 * nt, xp, xpT);
        }
        CK(cudaGetLastError(), "prep kernel launch");
        st = launch_main(ki->k, dim3(row_blocks, nsplit), !o.no_pdl && ki->pdl, A);
        if (st != SPQR_OK) return st;
        if (!gemv && W->n_ol > 0) {
            const __half *xpT = (const __half *)(xb + b_xp);
            const int grid = ceil_div(L.rows, 16);
            switch (nt) {
            case 1: k_outliers<1><<<grid, 128>>>(L, xpT, T, A.Y); break;
            case 2: k_outliers<2><<<grid, 128>>>(L, xpT, T, A.Y); break;
            case 4: k_outliers<4><<<grid, 128>>>(L, xpT, T, A.Y); break;
            default: k_outliers<8><<<grid, 128>>>(L, xpT, T, A.Y); break;
            }
            CK(cudaGetLastError(), "outlier kernel launch");
        }
        t0 += T;
    }
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_qgemm(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY) {
    return spqr_cuda_qgemm_ex(W, dX, n_tok, dY, NULL);
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
