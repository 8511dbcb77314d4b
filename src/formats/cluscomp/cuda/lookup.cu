/* lookup.cu - the codebook-lookup kernel of ClusComp layers (batch 1 and
 * small batches; cc_cuda.cu runs larger batches in passes of <= 8 tokens).
 *
 * y[t][b*d + s*DV + k] = sum_j C[idx(b, j)][s*DV + k] * x[t][j]
 *
 * Work: a "virtual row block" vb = b*S + s is DV output rows (DV = d for
 * d in {1, 2, 4, 8, 16}; S > 1 splits larger or odd d into S lookups of DV
 * values). Blocks are persistent: block (bx, kg) loops over tiles
 * bx, bx + gridDim.x, ...; a tile is rbt = nwarps/ks row blocks, and the ks
 * warps of one row block each take cpj consecutive 128-column chunks of the
 * block's column slice kg (cps chunks). Per chunk, lane l handles columns
 * c*128 + q*32 + l (q = 0..3): two 32-bit words of the staged chunk and a
 * funnel shift give its index, the codeword's DV fp16 values come from
 * shared memory (MODE_SMEM: the whole codebook is copied there once per
 * block) or from global memory (MODE_GLOBAL, through L1/L2), and the lane
 * accumulates DV * TT fp32 sums against the inputs staged (fp32) in shared
 * memory. MODE_PIECE, for codebooks too large for shared memory: block
 * (bx, kg*npieces + p) holds codebook piece p and keeps, of each 32
 * decoded indices, those inside its piece: a ballot compacts them into a
 * 64-entry per-warp queue of (codeword offset, input column), and whenever
 * 32 are queued every lane takes one, so the lookups and FMAs run with all
 * lanes busy (every block decodes its slice's whole stream, which the
 * npieces blocks of a tile read from L2). At the end of a tile each warp
 * reduce-scatters its sums across lanes (no atomics), the ks partial
 * results of a row block are added in a fixed order and written
 * (nslices == 1) or stored as slice partials that ksum_launch adds in
 * slice order: deterministic results.
 *
 * With programmatic dependent launch (sm_90), the codebook copy and the
 * first index stages are issued before griddepcontrol.wait, so they
 * overlap the end of the preceding kernel; X is read and Y written after.
 *
 * The index chunks are streamed per warp through an NST-stage cp.async ring
 * in shared memory (lanes < ibits copy 16 bytes each; the stream position
 * runs on across tiles, so the next tile's chunks are in flight while a
 * tile ends).
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <string.h>

#include "formats/cluscomp/cuda/cc_kernels.cuh"

namespace spqr_cc {

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* 16 bytes, of which the first `valid` come from src, the rest zero */
__device__ __forceinline__ void cp_async16z(void *dst, const void *src, uint32_t valid) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid) : "memory");
}
/* 4 bytes from src, or zero when valid == 0 */
__device__ __forceinline__ void cp_async4z(void *dst, const void *src, uint32_t valid) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(src), "r"(valid) : "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
/* programmatic dependent launch (sm_90; no-ops elsewhere) */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void unpack2(uint32_t u, float *w) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&u));
    w[0] = f.x;
    w[1] = f.y;
}
__device__ __forceinline__ void unpack8(const uint4 &u, float *w) {
    unpack2(u.x, w);
    unpack2(u.y, w + 2);
    unpack2(u.z, w + 4);
    unpack2(u.w, w + 6);
}

/* the DV codeword values at half offset off (aligned to DV halves) */
template <int DV, bool CBS> __device__ __forceinline__ void load_cw(const __half *cb, uint32_t off, float *w) {
    const __half *p = cb + off;
    if constexpr (DV == 16) {
        const uint4 *q = reinterpret_cast<const uint4 *>(p);
        const uint4 a = CBS ? q[0] : __ldg(q), b = CBS ? q[1] : __ldg(q + 1);
        unpack8(a, w);
        unpack8(b, w + 8);
    } else if constexpr (DV == 8) {
        const uint4 *q = reinterpret_cast<const uint4 *>(p);
        unpack8(CBS ? q[0] : __ldg(q), w);
    } else if constexpr (DV == 4) {
        const uint2 *q = reinterpret_cast<const uint2 *>(p);
        const uint2 a = CBS ? q[0] : __ldg(q);
        unpack2(a.x, w);
        unpack2(a.y, w + 2);
    } else if constexpr (DV == 2) {
        const unsigned *q = reinterpret_cast<const unsigned *>(p);
        unpack2(CBS ? q[0] : __ldg(q), w);
    } else {
        const unsigned short *q = reinterpret_cast<const unsigned short *>(p);
        w[0] = __half2float(__ushort_as_half(CBS ? q[0] : __ldg(q)));
    }
}

