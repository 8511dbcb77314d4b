/* minmax.c - the asymmetric min-max quantizer used for weights (first level)
 * and for the statistics themselves (second level). */
#include "quant_internal.h"

#include <math.h>

void spqr_minmax_fit(float lo, float hi, float maxq, float *scale, float *zero) {
    if (hi > lo) {
        float s = (hi - lo) / maxq;
        if (s > 0.0f && isfinite(s)) {
            *scale = s;
            *zero = -lo / s;
            return;
        }
        /* range below float resolution: treat as degenerate */
        hi = lo = 0.5f * lo + 0.5f * hi;
    }
    float v = lo;
    if (v > 0.0f) {
        *scale = v / maxq;
        *zero = 0.0f;
    } else if (v < 0.0f) {
        *scale = -v / maxq;
        *zero = maxq;
    } else {
        *scale = 0.0f;
        *zero = 0.0f;
    }
}

void spqr_minmax_fit_bounded(float lo, float hi, float maxq, float zmin, float zmax, float *scale,
                             float *zero) {
    spqr_minmax_fit(lo, hi, maxq, scale, zero);
    if (*zero < zmin && hi > 0.0f) { /* grid far above 0: pin zero, keep top */
        *scale = hi / (maxq - zmin);
        *zero = zmin;
    } else if (*zero > zmax && lo < 0.0f) { /* far below 0: pin zero, keep bottom */
        *scale = -lo / zmax;
        *zero = zmax;
    }
}

void spqr_minmax_fit_f16(float lo, float hi, float maxq, uint16_t *scale_h, uint16_t *zero_h) {
    float s, z;
    spqr_minmax_fit(lo, hi, maxq, &s, &z);
    if (s == 0.0f) {
        s = 1.0f;
        z = 0.0f;
    }
    if (fabsf(z) > SPQR_F16_ZERO_LIMIT) {
        /* widen the grid (it still starts at lo and covers hi) so that the
         * zero point stays representable */
        s = fabsf(lo) / SPQR_F16_ZERO_LIMIT;
        z = -lo / s;
    }
    *scale_h = spqr_f32_to_f16(s);
    *zero_h = spqr_f32_to_f16(z);
}

void spqr_quantize_stat_block(const float *x, int n, int bits, uint8_t *codes, uint16_t *scale_h,
                              uint16_t *zero_h) {
    const float maxq = (float)((1 << bits) - 1);
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    spqr_minmax_fit_f16(lo, hi, maxq, scale_h, zero_h);
    const float s = spqr_f16_to_f32(*scale_h), z = spqr_f16_to_f32(*zero_h);
    for (int i = 0; i < n; i++) codes[i] = spqr_q_code(x[i], s, z, maxq);
}

/* Hessian-weighted squared error of quantizing v[i] (i != skip) on the
 * real-valued min-max grid of [lo, hi]. */
static float grid_error(const float *v, const float *hw, int n, int skip, float lo, float hi,
                        float maxq) {
    float s, z;
    spqr_minmax_fit(lo, hi, maxq, &s, &z);
    float e = 0.0f;
    for (int i = 0; i < n; i++) {
        if (i == skip) continue;
        float d = v[i] - spqr_q_deq(spqr_q_code(v[i], s, z, maxq), s, z);
        e += hw[i] * d * d;
    }
    return e;
}

void spqr_loo_reduction(const float *v, const float *hw, int n, float maxq, float *red) {
    if (n <= 0) return;
    /* smallest / largest value (first occurrence) and the runner-ups */
    int imin = 0, imax = 0;
    for (int i = 1; i < n; i++) {
        if (v[i] < v[imin]) imin = i;
        if (v[i] > v[imax]) imax = i;
    }
    const float lo = v[imin], hi = v[imax];
    if (!(hi > lo)) { /* all equal: quantized exactly either way */
        for (int i = 0; i < n; i++) red[i] = 0.0f;
        return;
    }
    float lo2 = INFINITY, hi2 = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (i != imin && v[i] < lo2) lo2 = v[i];
        if (i != imax && v[i] > hi2) hi2 = v[i];
    }

    /* Leaving out a weight that is neither the chosen minimum nor maximum
     * keeps the grid: the reduction is that weight's own error term. */
    float s, z;
    spqr_minmax_fit(lo, hi, maxq, &s, &z);
    float base = 0.0f;
    for (int i = 0; i < n; i++) {
        float d = v[i] - spqr_q_deq(spqr_q_code(v[i], s, z, maxq), s, z);
        red[i] = hw[i] * d * d;
        base += red[i];
    }
    /* n >= 2 here since lo < hi, so lo2/hi2 are finite */
    red[imin] = base - grid_error(v, hw, n, imin, lo2, hi, maxq);
    red[imax] = base - grid_error(v, hw, n, imax, lo, hi2, maxq);
}
