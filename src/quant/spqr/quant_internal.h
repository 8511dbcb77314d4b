/* quant_internal.h - helpers shared by the quantizers in src/quant/ (and by
 * their tests). Not part of the public API.
 *
 * Conventions: a "group" is a run of consecutive permuted columns of one row
 * (first level, beta1 columns); a "stat block" is a run of beta2 consecutive
 * rows of one group's scale or zero vector (second level). */
#ifndef SPQR_QUANT_INTERNAL_H
#define SPQR_QUANT_INTERNAL_H

#include "quantize.h"

/* Largest |zero| we let a fp16-stored zero point take (fp16 max is 65504). */
#define SPQR_F16_ZERO_LIMIT 65000.0f

/* round(x) clamped to [0, maxq], as a float holding an integer. Rounds half
 * to even; NaN maps to 0. maxq must be < 2^22. */
static inline float spqr_q_round_clamp(float x, float maxq) {
    if (!(x >= 0.0f)) x = 0.0f;
    if (x > maxq) x = maxq;
    return (x + 12582912.0f) - 12582912.0f; /* 1.5 * 2^23 */
}

/* The code of w under (scale, zero): clamp(round(w / scale + zero), 0, maxq).
 * A zero scale gives code 0 (its dequantized value is 0 whatever the code). */
static inline uint8_t spqr_q_code(float w, float scale, float zero, float maxq) {
    if (scale == 0.0f) return 0;
    return (uint8_t)spqr_q_round_clamp(w / scale + zero, maxq);
}

/* Dequantized value of a code, exactly as qlayer.h defines it. */
static inline float spqr_q_deq(uint8_t code, float scale, float zero) {
    return scale * ((float)code - zero);
}

/* Real-valued asymmetric min-max fit of a range [lo, hi] (lo <= hi) to codes
 * 0..maxq: scale = (hi-lo)/maxq, zero = -lo/scale. A degenerate range
 * (lo == hi == v) is fitted as the range [min(v,0), max(v,0)] so that v is a
 * grid point; v == 0 gives scale 0 (the caller picks any scale; zero is 0). */
void spqr_minmax_fit(float lo, float hi, float maxq, float *scale, float *zero);

/* spqr_minmax_fit with the zero point kept within [zmin, zmax] (zmin <= 0,
 * zmax >= maxq): a group far from 0 gets a wider grid that still covers
 * [lo, hi]. Used for bilevel statistics, where one extreme zero point would
 * ruin the second-level grid of its whole row block. */
void spqr_minmax_fit_bounded(float lo, float hi, float maxq, float zmin, float zmax, float *scale,
                             float *zero);

/* Like spqr_minmax_fit, but for statistics that are stored as fp16: a zero
 * scale becomes 1, the scale is widened if needed so that |zero| stays within
 * SPQR_F16_ZERO_LIMIT, and both are rounded to fp16 bits. */
void spqr_minmax_fit_f16(float lo, float hi, float maxq, uint16_t *scale_h,
                         uint16_t *zero_h);

/* Second-level quantization of n statistics x[0..n) (one stat block) with a
 * min-max `bits`-bit quantizer whose scale/zero are fp16: writes codes[0..n)
 * and the fp16 bits of the block's scale and zero. */
void spqr_quantize_stat_block(const float *x, int n, int bits, uint8_t *codes,
                              uint16_t *scale_h, uint16_t *zero_h);

/* Uniform (symmetric) second-level quantization of one stat block (statq.c):
 * step = fp16(max|x| / m) with m = (2^bits - 1)/2 (clamped to 65504), code
 * k = clamp(floor(x / step + m + 1/2), 0, 2^bits - 1) (nearest level
 * step*(k - m), ties up; a zero step gives k = 2^(bits-1)). */
void spqr_quantize_stat_block_uniform(const float *x, int n, int bits, uint8_t *codes, uint16_t *step_h);

/* Fit a 2^bits-level codebook to x[0..n) (statq.c): Lloyd iterations from
 * three deterministic initial codebooks (quantiles, min-max grid, symmetric
 * absmax grid), fp16 centroids, sorted ascending; returns the candidate (the
 * inits included) with the least squared error under spqr_kmeans_code. */
spqr_status spqr_kmeans_fit_stats(const float *x, size_t n, int bits, uint16_t *cb_h);

/* Index of the centroid of cb[0..k) (ascending) nearest to x (the lowest on
 * a tie). O(log k). */
uint8_t spqr_kmeans_code(float x, const float *cb, int k);

/* Leave-one-out outlier criterion of one row of a group: v[0..n) the weights,
 * hw[0..n) their Hessian weights 1/U[k][k]^2. red[k] = (sum_i hw_i (v_i -
 * q_i)^2 with the min-max grid fitted on all of v) - (the same sum over
 * i != k with the grid fitted on v without v_k). Real-valued (unrounded)
 * statistics; O(n). */
void spqr_loo_reduction(const float *v, const float *hw, int n, float maxq,
                        float *red);

/* Outlier record produced by the engine. */
typedef struct spqr_outlier_rec {
    uint32_t row, col; /* col: permuted column */
    uint16_t val;      /* fp16 residual */
} spqr_outlier_rec;

typedef struct spqr_outlier_list {
    spqr_outlier_rec *v;
    size_t n, cap;
} spqr_outlier_list;

/* The quantization engine shared by RTN, GPTQ and SpQR.
 * W [rows][cols] original order; H [cols][cols] (NULL for RTN); q must be
 * allocated by the caller with the final geometry (beta1 normalized).
 * committed (optional, [rows][cols], ORIGINAL column order) receives the
 * values the algorithm committed to, i.e. what spqr_qlayer_dequantize(q)
 * returns. Fills perm, codes, statistics and the outlier CSR of q. */
spqr_status spqr_quant_engine(const float *W, int rows, int cols,
                              const double *H, const spqr_qparams *p,
                              spqr_qlayer *q, float *committed);

/* spqr_quantize_layer with an optional `committed` output ([rows][cols],
 * original column order; see spqr_quant_engine). */
spqr_status spqr_quantize_layer_ex(const float *W, int rows, int cols,
                                   const double *H, const spqr_qparams *p,
                                   spqr_qlayer *out, spqr_qlayer_report *rep,
                                   float *committed);

#endif
