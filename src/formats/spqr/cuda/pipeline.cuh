/* pipeline.cuh - the cp.async copy pipeline shared by the batch-1 and
 * batch-T kernels: each warp streams its tile's quads (codes, first- and
 * second-level statistics, outlier bucket entries) through NS stages of
 * shared memory; each lane copies exactly the bytes it later reads, so only
 * __syncwarp is needed between copy and use. */
#ifndef SPQR_CUDA_PIPELINE_CUH
#define SPQR_CUDA_PIPELINE_CUH

#include "formats/spqr/cuda/device_layout.cuh"

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
        s.s2row = L.stats2 + (size_t)min((TILE_ROWS * tile + s.g) / L.beta2, L.nrb - 1) * L.ng2;
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
                                    : s.s2row + spqr_gpu_group_of(geom(L), 4 * q + s.s2wi, s.s2t, s.s2grp);
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

#endif /* SPQR_CUDA_PIPELINE_CUH */
