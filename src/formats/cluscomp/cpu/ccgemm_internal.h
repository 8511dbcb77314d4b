/* ccgemm_internal.h - what the ClusComp CPU driver (ccgemm.c) shares with
 * its SIMD variants (ccgemm_avx2.c, ccgemm_avx512.c).
 *
 * A product runs in passes: one per slice of at most `lanes` (16 / 8) entry
 * components (one slice unless d > 16 for AVX-512, d > 8 for AVX2) and
 * batch of tokens. Work items are ranges of SPQR_CC_ITEM row blocks, handed
 * out dynamically to the threads. In an item, the indices of a group of
 * blocks over a chunk of columns are decoded into entry offsets (index * d,
 * in elements of the codebook), then every column j of the chunk does
 * acc(b, t) += entry(idx(b, j)) * x_t[j] for the group's blocks b:
 *
 * - one token: groups of 8 blocks, 256-column chunks (codebook, offsets and
 *   x stay in L1), vw-wide accumulators (vw = 4, 8, 16 >= the slice width),
 *   fp16 entries when a vw-wide load stays inside the entry;
 * - one or two tokens, AVX-512, d = 4 or 8 ("packed"): the entries of 16 /
 *   vw consecutive blocks share one zmm, so one conversion and one FMA per
 *   token cover 16 lanes; offsets are 16-bit when they fit ("narrow");
 * - more tokens: a register holds pt tokens x vw lanes (pt * vw = lanes) of
 *   prepared x (xq), nq registers per block, groups of G blocks (G * nq
 *   accumulators in registers), column chunks of cw (the chunk's xq stays in
 *   L1) outside the groups, sums in accbuf until the item ends.
 */
#ifndef SPQR_FORMATS_CLUSCOMP_CCGEMM_INTERNAL_H
#define SPQR_FORMATS_CLUSCOMP_CCGEMM_INTERNAL_H

#include "../../../kernels/cpu/cpu.h"
#include "ccgemm.h"

#define SPQR_CC_CW 512                  /* most columns per chunk                  */
#define SPQR_CC_CW1 256                 /* columns per chunk, one or two tokens    */
#define SPQR_CC_LDO (SPQR_CC_CW + 16)   /* offsets per block in the decode buffer  */
#define SPQR_CC_GMAX 8                  /* most row blocks per group               */
#define SPQR_CC_ITEM 32                 /* row blocks per work item                */

typedef struct spqr_cc_job {
    const spqr_cc_layer *L;
    const float *cb;   /* cb32 + c0: the slice's first component            */
    const uint16_t *cb16; /* codebook + c0 when a vw-wide fp16 load stays inside
                             the entry (dc == vw), else NULL; single-token
                             kernels then read the fp16 codebook (half the
                             cache footprint of cb32)                        */
    int c0, dc;        /* components [c0, c0 + dc) of every entry            */
    int vw, pt, nq;    /* entry lanes, tokens per register, registers/block  */
    int narrow;        /* packed or one token, cb16, ibits < 16 and n*d <=
                          65536: the AVX-512 kernels decode 16-bit offsets   */
    int packed;        /* AVX-512, cb16, vw 4 or 8, 1 or 2 tokens (pt = 1,
                          nq = nt): 16 / vw blocks' entries share a zmm       */
    int nt;            /* tokens of the pass                                  */
    int cw;            /* nt > 1: columns per chunk (the chunk's xq stays in L1) */
    const float *X;    /* [nt][cols], the pass's first token                  */
    const float *xq;   /* pt > 1: [cols][nq][pt*vw], x(j, t) repeated vw times
                          in slot t % pt of register t / pt (zeros past nt)   */
    float *Y;          /* [nt][rows], the pass's first token                  */
} spqr_cc_job;

/* Blocks [b0, b1) (at most SPQR_CC_ITEM) of the pass. offbuf holds
 * SPQR_CC_GMAX * SPQR_CC_LDO uint32, accbuf SPQR_CC_ITEM * nq * 16 floats
 * (several tokens only); both 64-byte aligned. */
void spqr_cc_run_avx2(const spqr_cc_job *J, int64_t b0, int64_t b1, uint32_t *offbuf, float *accbuf);
void spqr_cc_run_avx512(const spqr_cc_job *J, int64_t b0, int64_t b1, uint32_t *offbuf, float *accbuf);

/* Store a group member's accumulators acc [nq][16] (token register q, slot
 * s: lanes s*vw .. s*vw + dc - 1) into Y rows b*d + c0 ..; first: store,
 * else add. */
static inline void spqr_cc_store(const spqr_cc_job *J, int64_t b, const float *acc, int first) {
    const spqr_cc_layer *L = J->L;
    const int64_t r0 = b * L->d + J->c0;
    int64_t nr = L->rows - r0 < J->dc ? L->rows - r0 : J->dc;
    for (int q = 0; q < J->nq; q++)
        for (int s = 0; s < J->pt; s++) {
            const int t = q * J->pt + s;
            if (t >= J->nt) return;
            float *y = J->Y + (size_t)t * (size_t)L->rows + (size_t)r0;
            const float *a = acc + q * 16 + s * J->vw;
            if (first)
                for (int64_t u = 0; u < nr; u++) y[u] = a[u];
            else
                for (int64_t u = 0; u < nr; u++) y[u] += a[u];
        }
}

/* Prefetch the index stream that the decoder needs next: one token, the
 * group's next column chunk (after the last chunk, the next group's first);
 * several tokens, the next group's chunk. */
static inline void spqr_cc_prefetch_next(const spqr_cc_job *J, int64_t b, int g, int64_t j0, int64_t nj) {
    const spqr_cc_layer *L = J->L;
    int64_t j1 = j0 + nj;
    if (J->nt > 1) {
        b += g;
        j1 = j0;
    } else if (j1 >= L->cols) {
        b += g;
        j1 = 0;
    }
    const int64_t nf = L->cols - j1 < nj ? L->cols - j1 : nj;
    for (int k = 0; k < g && b + k < L->nb; k++) {
        const uint64_t p0 = ((uint64_t)(b + k) * (uint64_t)L->cols + (uint64_t)j1) * (uint64_t)L->ibits / 8;
        const uint64_t p1 = p0 + ((uint64_t)nf * (uint64_t)L->ibits + 7) / 8;
        for (uint64_t p = p0 & ~(uint64_t)63; p < p1; p += 64) __builtin_prefetch(L->idx + p, 0, 3);
    }
}

#endif
