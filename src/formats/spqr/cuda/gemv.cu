/* gemv.cu - the batch-1 tensor-core kernel (k_gemv; also used for any
 * n_tok one token per pass) and its input prep (k_prep1). Design in
 * spqr_cuda.h and NOTES.md. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "formats/spqr/cuda/fragment.cuh"
#include "formats/spqr/cuda/kernels.cuh"
#include "formats/spqr/cuda/pipeline.cuh"
#include "formats/spqr/cuda/ptx.cuh"

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
    const int kt = i >> 2, k = spqr_gpu_duo_k(B, kt, (i >> 1) & 1);
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
                const int col = q * QCOLS + spqr_gpu_ol_col(en), row = spqr_gpu_ol_row(en);
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
            const int row = TILE_ROWS * tile + g + HALF_ROWS * h;
            if (row >= L.rows) continue;
            const float v = h ? y1 + o1 : y0 + o0;
            if (split) A.ws[(size_t)blockIdx.y * L.rows_pad + row] = v;
            else A.Y[row] = v;
        }
    }
    if (split) split_finish(A, blockIdx.x * BLOCK_ROWS);
}

/* ---- host ----------------------------------------------------------------- */

template <int B, int SM, bool G8>
static MainK mk() {
    return MainK{k_gemv<B, SM, G8>, WPB * WarpSmem<B, SM, G8>::BYTES_GEMV};
}
template <int B>
static MainK pick_stat(int smode, bool g8) {
    if (smode == SM_BIL4) return g8 ? mk<B, SM_BIL4, true>() : mk<B, SM_BIL4, false>();
    return g8 ? mk<B, SM_F16, true>() : mk<B, SM_F16, false>();
}
MainK gemv_main_kernel(const DevLayer &L) {
    switch (L.B) {
    case 2: return pick_stat<2>(L.smode, L.g8);
    case 3: return pick_stat<3>(L.smode, L.g8);
    case 4: return pick_stat<4>(L.smode, L.g8);
    default: return pick_stat<8>(L.smode, L.g8);
    }
}

void gemv_prep_launch(const DevLayer &L, const float *X, __half *xg, float2 *ox, float *xf) {
    /* one thread per padded column plus one window of zero lines */
    k_prep1<<<(L.cols_pad + WCOLS) / WCOLS, WCOLS>>>(L.perm, L.cols, L.cols_pad, L.B, L.g8 ? 2 : 1, X, xg, ox, xf);
}
