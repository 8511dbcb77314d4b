/* statq.c - the alternative quantizers of SpQR's bilevel statistics
 * (--stat-quantizer uniform|kmeans; minmax is spqr_quantize_stat_block in
 * minmax.c). Definitions: qlayer.h and docs/ALGORITHM.md ("Statistics
 * quantizers"). */
#include "quant_internal.h"

#include <math.h>
#include <stdlib.h>

void spqr_quantize_stat_block_uniform(const float *x, int n, int bits, uint8_t *codes, uint16_t *step_h) {
    const float m = spqr_sq_mid(bits), top = (float)((1 << bits) - 1);
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float step = amax / m;
    if (!(step <= 65504.0f)) step = 65504.0f; /* keep the fp16 step finite */
    *step_h = spqr_f32_to_f16(step);
    const float s = spqr_f16_to_f32(*step_h);
    for (int i = 0; i < n; i++) {
        /* nearest level s*(k - m): k = floor(x/s + m + 1/2) = floor(x/s) + 2^(bits-1), ties up, clamped */
        float k = s > 0.0f ? floorf(x[i] / s + m + 0.5f) : (float)(1 << (bits - 1));
        if (!(k >= 0.0f)) k = 0.0f;
        if (k > top) k = top;
        codes[i] = (uint8_t)k;
    }
}

uint8_t spqr_kmeans_code(float x, const float *cb, int k) {
    /* cb ascending: the nearest centroid is the first one >= x or the last
     * one below it (the first of a run of equal values) */
    int lo = 0, hi = k;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (cb[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    if (lo == k) lo = k - 1;
    int below = lo - 1;
    while (below > 0 && cb[below - 1] == cb[below]) below--;
    if (below >= 0 && fabsf(x - cb[below]) <= fabsf(x - cb[lo])) return (uint8_t)below;
    return (uint8_t)lo;
}

/* Squared error of x[0..n) under the nearest centroid of cb[0..k). */
static double cb_sse(const float *x, size_t n, const float *cb, int k) {
    double e = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)x[i] - cb[spqr_kmeans_code(x[i], cb, k)];
        e += d * d;
    }
    return e;
}

static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Lloyd iterations on sorted xs[0..n) from c[0..k) (sorted): assignment to the
 * nearest centroid (a point on a midpoint goes to the lower one), update to
 * the cell mean (an empty cell keeps its centroid). Neither step increases
 * the squared error. P1/P2: prefix sums of xs. */
static void lloyd(const float *xs, size_t n, const double *P1, float *c, int k, int iters) {
    size_t *end = malloc((size_t)k * sizeof *end);
    if (!end) return; /* keep the initial codebook */
    for (int it = 0; it < iters; it++) {
        for (int i = 0; i + 1 < k; i++) { /* cell i = (b_{i-1}, b_i], b_i the midpoint */
            const float b = 0.5f * c[i] + 0.5f * c[i + 1];
            size_t lo = i ? end[i - 1] : 0, hi = n;
            while (lo < hi) { /* first index with xs > b */
                const size_t mid = lo + (hi - lo) / 2;
                if (xs[mid] <= b) lo = mid + 1;
                else hi = mid;
            }
            end[i] = lo;
        }
        end[k - 1] = n;
        int changed = 0;
        for (int i = 0; i < k; i++) {
            const size_t a = i ? end[i - 1] : 0, e = end[i];
            if (e <= a) continue;
            const float v = (float)((P1[e] - P1[a]) / (double)(e - a));
            if (v != c[i]) changed = 1;
            c[i] = v;
        }
        /* means of ordered cells stay ordered; keep the order exact anyway */
        for (int i = 1; i < k; i++)
            if (c[i] < c[i - 1]) c[i] = c[i - 1];
        if (!changed) break;
    }
    free(end);
}

spqr_status spqr_kmeans_fit_stats(const float *x, size_t n, int bits, uint16_t *cb_h) {
    const int k = 1 << bits;
    float *xs = malloc((n ? n : 1) * sizeof *xs);
    double *P1 = malloc((n + 1) * sizeof *P1);
    float *c = malloc((size_t)k * sizeof *c), *cf = malloc((size_t)k * sizeof *cf), *best = malloc((size_t)k * sizeof *best);
    if (!xs || !P1 || !c || !cf || !best) {
        free(xs), free(P1), free(c), free(cf), free(best);
        return spqr_fail(SPQR_ERR_NOMEM, "k-means statistics: out of memory (%zu values)", n);
    }
    memcpy(xs, x, n * sizeof *xs);
    qsort(xs, n, sizeof *xs, cmp_float);
    P1[0] = 0.0;
    for (size_t i = 0; i < n; i++) P1[i + 1] = P1[i] + xs[i];
    const float lo = n ? xs[0] : 0.0f, hi = n ? xs[n - 1] : 0.0f;
    const float amax = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
    double best_e = INFINITY;
    /* three deterministic initial codebooks (quantiles, the min-max grid, the
     * symmetric absmax grid of the uniform variant with its fp16 step), each
     * refined by Lloyd; the fp16-rounded candidate (and the rounded inits
     * themselves) with the least squared error wins */
    for (int init = 0; init < 3; init++) {
        for (int i = 0; i < k; i++) {
            if (init == 0) c[i] = n ? xs[(size_t)(((double)i + 0.5) * (double)n / k)] : 0.0f;
            else if (init == 1) c[i] = lo + (hi - lo) * (float)i / (float)(k - 1);
            else {
                float step = amax / spqr_sq_mid(bits);
                if (!(step <= 65504.0f)) step = 65504.0f;
                c[i] = spqr_f16_to_f32(spqr_f32_to_f16(step)) * ((float)i - spqr_sq_mid(bits));
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1 && n > 0) lloyd(xs, n, P1, c, k, 100);
            for (int i = 0; i < k; i++) cf[i] = spqr_f16_to_f32(spqr_f32_to_f16(c[i]));
            const double e = cb_sse(xs, n, cf, k);
            if (e < best_e) {
                best_e = e;
                memcpy(best, cf, (size_t)k * sizeof *best);
            }
        }
    }
    for (int i = 0; i < k; i++) cb_h[i] = spqr_f32_to_f16(best[i]);
    free(xs), free(P1), free(c), free(cf), free(best);
    return SPQR_OK;
}
