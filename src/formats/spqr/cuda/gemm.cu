/* gemm.cu - the batch-T tensor-core kernel (k_gemm: 8, 16, 32 or 64 tokens
 * per pass, fp16 weights dequantized in registers), its input prep (k_prep)
 * and the kernel that adds the outliers afterwards (k_outliers). Design in
 * spqr_cuda.h and NOTES.md. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "formats/spqr/cuda/fragment.cuh"
#include "formats/spqr/cuda/kernels.cuh"
#include "formats/spqr/cuda/pipeline.cuh"
#include "formats/spqr/cuda/ptx.cuh"

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
        const __half *xw = xp + (size_t)g * L.cols_pad + WCOLS * w + QTR_COLS * t;
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
                uint32_t x = sr[spqr_gpu_bil4_word(G8, wi)];
                const int sh = spqr_gpu_bil4_bit(G8, wi, grp, 0);
                if (sh) x >>= sh;
                p0 = unbias<0>(lop3_and_or(x, 0x000f000fu, MAGIC16));
                p1 = unbias<4>(lop3_and_or(x, 0x00f000f0u, MAGIC16));
                const uint2 q2 = s2q[G8 ? 2 * wi + grp : wi];
                p0 = hmul2u(hsub2u(p0, q2.x), q2.y);
                p1 = hmul2u(hsub2u(p1, q2.x), q2.y);
            } else {
                const int i = spqr_gpu_f16_word(G8, wi, grp, 0);
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
                const int lr = g + HALF_ROWS * (j >> 1), n = 8 * nt + 2 * t + (j & 1);
                const int row = TILE_ROWS * tile + lr;
                if (n >= A.T || row >= L.rows) continue;
                if (split) A.ws[((size_t)blockIdx.y * A.T + n) * L.rows_pad + row] = c[nt][j];
                else A.Y[(size_t)n * L.rows + row] = c[nt][j];
            }
    }
    if (split) split_finish(A, blockIdx.x * BLOCK_ROWS);
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

/* ---- host ----------------------------------------------------------------- */

template <int B, int SM, bool G8, int NT>
static MainK mk() {
    return MainK{k_gemm<B, SM, G8, NT>, WPB * WarpSmem<B, SM, G8>::BYTES_GEMM};
}
template <int B, int SM, bool G8>
static MainK pick_nt(int nt) {
    switch (nt) {
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
MainK gemm_main_kernel(const DevLayer &L, int nt) {
    switch (L.B) {
    case 2: return pick_stat<2>(L.smode, L.g8, nt);
    case 3: return pick_stat<3>(L.smode, L.g8, nt);
    case 4: return pick_stat<4>(L.smode, L.g8, nt);
    default: return pick_stat<8>(L.smode, L.g8, nt);
    }
}

void gemm_prep_launch(const DevLayer &L, const float *X, int T, int nt, __half *xp, __half *xpT) {
    k_prep<<<dim3(L.cols_pad / 256, 8 * nt), 256>>>(L.perm, L.cols, L.cols_pad, X, T, 8 * nt, xp, xpT);
}

void gemm_outliers_launch(const DevLayer &L, int nt, const __half *xpT, int T, float *Y) {
    const int grid = (L.rows + 15) / 16; /* 128 threads: 16 rows of 8 lanes per block */
    switch (nt) {
    case 1: k_outliers<1><<<grid, 128>>>(L, xpT, T, Y); break;
    case 2: k_outliers<2><<<grid, 128>>>(L, xpT, T, Y); break;
    case 4: k_outliers<4><<<grid, 128>>>(L, xpT, T, Y); break;
    default: k_outliers<8><<<grid, 128>>>(L, xpT, T, Y); break;
    }
}
