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

/* Per-thread scratch the tile kernels need (bytes, multiple of 64), and its
 * buffers (64-byte aligned) carved from a scratch block of that size. */
typedef struct spqr_qg_bufs {
    float *cbuf;   /* [SPQR_QG_CH][16] decoded codes of the current chunk       */
    float *sbuf;   /* [groups of chunk][2][16] scale, zero                      */
    float *state;  /* [nt][16] (AVX-512: [nt][32]) y accumulators of the tile   */
    float *s2f;    /* [ngroups][4] float stats2 of the tile's row block         */
    float *tstats; /* [ngroups][2][16] scale, zero of the tile (fused path)     */
    float *olbuf;  /* [max_tile_outliers] outlier products                      */
} spqr_qg_bufs;
size_t spqr_qg_scratch_bytes(const spqr_packed *W);
void spqr_qg_carve(const spqr_packed *W, void *scratch, spqr_qg_bufs *b);

/* 32-column blocks [0, n) that the fused single-token paths cover: whole
 * groups inside whole blocks. */
int64_t spqr_qg_fused_blocks(const spqr_packed *W);

/* Groups whose statistics a chunk may need. */
static inline int64_t spqr_qg_chunk_groups(const spqr_packed *W) {
    int64_t n = SPQR_QG_CH / W->beta1 + 2;
    return n < W->ngroups ? n : W->ngroups;
}

/* Compute rows [16*tile, 16*tile + 16) of Y for the job's tokens: the dense
 * part and the outliers. scratch: spqr_qg_scratch_bytes, 64-byte aligned. */
void spqr_qg_tile_avx2(const spqr_qg_job *job, int64_t tile, void *scratch);
void spqr_qg_tile_avx512(const spqr_qg_job *job, int64_t tile, void *scratch);

/* Decoder of one 32-column block of a tile's codes: the B words of 16 lanes
 * at wp into out[32][16] floats (a variant's SIMD routine). */
typedef void (*spqr_qg_dec_block_fn)(const uint32_t *wp, float *out, int B);

/* Decode columns [c0, c1) (whole 32-column blocks; the last block of a row
 * may lack words, which read as zero) of tile `tile` into out[c1-c0][16].
 * Inlined with a constant B and dec, so each variant gets its own loop. */
static inline __attribute__((always_inline)) void spqr_qg_dec_codes(const spqr_packed *W, int64_t tile, int64_t c0,
                                                                    int64_t c1, float *out, const int B,
                                                                    spqr_qg_dec_block_fn dec) {
    const uint32_t *tw = W->codes + tile * W->code_words * SPQR_PACKED_TILE;
    for (int64_t j = c0; j < c1; j += 32) {
        const int64_t w0 = (j >> 5) * B; /* first word of this block */
        float *o = out + (j - c0) * SPQR_PACKED_TILE;
        if (w0 + B <= W->code_words) {
            dec(tw + w0 * SPQR_PACKED_TILE, o, B);
        } else { /* last, partial block: copy the words that exist */
            uint32_t tmp[8 * SPQR_PACKED_TILE] __attribute__((aligned(64)));
            memset(tmp, 0, sizeof tmp);
            memcpy(tmp, tw + w0 * SPQR_PACKED_TILE, (size_t)(W->code_words - w0) * SPQR_PACKED_TILE * sizeof(uint32_t));
            dec(tmp, o, B);
        }
    }
}

/* spqr_qg_dec_codes for W's code width, specialized per width. */
#define SPQR_QG_DEC_CASE(B) spqr_qg_dec_codes(W, tile, c0, c1, out, B, dec)
static inline __attribute__((always_inline)) void spqr_qg_dec_chunk(const spqr_packed *W, int64_t tile, int64_t c0,
                                                                    int64_t c1, float *out, spqr_qg_dec_block_fn dec);

/* CASE(B) for the code width B of W (2..8), B a compile-time constant in
 * each case, so kernels specialize on it. */
#define SPQR_QG_SWITCH_WBITS(wbits, CASE)                                                                            \
    switch (wbits) {                                                                                                 \
    case 2: CASE(2); break;                                                                                          \
    case 3: CASE(3); break;                                                                                          \
    case 4: CASE(4); break;                                                                                          \
    case 5: CASE(5); break;                                                                                          \
    case 6: CASE(6); break;                                                                                          \
    case 7: CASE(7); break;                                                                                          \
    default: CASE(8); break;                                                                                         \
    }

static inline __attribute__((always_inline)) void spqr_qg_dec_chunk(const spqr_packed *W, int64_t tile, int64_t c0,
                                                                    int64_t c1, float *out, spqr_qg_dec_block_fn dec) {
    SPQR_QG_SWITCH_WBITS(W->wbits, SPQR_QG_DEC_CASE)
}

#endif