/* One step of the reduce-scatter: C values per lane, partner lane ^ O;
 * the lane keeps the half selected by its bit O and adds the partner's. */
template <int C, int O> __device__ __forceinline__ void rs_step(float *a, bool up) {
    if constexpr (C >= 2) {
#pragma unroll
        for (int i = 0; i < C / 2; i++) {
            const float send = up ? a[i] : a[i + C / 2];
            const float keep = up ? a[i + C / 2] : a[i];
            a[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
    } else {
        a[0] += __shfl_xor_sync(0xffffffffu, a[0], O);
    }
}

/* Reduce-scatter of V per-lane values over the warp (V a power of two).
 * Afterwards, for V >= 32, lane l holds the warp sums of values
 * l*(V/32) + i in a[i] (i < V/32); for V < 32 every lane holds the sum of
 * value l / (32/V) in a[0]. V/2 + V/4 + ... shuffles instead of 5*V. */
template <int V> __device__ __forceinline__ void reduce_scatter(float *a, int lane) {
    rs_step<V, 16>(a, (lane & 16) != 0);
    rs_step<(V >> 1), 8>(a, (lane & 8) != 0);
    rs_step<(V >> 2), 4>(a, (lane & 4) != 0);
    rs_step<(V >> 3), 2>(a, (lane & 2) != 0);
    rs_step<(V >> 4), 1>(a, (lane & 1) != 0);
}

/* V <= 16 accumulators fit 64 registers: up to 32 warps per block */
template <int V> constexpr int max_threads() { return V <= 16 ? 1024 : 512; }

template <int DV, int TT, int MODE>
__global__ void __launch_bounds__(max_threads<TT * DV>(), 1) k_lookup(const LookupArgs a) {
    constexpr int V = TT * DV;
    constexpr bool CB_SMEM = MODE != MODE_GLOBAL;
    extern __shared__ __align__(16) unsigned char smem[];
    const int nw = blockDim.x >> 5;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slice = blockIdx.y, bx = blockIdx.x, gx = gridDim.x;
    const int kg = slice / a.npieces, piece = slice - kg * a.npieces;

    unsigned char *p = smem;
    const __half *cb = a.cb;
    if (CB_SMEM) {
        cb = reinterpret_cast<const __half *>(p);
        p += a.cb_smem_bytes;
    }
    uint32_t *ring = reinterpret_cast<uint32_t *>(p) + (size_t)w * NST * a.stage_words;
    p += (size_t)nw * NST * a.stage_words * 4;
    uint2 *queue = reinterpret_cast<uint2 *>(p) + w * 64;
    if (MODE == MODE_PIECE) p += (size_t)nw * 64 * 8;
    float *red = reinterpret_cast<float *>(p);
    p += (size_t)2 * nw * V * 4;
    float *xs = reinterpret_cast<float *>(p);

    pdl_launch_dependents();

    /* 1. the codebook or its piece (one cp.async group) */
    uint32_t pe0 = 0, pen = (uint32_t)a.n; /* entries held: [pe0, pe0 + pen) */
    if (CB_SMEM) {
        uint32_t off0 = 0, nbytes = a.cb_smem_bytes;
        if (MODE == MODE_PIECE) {
            pe0 = (uint32_t)piece * (uint32_t)a.pb;
            pen = min((uint32_t)a.pb, (uint32_t)a.n - pe0);
            off0 = pe0 * (uint32_t)a.d * 2u; /* a multiple of 16: pb % 8 == 0 */
            nbytes = min(nbytes, a.cb_bytes - off0);
        }
        const unsigned char *src = reinterpret_cast<const unsigned char *>(a.cb) + off0;
        for (uint32_t o = threadIdx.x * 16u; o < nbytes; o += blockDim.x * 16u) cp_async16(smem + o, src + o);
    }
    cp_async_commit();

    /* 2. the warp's stream of chunks: seq s = round r, chunk c_lo + i;
     *    the producer walks it with its own counters */
    const int rounds = (a.ntiles - bx + gx - 1) / gx; /* gx <= ntiles: >= 1 */
    const int total = rounds * a.cpj;
    const int kp = w % a.ks, vbl = w / a.ks;
    const int slice0 = kg * a.cps;
    const int c_lo = slice0 + kp * a.cpj;
    const int c_end = min(slice0 + a.cps, a.nchunks);
    const int cbytes = 16 * a.ibits;
    int ps = 0, pi = 0, pvb = bx * a.rbt + vbl; /* producer: seq, index in job, row block */
    auto issue = [&]() {
        if (ps < total) {
            const int c = c_lo + pi;
            if (pvb < a.nvb && c < c_end && lane < a.ibits) {
                const int b = pvb / a.S;
                const uint8_t *src = a.idx + ((size_t)b * a.nchunks + c) * cbytes + lane * 16;
                cp_async16(ring + ((unsigned)ps % NST) * a.stage_words + lane * 4, src);
            }
            if (++pi == a.cpj) {
                pi = 0;
                pvb += gx * a.rbt;
            }
        }
        ps++;
        cp_async_commit();
    };
#pragma unroll 1
    for (int s = 0; s < NST - 1; s++) issue();

    /* 3. the inputs of this slice and pass (fp32, zero beyond cols and tt),
     *    after the preceding kernel finished writing them */
    pdl_wait();
    {
        const int xc0 = slice0 * CHUNK;
        for (int t = 0; t < TT; t++) {
            const float *xrow = a.X + (size_t)(a.t0 + min(t, a.tt - 1)) * a.cols;
            float *xd = xs + t * a.xs;
            if (a.xvec) {
                for (int i = threadIdx.x * 4; i < a.xs; i += blockDim.x * 4) {
                    const int j = xc0 + i;
                    const int nv = t < a.tt ? max(0, min(4, a.cols - j)) : 0;
                    cp_async16z(xd + i, nv ? xrow + j : a.X, (uint32_t)nv * 4u);
                }
            } else {
                for (int i = threadIdx.x; i < a.xs; i += blockDim.x) {
                    const int j = xc0 + i;
                    const bool v = t < a.tt && j < a.cols;
                    cp_async4z(xd + i, v ? xrow + j : a.X, v ? 4u : 0u);
                }
            }
        }
    }
    cp_async_commit();
    cp_async_wait<0>(); /* codebook, inputs and the first stages */
    __syncthreads();

    /* where lane's field of each 32-column group q lies in a chunk */
    uint32_t wq[4], shq[4];
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const uint32_t off = (uint32_t)(q * 32 + lane) * (uint32_t)a.ibits;
        wq[q] = off >> 5;
        shq[q] = off & 31;
    }
    const uint32_t mask = a.ibits >= 32 ? 0xffffffffu : (1u << a.ibits) - 1u;
    const uint32_t d = (uint32_t)a.d;
    const uint32_t lt = (1u << lane) - 1u;

    int s = 0;
    for (int r = 0; r < rounds; r++) {
        const int tile = bx + r * gx;
        const int vb = tile * a.rbt + vbl;
        const bool vb_ok = vb < a.nvb;
        const int sub = vb_ok ? vb % a.S : 0;
        const uint32_t cwoff = (uint32_t)sub * DV;
        float acc[V];
#pragma unroll
        for (int i = 0; i < V; i++) acc[i] = 0.f;
        /* one (codeword offset, input column) term */
        auto term = [&](uint32_t off, int xcol) {
            float cw[DV];
            load_cw<DV, CB_SMEM>(cb, off, cw);
#pragma unroll
            for (int t = 0; t < TT; t++) {
                const float xv = xs[t * a.xs + xcol];
#pragma unroll
                for (int k = 0; k < DV; k++) acc[t * DV + k] = fmaf(cw[k], xv, acc[t * DV + k]);
            }
        };
        int head = 0, tail = 0; /* MODE_PIECE queue positions (warp-uniform) */

        for (int i = 0; i < a.cpj; i++, s++) {
            cp_async_wait<NST - 2>();
            __syncwarp();
            issue();
            const int c = c_lo + i;
            if (!vb_ok || c >= c_end) continue; /* uniform over the warp */
            const uint32_t *st = ring + ((unsigned)s % NST) * a.stage_words;
            const int xc = (c - slice0) * CHUNK + lane;
            uint32_t id[4];
#pragma unroll
            for (int q = 0; q < 4; q++) id[q] = __funnelshift_r(st[wq[q]], st[wq[q] + 1], shq[q]) & mask;
            if constexpr (MODE != MODE_PIECE) {
#pragma unroll
                for (int q = 0; q < 4; q++) term(id[q] * d + cwoff, xc + q * 32);
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint32_t loc = id[q] - pe0;
                    const bool in = loc < pen;
                    const uint32_t m = __ballot_sync(0xffffffffu, in);
                    if (in) queue[(tail + __popc(m & lt)) & 63] = make_uint2(loc * d + cwoff, (uint32_t)(xc + q * 32));
                    tail += __popc(m);
                    if (tail - head >= 32) {
                        __syncwarp();
                        const uint2 e = queue[(head + lane) & 63];
                        head += 32;
                        __syncwarp();
                        term(e.x, (int)e.y);
                    }
                }
            }
        }
        if constexpr (MODE == MODE_PIECE) { /* the last < 32 queued terms */
            __syncwarp();
            if (head + lane < tail) {
                const uint2 e = queue[(head + lane) & 63];
                term(e.x, (int)e.y);
            }
            __syncwarp();
        }

        /* 4. warp sums -> red[r & 1][w][V]; then the tile's outputs */
        reduce_scatter<V>(acc, lane);
        float *rw = red + ((size_t)(r & 1) * nw + w) * V;
        if constexpr (V >= 32) {
#pragma unroll
            for (int i = 0; i < V / 32; i++) rw[lane * (V / 32) + i] = acc[i];
        } else {
            if ((lane & (32 / V - 1)) == 0) rw[lane / (32 / V)] = acc[0];
        }
        __syncthreads();
        const float *rr = red + (size_t)(r & 1) * nw * V;
        for (int e = threadIdx.x; e < a.rbt * V; e += blockDim.x) {
            const int vl = e / V, v = e - vl * V;
            const int vb2 = tile * a.rbt + vl;
            const int t = v / DV, k = v - t * DV;
            if (vb2 >= a.nvb || t >= a.tt) continue;
            const int b2 = vb2 / a.S, sub2 = vb2 - b2 * a.S;
            const int row = b2 * a.d + sub2 * DV + k;
            if (row >= a.rows) continue;
            float sum = 0.f;
            for (int k2 = 0; k2 < a.ks; k2++) sum += rr[(vl * a.ks + k2) * V + v];
            if (a.nslices == 1)
                a.Y[(size_t)(a.t0 + t) * a.rows + row] = sum;
            else
                a.ws[((size_t)slice * a.tt + t) * a.rows + row] = sum;
        }
        /* red[r & 1] is rewritten in round r + 2, after everyone passed
         * round r + 1's barrier: one barrier per tile suffices */
    }
    cp_async_wait<0>();
}

