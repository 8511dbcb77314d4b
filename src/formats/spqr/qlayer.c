/* qlayer.c - allocation, dequantization and size accounting of a quantized
 * layer (the definition of dequantization is the header comment of qlayer.h). */
#include "qlayer.h"

#include <math.h>
#include <stdlib.h>

static int32_t ceil_div(int32_t a, int32_t b) { return (int32_t)(((int64_t)a + b - 1) / b); }

static const char *const k_sq_names[SPQR_SQ_COUNT] = {"minmax", "uniform", "kmeans"};

const char *spqr_statq_name(int sq) { return sq >= 0 && sq < SPQR_SQ_COUNT ? k_sq_names[sq] : NULL; }

int spqr_statq_parse(const char *s) {
    for (int i = 0; s && i < SPQR_SQ_COUNT; i++)
        if (!strcmp(s, k_sq_names[i])) return i;
    return -1;
}

spqr_status spqr_qlayer_set_statq(spqr_qlayer *q, int sq) {
    if (!q || sq < 0 || sq >= SPQR_SQ_COUNT)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer: unknown statistics quantizer %d", sq);
    if (sq != SPQR_SQ_MINMAX && q->beta2 <= 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer: statistics quantizer '%s' needs bilevel statistics (beta2 > 0)",
                         spqr_statq_name(sq));
    free(q->cb_scale);
    free(q->cb_zero);
    q->cb_scale = q->cb_zero = NULL;
    q->sq = sq;
    if (sq == SPQR_SQ_UNIFORM) {
        const uint16_t ms = spqr_f32_to_f16(spqr_sq_mid(q->sbits)), mz = spqr_f32_to_f16(spqr_sq_mid(q->zbits));
        for (size_t i = 0; i < (size_t)q->ngroups * (size_t)q->nrb; i++) {
            q->s2_zero[i] = ms;
            q->z2_zero[i] = mz;
        }
    } else if (sq == SPQR_SQ_KMEANS) {
        q->cb_scale = spqr_calloc_array((size_t)1 << q->sbits, sizeof(uint16_t));
        q->cb_zero = spqr_calloc_array((size_t)1 << q->zbits, sizeof(uint16_t));
        if (!q->cb_scale || !q->cb_zero) return spqr_fail(SPQR_ERR_NOMEM, "qlayer: out of memory");
    }
    return SPQR_OK;
}

