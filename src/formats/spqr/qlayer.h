/* qlayer.h - the in-memory form of one quantized linear layer.
 *
 * This is what the quantizers (RTN, GPTQ, SpQR) produce and what the file
 * format packs and the kernels consume (after packing). Everything is stored
 * in *permuted* input-column order: permuted column j is original column
 * perm[j]. A layer computes y = W x with W of shape [rows][cols]
 * (rows = out_features, cols = in_features).
 *
 * Dequantization (the one definition; quantizer, CPU and GPU kernels and the
 * tests all compute exactly this, in float32, in this order of operations):
 *
 *   g  = j / beta1                         (first-level group of column j)
 *   if beta2 > 0 (bilevel statistics), by the statistics quantizer sq:
 *     minmax, uniform:
 *       rb    = r / beta2                  (second-level row block)
 *       scale = f16(s2_scale[g*nrb+rb]) * ((float)scale_code[g*rows+r] - f16(s2_zero[g*nrb+rb]))
 *       zero  = f16(z2_scale[g*nrb+rb])  * ((float)zero_code[g*rows+r]  - f16(z2_zero[g*nrb+rb]))
 *       (uniform: s2_zero and z2_zero are fixed at the mid-points
 *        (2^sbits - 1)/2 and (2^zbits - 1)/2, which are exact in fp16; the
 *        file stores only s2_scale and z2_scale, spqr_sq_mid)
 *     kmeans (one codebook per layer and statistic kind):
 *       scale = f16(cb_scale[scale_code[g*rows+r]])
 *       zero  = f16(cb_zero[zero_code[g*rows+r]])
 *   else:
 *       scale = f16(scale_f16[g*rows+r]);  zero = f16(zero_f16[g*rows+r])
 *   w = scale * ((float)code[r*cols+j] - zero)
 *   if (r, j) is an outlier:  w = w + f16(ol_val[k])
 *
 * where f16() converts IEEE half bits to float and nrb = ceil(rows/beta2).
 * Groups are consecutive permuted columns; the last group may be partial
 * (cols need not be a multiple of beta1), and so may the last row block.
 */
#ifndef SPQR_QLAYER_H
#define SPQR_QLAYER_H

#include "../../util/common.h"

/* Quantizer of the bilevel statistics (the layer key "stat_quantizer"). */
typedef enum spqr_statq {
    SPQR_SQ_MINMAX = 0,  /* asymmetric min-max per (row block, group): stats2 [NRB][NG][4] */
    SPQR_SQ_UNIFORM = 1, /* symmetric absmax per (row block, group), mid-point zero: [NRB][NG][2] */
    SPQR_SQ_KMEANS = 2,  /* Lloyd codebook per layer: [2^sbits + 2^zbits] fp16 centroids */
    SPQR_SQ_COUNT = 3
} spqr_statq;

/* "minmax", "uniform", "kmeans" (NULL for an unknown value). */
const char *spqr_statq_name(int sq);
/* The variant named s, or -1. */
int spqr_statq_parse(const char *s);
/* The uniform variant's fixed mid-point code (2^bits - 1) / 2 (exact in fp16). */
static inline float spqr_sq_mid(int bits) { return 0.5f * (float)((1 << bits) - 1); }