/* ---- instances -------------------------------------------------------------- */

#define CC_INST(DV, TT)                                                                            \
    if (dv == DV && tt == TT)                                                                      \
        return mode == MODE_SMEM     ? (const void *)k_lookup<DV, TT, MODE_SMEM>                   \
               : mode == MODE_GLOBAL ? (const void *)k_lookup<DV, TT, MODE_GLOBAL>                 \
                                     : (const void *)k_lookup<DV, TT, MODE_PIECE>;

const void *lookup_kernel(int dv, int tt, int mode) {
    if (mode < MODE_SMEM || mode > MODE_PIECE) return nullptr;
    CC_INST(1, 1) CC_INST(1, 2) CC_INST(1, 4) CC_INST(1, 8)
    CC_INST(2, 1) CC_INST(2, 2) CC_INST(2, 4) CC_INST(2, 8)
    CC_INST(4, 1) CC_INST(4, 2) CC_INST(4, 4) CC_INST(4, 8)
    CC_INST(8, 1) CC_INST(8, 2) CC_INST(8, 4) CC_INST(8, 8)
    CC_INST(16, 1) CC_INST(16, 2) CC_INST(16, 4)
    return nullptr;
}
#undef CC_INST

int lookup_max_warps(int dv, int tt) { return dv * tt <= 16 ? 32 : 16; }

size_t lookup_smem_bytes(int mode, int nwarps, int dv, int tt, int ibits, int xs, size_t cb_smem_bytes) {
    return (mode == MODE_GLOBAL ? 0 : cb_smem_bytes) + (size_t)nwarps * NST * (4 * ibits + 4) * 4 +
           (mode == MODE_PIECE ? (size_t)nwarps * 64 * 8 : 0) + (size_t)2 * nwarps * tt * dv * 4 +
           (size_t)tt * xs * 4;
}

cudaError_t lookup_launch(const void *fn, dim3 grid, int nwarps, size_t smem, bool pdl, const LookupArgs &a) {
    void *args[] = {const_cast<LookupArgs *>(&a)};
    if (pdl) {
        cudaLaunchConfig_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.gridDim = grid;
        cfg.blockDim = dim3(nwarps * 32);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = 0;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cudaError_t e = cudaLaunchKernelExC(&cfg, fn, args);
        if (e == cudaSuccess) return e;
        (void)cudaGetLastError(); /* fall back to a plain launch */
    }
    return cudaLaunchKernel(fn, grid, dim3(nwarps * 32), args, smem, 0);
}

} // namespace spqr_cc
