/* qgemm_internal.h - interface between the SpQR product driver (qgemm.c)
 * and its SIMD tile kernels (qgemm_avx2.c, qgemm_avx512.c). */
#ifndef SPQR_KERNELS_INTERNAL_H
#define SPQR_KERNELS_INTERNAL_H

#include "../../../kernels/cpu/cpu.h"
#include "qgemm.h"

/* Tokens handled per pass over the weights, and columns decoded per chunk
 * (a multiple of 32: one chunk's decoded codes, 16 rows x QG_CH floats, stay
 * in L1 while every token of the pass consumes them). */
#define SPQR_QG_TB 64
#define SPQR_QG_CH 256

/* One pass: tokens [t0, t0 + nt) of a call, nt <= SPQR_QG_TB. */
typedef struct spqr_qg_job {
    const spqr_packed *W;
    const float *xp; /* [cols][nt]: inputs in permuted column order, tokens   */
                     /* interleaved: xp[j * nt + t]                          */
    const float *xs; /* [nt][ngroups]: sums of xp over each group            */
    int nt;
    float *Y;        /* output of the pass's first token; row stride W->rows */
} spqr_qg_job;

/* Per-thread scratch the tile kernels need (bytes, multiple of 64). */
size_t spqr_qg_scratch_bytes(const spqr_packed *W);

/* Groups whose statistics a chunk may need. */
static inline int64_t spqr_qg_chunk_groups(const spqr_packed *W) {
    int64_t n = SPQR_QG_CH / W->beta1 + 2;
    return n < W->ngroups ? n : W->ngroups;
}

/* Compute rows [16*tile, 16*tile + 16) of Y for the job's tokens: the dense
 * part and the outliers. scratch: spqr_qg_scratch_bytes, 64-byte aligned. */
void spqr_qg_tile_avx2(const spqr_qg_job *job, int64_t tile, void *scratch);
void spqr_qg_tile_avx512(const spqr_qg_job *job, int64_t tile, void *scratch);

#endif