typedef struct spqr_qlayer {
    int32_t rows, cols;
    int32_t wbits;         /* 2..8: codes in [0, 2^wbits - 1]                 */
    int32_t beta1;         /* first-level group size along permuted columns  */
    int32_t beta2;         /* second-level row-block size; 0 = fp16 stats    */
    int32_t sbits, zbits;  /* bits of scale / zero codes (bilevel only)      */
    int32_t ngroups;       /* ceil(cols / beta1)                              */
    int32_t nrb;           /* ceil(rows / beta2) (0 when beta2 == 0)         */
    int32_t sq;            /* spqr_statq (bilevel only; 0 = minmax)          */

    int32_t *perm;         /* [cols] always present (identity allowed)       */
    uint8_t *codes;        /* [rows * cols] one code per byte, row-major     */

    /* bilevel (beta2 > 0) */
    uint8_t *scale_code;   /* [ngroups * rows]                                */
    uint8_t *zero_code;    /* [ngroups * rows]                                */
    uint16_t *s2_scale, *s2_zero; /* [ngroups * nrb] fp16 bits              */
    uint16_t *z2_scale, *z2_zero; /* [ngroups * nrb] fp16 bits              */
    uint16_t *cb_scale;    /* kmeans: [2^sbits] fp16 centroids (NULL otherwise) */
    uint16_t *cb_zero;     /* kmeans: [2^zbits] fp16 centroids                */

    /* plain (beta2 == 0) */
    uint16_t *scale_f16;   /* [ngroups * rows] fp16 bits                      */
    uint16_t *zero_f16;    /* [ngroups * rows] fp16 bits                      */

    /* outliers, CSR by row, columns ascending (permuted order) */
    int64_t n_outliers;
    uint32_t *row_ptr;     /* [rows + 1]                                      */
    uint32_t *ol_col;      /* [n_outliers] permuted column index              */
    uint16_t *ol_val;      /* [n_outliers] fp16 residual added to dense value */
} spqr_qlayer;

/* Allocate all arrays for the given geometry (zeroed; perm = identity;
 * outliers empty: row_ptr all 0, ol_col/ol_val NULL). beta1 == 0 means one
 * group per row and is stored as beta1 = cols. Arrays of the other statistic
 * mode are NULL. Returns SPQR_ERR_INVALID_ARG / SPQR_ERR_NOMEM. */
spqr_status spqr_qlayer_alloc(spqr_qlayer *q, int32_t rows, int32_t cols,
                              int32_t wbits, int32_t beta1, int32_t beta2,
                              int32_t sbits, int32_t zbits);
void spqr_qlayer_free(spqr_qlayer *q); /* frees arrays, zeroes the struct */

/* Switch a freshly allocated bilevel layer to statistics quantizer sq:
 * uniform fills s2_zero / z2_zero with the fixed mid-points, kmeans
 * allocates cb_scale / cb_zero (zeroed). SPQR_ERR_INVALID_ARG for an unknown
 * sq or a non-minmax sq on a layer with beta2 == 0; SPQR_ERR_NOMEM. */
spqr_status spqr_qlayer_set_statq(spqr_qlayer *q, int sq);

/* First-level statistics of (row r, group g), dequantized as defined above. */
void spqr_qlayer_group_stats(const spqr_qlayer *q, int32_t r, int32_t g,
                             float *scale, float *zero);

/* Dense float32 weights [rows][cols] in ORIGINAL column order. */
void spqr_qlayer_dequantize(const spqr_qlayer *q, float *w);

/* Exact storage bits of the quantized layer as the paper counts them:
 * wbits + (sbits+zbits)/beta1 + 2*(16+16)/(beta1*beta2) + 32*outlier share
 * (beta2 == 0: wbits + 32/beta1 + 32*outlier share), per weight. The second-
 * level term depends on the statistics quantizer: minmax 64/(beta1*beta2)
 * (two fp16 scale+zero pairs), uniform 32/(beta1*beta2) (two fp16 steps),
 * kmeans 16*(2^sbits + 2^zbits)/(rows*cols) (the layer's two codebooks). */
double spqr_qlayer_formula_bits(const spqr_qlayer *q);
/* The same formula from the geometry (beta1 <= 0 or > cols: one group per
 * row), minmax statistics; the one definition used by the quantizers, the
 * file and inspect. */
double spqr_formula_bits(int64_t rows, int64_t cols, int wbits, int beta1, int beta2, int sbits, int zbits,
                         int64_t n_outliers);
/* spqr_formula_bits for statistics quantizer sq (spqr_statq). */
double spqr_formula_bits_sq(int64_t rows, int64_t cols, int wbits, int beta1, int beta2, int sbits, int zbits,
                            int sq, int64_t n_outliers);

/* Check that a layer (e.g. one read from a file) is self-consistent: known
 * geometry, perm a permutation, every code within its bit width, finite
 * statistics, a well-formed outlier CSR (columns strictly ascending per row).
 * Returns SPQR_ERR_FORMAT with a message naming the problem. O(rows*cols). */
spqr_status spqr_qlayer_validate(const spqr_qlayer *q);

#endif
