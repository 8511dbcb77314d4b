/* cc_kernels.cuh - the device layout of a ClusComp layer and what the kernel
 * files (lookup.cu, ref.cu) share with the dispatch (cc_cuda.cu).
 *
 * Device layout (built by spqr_cc_cuda_upload):
 *  - codebook: fp16 [n][d] exactly as in the payload, zero-padded to a
 *    multiple of 16 bytes;
 *  - index stream: the payload's fields regrouped per row block b into
 *    nchunks = ceil(cols / 128) chunks of 128 fields; chunk (b, c) holds the
 *    fields of columns c*128 .. c*128+127 of row block b, LSB-first, and
 *    occupies exactly 16*ibits bytes at byte offset (b*nchunks + c)*16*ibits
 *    (so every chunk is 16-byte aligned and the 32 fields of each 32-column
 *    group start on a 32-bit word); fields of columns >= cols are 0. Field
 *    (b, j) is bits [(j%128)*ibits, +ibits) of chunk (b, j/128). 16 zero
 *    bytes follow the last chunk (readers fetch two 32-bit words per field).
 *    For cols a multiple of 128 this is the payload stream with each row
 *    block's fields starting on a 16-byte boundary: no extra bytes.
 */
#ifndef SPQR_CC_KERNELS_CUH
#define SPQR_CC_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace spqr_cc {

constexpr int CHUNK = 128; /* fields (columns) per chunk                      */
constexpr int NST = 8;     /* cp.async stages per warp in the lookup kernel */

/* the device copy of a layer */
struct DevLayer {
    int rows, cols, d, n, ibits, nb, nchunks;
    int dv, S;           /* lookup vector: dv = largest power of two <= 16
                            dividing d; S = d / dv sub-blocks per row block */
    const __half *cb;    /* [n][d] fp16                                    */
    const uint8_t *idx;  /* chunked index stream (above)                   */
    size_t cb_bytes;     /* padded codebook bytes                          */
    size_t idx_bytes;    /* chunk bytes (without the 16 trailing bytes)     */
};

/* field (b, j) of the chunked stream */
__device__ __forceinline__ uint32_t field_at(const uint8_t *__restrict__ idx, int nchunks, int ibits, int b, int j) {
    const uint32_t *wp = reinterpret_cast<const uint32_t *>(idx + ((size_t)b * nchunks + (j >> 7)) * (16u * ibits));
    const uint32_t off = (uint32_t)(j & 127) * (uint32_t)ibits, w = off >> 5;
    const uint32_t lo = __ldg(wp + w), hi = __ldg(wp + w + 1);
    const uint32_t v = __funnelshift_r(lo, hi, off & 31);
    return ibits >= 32 ? v : (v & ((1u << ibits) - 1u));
}

/* where the lookup kernel finds the codebook */
enum { MODE_SMEM = 0,   /* all of it copied to shared memory once per block  */
       MODE_GLOBAL = 1, /* read from global memory (L1/L2) per lookup        */
       MODE_PIECE = 2   /* block (., kg*npieces + p) holds entries
                           [p*pb, p*pb + pb) in shared memory and does the
                           lookups of the indices in that range (compacted
                           per warp); the pieces' partial sums are added by
                           ksum_launch */
};

/* arguments of one launch of the lookup kernel (one pass of <= TT tokens) */
struct LookupArgs {
    const __half *cb;
    const uint8_t *idx;
    const float *X; /* [T][cols]                                           */
    float *Y;       /* [T][rows] when nslices == 1                         */
    float *ws;      /* [nslices][tt][rows] partial sums otherwise          */
    int rows, cols, d, n, ibits, nchunks, S, nvb;
    int t0, tt;     /* this pass: tokens t0 .. t0+tt-1                     */
    int ks;         /* warps per row block                                 */
    int npieces, pb;/* MODE_PIECE: pieces, entries per piece (else 1, n)   */
    int nslices;    /* gridDim.y = kg * npieces                            */
    int cps, cpj;   /* chunks per column slice, chunks per warp job        */
    int rbt;        /* row blocks per tile (= nwarps / ks)                 */
    int ntiles;     /* ceil(nvb / rbt)                                     */
    int stage_words;/* 32-bit words per ring stage (4*ibits + 4)           */
    int xs;         /* floats per token of the staged input slice (cps*128) */
    int xvec;       /* X rows 16-byte aligned: stage with 16-byte copies   */
    uint32_t cb_smem_bytes; /* codebook bytes in shared memory (MODE_SMEM:
                               all, MODE_PIECE: one piece), multiple of 16 */
    uint32_t cb_bytes;      /* padded codebook bytes on the device        */
};

/* the lookup kernel for (dv, tt, mode), NULL when there is no instance */
const void *lookup_kernel(int dv, int tt, int mode);
/* the most warps per block of that instance (16 or 32) */
int lookup_max_warps(int dv, int tt);
/* shared memory bytes of one block */
size_t lookup_smem_bytes(int mode, int nwarps, int dv, int tt, int ibits, int xs, size_t cb_smem_bytes);
cudaError_t lookup_launch(const void *fn, dim3 grid, int nwarps, size_t smem, bool pdl, const LookupArgs &a);

/* ref.cu */
cudaError_t ref_launch(const DevLayer &L, const float *X, int T, float *Y);
/* W16 [rc][cols] = rows r0 .. r0+rc-1 of W in fp16 (exact: the codebook is fp16) */
cudaError_t dequant16_launch(const DevLayer &L, int r0, int rc, __half *W16);
/* Y[t][r0 + r] = float(Y16[t][r]) for t < T, r < rc */
cudaError_t scatter16_launch(const __half *Y16, int T, int rc, int r0, int rows, float *Y);
/* Y[t0 + t][r] = sum_k ws[k][t][r] (k < kg, t < tt) */
cudaError_t ksum_launch(const float *ws, int kg, int tt, int rows, int t0, float *Y);

} // namespace spqr_cc

#endif
