/* ccgemm_internal.h - what the ClusComp CPU driver (ccgemm.c) shares with
 * its SIMD variants (ccgemm_avx2.c, ccgemm_avx512.c).
 *
 * A product runs in passes: one per slice of at most `lanes` entry
 * components (d-chunk; one slice unless d > 16 for AVX-512, d > 8 for
 * AVX2) and batch of tokens. Within a pass, a vector register holds `pt`
 * tokens x `vw` entry lanes (vw = 4, 8 or 16 >= the slice width; pt * vw =
 * lanes, or pt = 1 for a single token), and each row block keeps `nq` such
 * registers. Row blocks are processed in groups of G (G * nq accumulators
 * stay in registers) over column chunks of SPQR_CC_CW: the group's indices
 * of the chunk are decoded into entry offsets (index * d floats), then every
 * column does acc[g][q] += entry(b_g, j) * x(j, q). */
#ifndef SPQR_FORMATS_CLUSCOMP_CCGEMM_INTERNAL_H
#define SPQR_FORMATS_CLUSCOMP_CCGEMM_INTERNAL_H

#include "../../../kernels/cpu/cpu.h"
#include "ccgemm.h"

#define SPQR_CC_CW 512                  /* columns per chunk                       */
#define SPQR_CC_LDO (SPQR_CC_CW + 16)   /* offsets per block in the decode buffer  */
#define SPQR_CC_GMAX 8                  /* most row blocks per group               */

typedef struct spqr_cc_job {
    const spqr_cc_layer *L;
    const float *cb;   /* cb32 + c0: the slice's first component            */
    const uint16_t *cb16; /* codebook + c0 when a vw-wide fp16 load stays inside
                             the entry (dc == vw), else NULL; single-token
                             kernels then read the fp16 codebook (half the
                             cache footprint of cb32)                        */
    int c0, dc;        /* components [c0, c0 + dc) of every entry            */
    int vw, pt, nq;    /* entry lanes, tokens per register, registers/block  */
    int nt;            /* tokens of the pass                                  */
    int chunk_outer;   /* loop column chunks outside row-block groups         */
    const float *X;    /* [nt][cols], the pass's first token                  */
    const float *xq;   /* pt > 1: [cols][nq][pt*vw], x(j, t) repeated vw times
                          in slot t % pt of register t / pt (zeros past nt)   */
    float *Y;          /* [nt][rows], the pass's first token                  */
} spqr_cc_job;

/* Blocks [b0, b1) of the pass; offbuf holds SPQR_CC_GMAX * SPQR_CC_LDO
 * uint32 (64-byte aligned). */
void spqr_cc_run_avx2(const spqr_cc_job *J, int64_t b0, int64_t b1, uint32_t *offbuf);
void spqr_cc_run_avx512(const spqr_cc_job *J, int64_t b0, int64_t b1, uint32_t *offbuf);

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

/* Prefetch the index stream of the group's next column chunk (or, after the
 * last chunk, of the next group's first chunk), so the decoder does not
 * wait for memory. */
static inline void spqr_cc_prefetch_next(const spqr_cc_job *J, int64_t b, int g, int64_t j0) {
    const spqr_cc_layer *L = J->L;
    int64_t j1 = j0 + SPQR_CC_CW;
    if (j1 >= L->cols || J->chunk_outer) {
        if (J->chunk_outer) { /* next group, same chunk */
            b += g;
            j1 = j0;
        } else { /* next group, first chunk */
            b += g;
            j1 = 0;
        }
    }
    const int64_t nf = L->cols - j1 < SPQR_CC_CW ? L->cols - j1 : SPQR_CC_CW;
    for (int k = 0; k < g && b + k < L->nb; k++) {
        const uint64_t p0 = ((uint64_t)(b + k) * (uint64_t)L->cols + (uint64_t)j1) * (uint64_t)L->ibits / 8;
        const uint64_t p1 = p0 + ((uint64_t)nf * (uint64_t)L->ibits + 7) / 8;
        for (uint64_t p = p0 & ~(uint64_t)63; p < p1; p += 64) __builtin_prefetch(L->idx + p, 0, 3);
    }
}

#endif