spqr_status spqr_qlayer_alloc(spqr_qlayer *q, int32_t rows, int32_t cols,
                              int32_t wbits, int32_t beta1, int32_t beta2,
                              int32_t sbits, int32_t zbits) {
    if (!q) return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer_alloc: NULL layer");
    memset(q, 0, sizeof *q);
    if (rows < 1 || cols < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer_alloc: bad shape %dx%d", (int)rows, (int)cols);
    if (wbits < 2 || wbits > 8)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer_alloc: weight bits %d not in 2..8", (int)wbits);
    if (beta1 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer_alloc: negative group size %d", (int)beta1);
    if (beta2 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qlayer_alloc: negative statistic block size %d",
                         (int)beta2);
    if (beta2 > 0 && (sbits < 1 || sbits > 8 || zbits < 1 || zbits > 8))
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "qlayer_alloc: statistic bits (scale %d, zero %d) not in 1..8",
                         (int)sbits, (int)zbits);
    if (beta1 == 0) beta1 = cols;

    q->rows = rows;
    q->cols = cols;
    q->wbits = wbits;
    q->beta1 = beta1;
    q->beta2 = beta2;
    q->sbits = sbits;
    q->zbits = zbits;
    q->ngroups = ceil_div(cols, beta1);
    q->nrb = beta2 > 0 ? ceil_div(rows, beta2) : 0;

    size_t nw, ns, n2;
    if (!spqr_mul_size((size_t)rows, (size_t)cols, &nw) ||
        !spqr_mul_size((size_t)q->ngroups, (size_t)rows, &ns) ||
        !spqr_mul_size((size_t)q->ngroups, (size_t)(q->nrb > 0 ? q->nrb : 1), &n2))
        return spqr_fail(SPQR_ERR_NOMEM, "qlayer_alloc: layer %dx%d too large", (int)rows, (int)cols);

    bool ok = true;
    q->perm = spqr_malloc_array((size_t)cols, sizeof *q->perm);
    q->codes = spqr_calloc_array(nw, 1);
    q->row_ptr = spqr_calloc_array((size_t)rows + 1, sizeof *q->row_ptr);
    ok = q->perm && q->codes && q->row_ptr;
    if (beta2 > 0) {
        q->scale_code = spqr_calloc_array(ns, 1);
        q->zero_code = spqr_calloc_array(ns, 1);
        q->s2_scale = spqr_calloc_array(n2, sizeof(uint16_t));
        q->s2_zero = spqr_calloc_array(n2, sizeof(uint16_t));
        q->z2_scale = spqr_calloc_array(n2, sizeof(uint16_t));
        q->z2_zero = spqr_calloc_array(n2, sizeof(uint16_t));
        ok = ok && q->scale_code && q->zero_code && q->s2_scale && q->s2_zero && q->z2_scale &&
             q->z2_zero;
    } else {
        q->scale_f16 = spqr_calloc_array(ns, sizeof(uint16_t));
        q->zero_f16 = spqr_calloc_array(ns, sizeof(uint16_t));
        ok = ok && q->scale_f16 && q->zero_f16;
    }
    if (!ok) {
        spqr_qlayer_free(q);
        return spqr_fail(SPQR_ERR_NOMEM, "qlayer_alloc: out of memory for a %dx%d layer", (int)rows,
                         (int)cols);
    }
    for (int32_t j = 0; j < cols; j++) q->perm[j] = j;
    return SPQR_OK;
}

void spqr_qlayer_free(spqr_qlayer *q) {
    if (!q) return;
    free(q->perm);
    free(q->codes);
    free(q->scale_code);
    free(q->zero_code);
    free(q->s2_scale);
    free(q->s2_zero);
    free(q->z2_scale);
    free(q->z2_zero);
    free(q->cb_scale);
    free(q->cb_zero);
    free(q->scale_f16);
    free(q->zero_f16);
    free(q->row_ptr);
    free(q->ol_col);
    free(q->ol_val);
    memset(q, 0, sizeof *q);
}

void spqr_qlayer_group_stats(const spqr_qlayer *q, int32_t r, int32_t g, float *scale,
                             float *zero) {
    size_t i = (size_t)g * (size_t)q->rows + (size_t)r;
    if (q->beta2 > 0 && q->sq == SPQR_SQ_KMEANS) {
        *scale = spqr_f16_to_f32(q->cb_scale[q->scale_code[i]]);
        *zero = spqr_f16_to_f32(q->cb_zero[q->zero_code[i]]);
    } else if (q->beta2 > 0) { /* minmax; uniform has s2_zero / z2_zero at the mid-points */
        size_t b = (size_t)g * (size_t)q->nrb + (size_t)(r / q->beta2);
        *scale = spqr_f16_to_f32(q->s2_scale[b]) *
                 ((float)q->scale_code[i] - spqr_f16_to_f32(q->s2_zero[b]));
        *zero = spqr_f16_to_f32(q->z2_scale[b]) *
                ((float)q->zero_code[i] - spqr_f16_to_f32(q->z2_zero[b]));
    } else {
        *scale = spqr_f16_to_f32(q->scale_f16[i]);
        *zero = spqr_f16_to_f32(q->zero_f16[i]);
    }
}

void spqr_qlayer_dequantize(const spqr_qlayer *q, float *w) {
    const int32_t rows = q->rows, cols = q->cols, glen = q->beta1;
#pragma omp parallel for schedule(static) if ((int64_t)rows * cols > (1 << 18))
    for (int32_t r = 0; r < rows; r++) {
        const uint8_t *c = q->codes + (size_t)r * (size_t)cols;
        float *out = w + (size_t)r * (size_t)cols;
        uint32_t k = q->row_ptr[r], kend = q->row_ptr[r + 1];
        for (int32_t g = 0; g < q->ngroups; g++) {
            float s, z;
            spqr_qlayer_group_stats(q, r, g, &s, &z);
            int32_t j1 = (g + 1) * glen < cols ? (g + 1) * glen : cols;
            for (int32_t j = g * glen; j < j1; j++) {
                float v = s * ((float)c[j] - z);
                if (k < kend && q->ol_col[k] == (uint32_t)j) {
                    v = v + spqr_f16_to_f32(q->ol_val[k]);
                    k++;
                }
                out[q->perm[j]] = v;
            }
        }
    }
}

double spqr_formula_bits_sq(int64_t rows, int64_t cols, int wbits, int beta1, int beta2, int sbits, int zbits,
                            int sq, int64_t n_outliers) {
    double n = (double)rows * (double)cols;
    double g = (double)(beta1 > 0 && beta1 < cols ? beta1 : cols);
    double share = n > 0 ? (double)n_outliers / n : 0.0;
    if (beta2 > 0) {
        double second = 2.0 * (16 + 16) / (g * beta2); /* minmax: 2 x (scale, zero) fp16 per block */
        if (sq == SPQR_SQ_UNIFORM) second = 2.0 * 16 / (g * beta2); /* 2 fp16 steps per block */
        if (sq == SPQR_SQ_KMEANS) second = n > 0 ? 16.0 * (double)((1 << sbits) + (1 << zbits)) / n : 0.0;
        return wbits + (double)(sbits + zbits) / g + second + 32.0 * share;
    }
    return wbits + 32.0 / g + 32.0 * share;
}

double spqr_formula_bits(int64_t rows, int64_t cols, int wbits, int beta1, int beta2, int sbits, int zbits,
                         int64_t n_outliers) {
    return spqr_formula_bits_sq(rows, cols, wbits, beta1, beta2, sbits, zbits, SPQR_SQ_MINMAX, n_outliers);
}

double spqr_qlayer_formula_bits(const spqr_qlayer *q) {
    return spqr_formula_bits_sq(q->rows, q->cols, q->wbits, q->beta1, q->beta2, q->sbits, q->zbits, q->sq,
                                q->n_outliers);
}

static bool f16_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

spqr_status spqr_qlayer_validate(const spqr_qlayer *q) {
    if (!q) return spqr_fail(SPQR_ERR_INVALID_ARG, "quantized layer: NULL");
    const int32_t rows = q->rows, cols = q->cols;
    if (rows < 1 || cols < 1)
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: bad shape %dx%d", (int)rows, (int)cols);
    if (q->wbits < 2 || q->wbits > 8)
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: weight bits %d not in 2..8", (int)q->wbits);
    if (q->beta1 < 1 || q->ngroups != ceil_div(cols, q->beta1))
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: group size %d / group count %d do not "
                         "match %d columns", (int)q->beta1, (int)q->ngroups, (int)cols);
    if (q->beta2 < 0 || (q->beta2 > 0 && q->nrb != ceil_div(rows, q->beta2)) ||
        (q->beta2 == 0 && q->nrb != 0))
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: statistic block size %d / count %d do "
                         "not match %d rows", (int)q->beta2, (int)q->nrb, (int)rows);
    if (q->beta2 > 0 && (q->sbits < 1 || q->sbits > 8 || q->zbits < 1 || q->zbits > 8))
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: statistic bits (%d, %d) not in 1..8",
                         (int)q->sbits, (int)q->zbits);
    if (q->beta2 == 0 && q->sq != SPQR_SQ_MINMAX)
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: statistics quantizer %d without bilevel statistics",
                         (int)q->sq);
    if (!q->perm || !q->codes || !q->row_ptr)
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: missing arrays");
    if (q->beta2 > 0 ? !(q->scale_code && q->zero_code && q->s2_scale && q->s2_zero &&
                         q->z2_scale && q->z2_zero)
                     : !(q->scale_f16 && q->zero_f16))
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: missing statistics arrays");

    /* perm is a permutation */
    uint8_t *seen = calloc((size_t)cols, 1);
    if (!seen) return spqr_fail(SPQR_ERR_NOMEM, "quantized layer: out of memory");
    for (int32_t j = 0; j < cols; j++) {
        int32_t p = q->perm[j];
        if (p < 0 || p >= cols || seen[p]) {
            free(seen);
            return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: permutation entry %d (= %d) is out "
                             "of range or repeated", (int)j, (int)p);
        }
        seen[p] = 1;
    }
    free(seen);

    const size_t nw = (size_t)rows * (size_t)cols;
    const uint32_t maxq = (1u << q->wbits) - 1u;
    for (size_t i = 0; i < nw; i++)
        if (q->codes[i] > maxq)
            return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: code %u at %zu exceeds %d bits",
                             (unsigned)q->codes[i], i, (int)q->wbits);
    const size_t ns = (size_t)q->ngroups * (size_t)rows;
    if (q->beta2 > 0) {
        const uint32_t smax = (1u << q->sbits) - 1u, zmax = (1u << q->zbits) - 1u;
        for (size_t i = 0; i < ns; i++)
            if (q->scale_code[i] > smax || q->zero_code[i] > zmax)
                return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: statistic code at %zu exceeds "
                                 "its bit width", i);
        const size_t n2 = (size_t)q->ngroups * (size_t)q->nrb;
        if (q->sq < 0 || q->sq >= SPQR_SQ_COUNT)
            return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: unknown statistics quantizer %d", (int)q->sq);
        if (q->sq == SPQR_SQ_UNIFORM) {
            const uint16_t ms = spqr_f32_to_f16(spqr_sq_mid(q->sbits)), mz = spqr_f32_to_f16(spqr_sq_mid(q->zbits));
            for (size_t i = 0; i < n2; i++)
                if (q->s2_zero[i] != ms || q->z2_zero[i] != mz)
                    return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: uniform statistics with a zero point "
                                     "other than the mid-point at %zu", i);
        }
        if (q->sq == SPQR_SQ_KMEANS) {
            if (!q->cb_scale || !q->cb_zero)
                return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: missing k-means codebooks");
            for (int i = 0; i < (1 << q->sbits); i++)
                if (!f16_finite(q->cb_scale[i]))
                    return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: non-finite scale centroid %d", i);
            for (int i = 0; i < (1 << q->zbits); i++)
                if (!f16_finite(q->cb_zero[i]))
                    return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: non-finite zero centroid %d", i);
        }
        for (size_t i = 0; i < n2; i++)
            if (!f16_finite(q->s2_scale[i]) || !f16_finite(q->s2_zero[i]) ||
                !f16_finite(q->z2_scale[i]) || !f16_finite(q->z2_zero[i]))
                return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: non-finite second-level "
                                 "statistic at %zu", i);
    } else {
        for (size_t i = 0; i < ns; i++)
            if (!f16_finite(q->scale_f16[i]) || !f16_finite(q->zero_f16[i]))
                return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: non-finite statistic at %zu", i);
    }

    if (q->n_outliers < 0 || (uint64_t)q->n_outliers > (uint64_t)nw || q->row_ptr[0] != 0 ||
        (int64_t)q->row_ptr[rows] != q->n_outliers)
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: outlier count %lld does not match its "
                         "row pointers", (long long)q->n_outliers);
    if (q->n_outliers > 0 && (!q->ol_col || !q->ol_val))
        return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: missing outlier arrays");
    for (int32_t r = 0; r < rows; r++) {
        uint32_t a = q->row_ptr[r], b = q->row_ptr[r + 1];
        if (b < a || (int64_t)b > q->n_outliers)
            return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: outlier row pointers decrease at "
                             "row %d", (int)r);
        for (uint32_t k = a; k < b; k++) {
            if (q->ol_col[k] >= (uint32_t)cols || (k > a && q->ol_col[k] <= q->ol_col[k - 1]))
                return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: outlier columns of row %d out "
                                 "of range or not ascending", (int)r);
            if (!f16_finite(q->ol_val[k]))
                return spqr_fail(SPQR_ERR_FORMAT, "quantized layer: non-finite outlier value in "
                                 "row %d", (int)r);
        }
    }
    return SPQR_OK;
}
