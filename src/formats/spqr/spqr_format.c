/* spqr_format.c - the SpQR packed layout (packed.h) as a registered
 * quantized-layer format ("spqr"): file sections and geometry, accounting,
 * the CPU kernels (cpu/qgemm.h) and the CUDA kernels (cuda/spqr_cuda.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../format/qformat.h"
#include "cuda/spqr_cuda.h"
#include "cpu/qgemm.h"
#include "packed.h"

static spqr_dtype section_dtype(const char *name, int wide) {
    if (!strcmp(name, "codes") || !strcmp(name, "stat_codes")) return SPQR_DT_U32;
    if (!strcmp(name, "stats2") || !strcmp(name, "stats") || !strcmp(name, "ol_val")) return SPQR_DT_F16;
    return wide ? SPQR_DT_U32 : SPQR_DT_U16;
}

static int s_sections(const void *payload, spqr_qsection *out, int max) {
    const spqr_packed *p = payload;
    spqr_packed_section sec[SPQR_PACKED_MAX_SECTIONS];
    int n = spqr_packed_sections(p, sec, SPQR_PACKED_MAX_SECTIONS);
    if (n < 0 || n > max) return -1;
    for (int i = 0; i < n; i++) {
        /* ol_count is recorded with its real element type (the "ocw" key is
         * authoritative; layouts 1-2 recorded the index dtype, which could
         * not describe an odd number of 1-byte counts) */
        spqr_dtype dt = !strcmp(sec[i].name, "ol_count") ? (p->ocsz == 1 ? SPQR_DT_U8 : p->ocsz == 2 ? SPQR_DT_U16 : SPQR_DT_U32)
                                                         : section_dtype(sec[i].name, p->wide);
        out[i] = (spqr_qsection){sec[i].name, dt, sec[i].data, sec[i].bytes};
    }
    return n;
}

static spqr_status s_write_geometry(const void *payload, cJSON *o) {
    const spqr_packed *p = payload;
    spqr_packed_geom g;
    spqr_packed_geometry(p, &g);
    const struct {
        const char *k;
        int v;
    } keys[] = {{"rows", g.rows},   {"cols", g.cols},   {"wbits", g.wbits}, {"beta1", g.beta1},
                {"beta2", g.beta2}, {"sbits", g.sbits}, {"zbits", g.zbits}, {"ocw", g.ocw}};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!cJSON_AddNumberToObject(o, keys[i].k, keys[i].v)) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if (!cJSON_AddNumberToObject(o, "n_outliers", (double)p->n_outliers))
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    /* written only for the non-default variants: a minmax layer's metadata is
     * what it was before the key existed */
    if (g.sq != SPQR_SQ_MINMAX && !cJSON_AddStringToObject(o, "stat_quantizer", spqr_statq_name(g.sq)))
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    return SPQR_OK;
}

static bool jint(const cJSON *o, const char *k, int lo, int hi, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi)) return false;
    if (j->valuedouble != floor(j->valuedouble)) return false;
    *out = (int)j->valuedouble;
    return true;
}

/* Geometry of a layer's metadata object (files of model layouts 1-3). */
static spqr_status read_geom(const cJSON *lj, spqr_packed_geom *g) {
    if (!jint(lj, "rows", 1, 1 << 30, &g->rows) || !jint(lj, "cols", 1, 1 << 30, &g->cols) ||
        !jint(lj, "wbits", 1, 16, &g->wbits) || !jint(lj, "beta1", 0, 1 << 30, &g->beta1) ||
        !jint(lj, "beta2", 0, 1 << 30, &g->beta2) || !jint(lj, "sbits", 0, 16, &g->sbits) ||
        !jint(lj, "zbits", 0, 16, &g->zbits))
        return spqr_fail(SPQR_ERR_FORMAT, "bad geometry in the metadata");
    g->ocw = 0; /* layout 1: counts of the index width */
    if (cJSON_GetObjectItemCaseSensitive(lj, "ocw") && !jint(lj, "ocw", 0, 4, &g->ocw))
        return spqr_fail(SPQR_ERR_FORMAT, "bad outlier count width in the metadata");
    g->sq = SPQR_SQ_MINMAX; /* absent: minmax (every file before the key) */
    const cJSON *sq = cJSON_GetObjectItemCaseSensitive(lj, "stat_quantizer");
    if (sq) {
        if (!cJSON_IsString(sq) || (g->sq = spqr_statq_parse(sq->valuestring)) < 0)
            return spqr_fail(SPQR_ERR_FORMAT, "bad stat_quantizer in the metadata (%s; want minmax, uniform or kmeans)",
                             cJSON_IsString(sq) ? sq->valuestring : "not a string");
        if (g->sq != SPQR_SQ_MINMAX && g->beta2 == 0)
            return spqr_fail(SPQR_ERR_FORMAT, "stat_quantizer '%s' in the metadata needs bilevel statistics (beta2 > 0)",
                             sq->valuestring);
    }
    return SPQR_OK;
}

static spqr_status s_open(const cJSON *layer, int rows, int cols, spqr_qsection_find_fn find, void *ctx,
                          void **payload) {
    spqr_packed_geom g;
    spqr_status st = read_geom(layer, &g);
    if (st) return st;
    if (g.rows != rows || g.cols != cols)
        return spqr_fail(SPQR_ERR_FORMAT, "the layer is %dx%d but the config implies %dx%d", g.rows, g.cols, rows,
                         cols);
    spqr_packed_section sec[SPQR_PACKED_MAX_SECTIONS];
    int n = 0;
    const char *name;
    for (int i = 0; (name = spqr_packed_section_name(i)) != NULL; i++) {
        size_t bytes;
        if (spqr_packed_section_bytes(&g, name, 0, &bytes) != SPQR_OK) continue; /* not of this kind */
        spqr_qsection s;
        if ((st = find(ctx, name, &s))) return st;
        sec[n++] = (spqr_packed_section){name, s.data, s.bytes};
    }
    spqr_packed *pk = calloc(1, sizeof *pk);
    if (!pk) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if ((st = spqr_packed_from_sections(&g, sec, n, pk))) {
        free(pk);
        return st;
    }
    *payload = pk;
    return SPQR_OK;
}

static void s_free(void *payload) {
    spqr_packed_free(payload);
    free(payload);
}

static size_t s_bytes(const void *payload) { return spqr_packed_bytes(payload); }

static double s_formula_bits(const void *payload) {
    const spqr_packed *p = payload;
    return spqr_formula_bits_sq(p->rows, p->cols, p->wbits, p->beta1, p->beta2, p->sbits, p->zbits, p->sq,
                                p->n_outliers);
}

static int64_t s_n_outliers(const void *payload) { return ((const spqr_packed *)payload)->n_outliers; }

static void s_describe(const void *payload, char *buf, size_t n) {
    const spqr_packed *p = payload;
    if (p->beta2 > 0)
        snprintf(buf, n, "w%d b1=%d b2=%d s%d/z%d %s", p->wbits, p->beta1, p->beta2, p->sbits, p->zbits,
                 spqr_statq_name(p->sq));
    else
        snprintf(buf, n, "w%d b1=%d fp16-stats", p->wbits, p->beta1);
}

static spqr_status s_dequantize(const void *payload, float *W) {
    spqr_qlayer q;
    memset(&q, 0, sizeof q);
    spqr_status st = spqr_unpack(payload, &q);
    if (st) return st;
    spqr_qlayer_dequantize(&q, W);
    spqr_qlayer_free(&q);
    return SPQR_OK;
}

static spqr_status s_gemm_ref(const void *payload, const float *X, int T, float *Y) {
    return spqr_qgemm_ref(payload, X, T, Y);
}

static spqr_status s_gemm(const void *payload, const float *X, int T, float *Y) { return spqr_qgemm(payload, X, T, Y); }

/* ---- CUDA ------------------------------------------------------------------- */

static size_t s_cuda_estimate(const void *payload) {
    const spqr_packed *p = payload;
    size_t b = spqr_packed_bytes(p) * 5 / 4 + 4096;
    /* the device keeps every outlier twice (a 4-byte bucket entry, and a
     * 6-byte row-ordered copy with 4-byte row offsets) where the file has 4
     * or 6 bytes */
    b += (size_t)p->n_outliers * 8 + (size_t)p->rows * 4;
    /* a bilevel layer that the device holds with fp16 first-level statistics
     * (gpu_layout.h mode F16: kmeans always, minmax / uniform with sbits or
     * zbits > 4 or beta2 not a multiple of 16) needs 4 bytes per row and 16
     * padded columns (8 with beta1 = 8) that the file does not store */
    if (p->beta2 > 0 && (p->sq == SPQR_SQ_KMEANS || p->sbits > 4 || p->zbits > 4 || p->beta2 % 16 != 0))
        b += (size_t)p->ntiles * 16 * (((size_t)p->cols + 255) / 256 * 16) * 4 * (p->beta1 == 8 ? 2 : 1);
    return b;
}

static spqr_status s_cuda_upload(const void *payload, void **dev, size_t *dev_bytes) {
    spqr_qlayer q;
    memset(&q, 0, sizeof q);
    spqr_status st = spqr_unpack(payload, &q);
    if (st) return st;
    spqr_cuda_qlinear *w = NULL;
    st = spqr_cuda_qlinear_upload(&q, &w);
    spqr_qlayer_free(&q);
    if (st) return st;
    spqr_cuda_qlinear_info info;
    spqr_cuda_qlinear_get_info(w, &info);
    *dev_bytes = info.bytes_total;
    *dev = w;
    return SPQR_OK;
}

static spqr_status s_cuda_gemm(const void *dev, const float *dX, int T, float *dY) {
    return spqr_cuda_qgemm(dev, dX, T, dY);
}

static void s_cuda_free(void *dev) { spqr_cuda_qlinear_free(dev); }

/* ---- training (block tuning) -------------------------------------------------
 *
 * theta = the fp16 values of the layer (qlayer.h's names and index order), as
 * float32, M = ngroups * nrb, S = ngroups * rows, N = n_outliers:
 *   bilevel minmax:       theta[0*M + g*nrb + rb] = s2_scale, [1*M + ..] =
 *                         s2_zero, [2*M + ..] = z2_scale, [3*M + ..] = z2_zero,
 *                         then theta[4*M + k] = ol_val[k]      (4M + N values)
 *   bilevel uniform:      theta[0*M + g*nrb + rb] = s2_scale, [1*M + ..] =
 *                         z2_scale (the mid-point zeros are fixed), then
 *                         theta[2*M + k] = ol_val[k]           (2M + N values)
 *   bilevel kmeans:       theta[c] = scale centroid c (c < 2^sbits), then
 *                         theta[2^sbits + c] = zero centroid c, then the
 *                         outliers                 (2^sbits + 2^zbits + N values)
 *   plain (beta2 == 0):   theta[g*rows + r] = scale, theta[S + g*rows + r] =
 *                         zero, then theta[2S + k] = ol_val[k] (2S + N values)
 * Outliers k in the stored order (by row, then permuted column). The packed
 * payload holds exactly these fp16 values ("stats2", "stats" [T][NG][2][16],
 * "ol_val"); the CPU kernels and dequantize() derive every float from them
 * (the SIMD kernels through spqr_packed_refresh, which train_set calls), so
 * train_set only rewrites those sections. A section borrowed from a mapped
 * file is first replaced by an owned copy (copy-on-write). A device copy made
 * by cuda_upload is not updated: upload again.
 *
 * Gradient, from qlayer.h's definition with c = code, j permuted, G read at
 * original column perm[j], per (row r, group g): S0 = sum_j G, S1 = sum_j G c;
 *   dL/dscale = S1 - zero S0,  dL/dzero = -scale S0
 *   minmax:  dL/ds2_scale += dL/dscale (sc - s2_zero), dL/ds2_zero += -s2_scale dL/dscale,
 *            dL/dz2_scale += dL/dzero (zc - z2_zero),  dL/dz2_zero += -z2_scale dL/dzero
 *   uniform: the scale terms only, with s2_zero / z2_zero the mid-points
 *   kmeans:  dL/dcentroid_scale[sc] += dL/dscale, dL/dcentroid_zero[zc] += dL/dzero
 *   dL/dol_val[k] = G at the outlier's position.
 * Sums in double; rows are split over threads by whole row blocks (bilevel)
 * or rows (plain), so every theta entry is written by one thread (kmeans:
 * per-thread sums, added in a critical section). */

/* The statistic kinds of p: kind q is theta[off[q], off[q+1]); returns their number. */
static int stat_kinds(const spqr_packed *p, size_t off[5]) {
    const size_t M = (size_t)p->ngroups * (size_t)p->nrb, S = (size_t)p->ngroups * (size_t)p->rows;
    int n;
    size_t len[4];
    if (p->beta2 == 0) n = 2, len[0] = len[1] = S;
    else if (p->sq == SPQR_SQ_UNIFORM) n = 2, len[0] = len[1] = M;
    else if (p->sq == SPQR_SQ_KMEANS) n = 2, len[0] = (size_t)1 << p->sbits, len[1] = (size_t)1 << p->zbits;
    else n = 4, len[0] = len[1] = len[2] = len[3] = M;
    off[0] = 0;
    for (int q = 0; q < n; q++) off[q + 1] = off[q] + len[q];
    return n;
}

static size_t s_train_count(const void *payload) {
    const spqr_packed *p = payload;
    size_t off[5];
    const int n = stat_kinds(p, off);
    return off[n] + (size_t)p->n_outliers;
}

/* Index in the packed "stats" section of (row r, group g), q = 0 scale, 1 zero. */
static size_t stats_at(const spqr_packed *p, int64_t r, int64_t g, int q) {
    return (size_t)((((r / SPQR_PACKED_TILE) * p->ngroups + g) * 2 + q) * SPQR_PACKED_TILE + r % SPQR_PACKED_TILE);
}

/* The element of "stats2" (bilevel) or "stats" (plain) that statistic ti of theta is. */
static size_t stat_pi(const spqr_packed *p, size_t ti) {
    const size_t NG = (size_t)p->ngroups, NRB = (size_t)p->nrb, R = (size_t)p->rows;
    if (p->beta2 == 0) {
        const size_t q = ti / (NG * R), rem = ti % (NG * R);
        return stats_at(p, (int64_t)(rem % R), (int64_t)(rem / R), (int)q);
    }
    if (p->sq == SPQR_SQ_KMEANS) return ti;
    const size_t M = NG * NRB, w = p->sq == SPQR_SQ_UNIFORM ? 2 : 4;
    const size_t q = ti / M, rem = ti % M, g = rem / NRB, rb = rem % NRB;
    return (rb * NG + g) * w + q;
}

static void s_train_get(const void *payload, float *theta) {
    const spqr_packed *p = payload;
    const uint16_t *st = p->beta2 > 0 ? p->stats2 : p->stats;
    const size_t off = s_train_count(p) - (size_t)p->n_outliers;
    for (size_t ti = 0; ti < off; ti++) theta[ti] = spqr_f16_to_f32(st[stat_pi(p, ti)]);
    for (int64_t k = 0; k < p->n_outliers; k++) theta[off + (size_t)k] = spqr_f16_to_f32(p->ol_val[k]);
}

/* Step scale of each value: the RMS of its kind in this layer (each of the
 * second-level arrays or codebooks, or plain scales / zeros, and the
 * outliers), so the tuner's steps are relative to the size of what they change. */
static void s_train_scale(const void *payload, float *s) {
    const spqr_packed *p = payload;
    const size_t n = s_train_count(p);
    size_t off[6];
    const int kinds = stat_kinds(p, off);
    off[kinds + 1] = n; /* the outliers are the last kind */
    s_train_get(p, s);
    for (int q = 0; q <= kinds; q++) {
        const size_t a = off[q], b = off[q + 1];
        double ss = 0;
        for (size_t i = a; i < b; i++) ss += (double)s[i] * s[i];
        float rms = b > a ? (float)sqrt(ss / (double)(b - a)) : 0.0f;
        if (!(rms > 1e-6f)) rms = 1e-6f;
        for (size_t i = a; i < b; i++) s[i] = rms;
    }
}

static bool owns(const spqr_packed *p, const void *a) {
    for (int i = 0; i < SPQR_PACKED_MAX_SECTIONS; i++)
        if (p->owned[i] && p->owned[i] == a) return true;
    return false;
}

/* Make section *a (bytes long) owned by p: copy it when it is borrowed. */
static spqr_status own_section(spqr_packed *p, const uint16_t **a, size_t bytes) {
    if (bytes == 0 || owns(p, *a)) return SPQR_OK;
    int slot = -1;
    for (int i = 0; i < SPQR_PACKED_MAX_SECTIONS && slot < 0; i++)
        if (!p->owned[i]) slot = i;
    if (slot < 0) return spqr_fail(SPQR_ERR_UNSUPPORTED, "spqr train_set: no free slot to own a copied section");
    void *c = spqr_aligned_alloc(bytes);
    if (!c) return spqr_fail(SPQR_ERR_NOMEM, "spqr train_set: out of memory (%zu bytes)", bytes);
    memcpy(c, *a, bytes);
    p->owned[slot] = c;
    *a = c;
    return SPQR_OK;
}

static spqr_status s_train_set(void *payload, const float *theta) {
    spqr_packed *p = payload;
    if (!p || !theta) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr train_set: bad arguments");
    const size_t n = s_train_count(p), nstat = n - (size_t)p->n_outliers;
    for (size_t i = 0; i < n; i++) { /* all or nothing: check everything first */
        const uint16_t h = spqr_f32_to_f16(theta[i]);
        if ((h & 0x7c00u) == 0x7c00u)
            return spqr_fail(SPQR_ERR_NUMERIC, "spqr train_set: %s %zu = %g is not finite in fp16",
                             i < nstat ? "statistic" : "outlier value", i < nstat ? i : i - nstat, (double)theta[i]);
    }
    const int bilevel = p->beta2 > 0;
    /* "stats2" holds exactly the nstat values of every variant; "stats" [T][NG][2][16] includes the padding rows */
    const size_t stat_bytes = bilevel ? nstat * sizeof(uint16_t)
                                      : (size_t)p->ntiles * (size_t)p->ngroups * 2 * SPQR_PACKED_TILE * sizeof(uint16_t);
    spqr_status st = own_section(p, bilevel ? &p->stats2 : &p->stats, stat_bytes);
    if (!st) st = own_section(p, &p->ol_val, (size_t)p->n_outliers * sizeof(uint16_t));
    if (st) return st;
    uint16_t *sw = (uint16_t *)(bilevel ? p->stats2 : p->stats);
    for (size_t ti = 0; ti < nstat; ti++) sw[stat_pi(p, ti)] = spqr_f32_to_f16(theta[ti]);
    uint16_t *ov = (uint16_t *)p->ol_val;
    for (int64_t k = 0; k < p->n_outliers; k++) ov[k] = spqr_f32_to_f16(theta[nstat + (size_t)k]);
    return spqr_packed_refresh(p); /* the SIMD kernels' derived copies (and the moved section pointers) */
}

/* S0 = sum G, S1 = sum G * code over row r's permuted columns [j0, j1). */
static void row_group_sums(const spqr_packed *p, const float *Grow, int64_t r, int64_t j0, int64_t j1, double *S0,
                           double *S1) {
    const uint32_t *base = p->codes + (r / SPQR_PACKED_TILE) * p->code_words * SPQR_PACKED_TILE;
    const int lane = (int)(r % SPQR_PACKED_TILE), B = p->wbits;
    double s0 = 0, s1 = 0;
    for (int64_t j = j0; j < j1; j++) {
        const double gv = Grow[spqr_packed_idx(p->perm, p->wide, j)];
        s0 += gv;
        s1 += gv * (double)spqr_packed_get_bits(base, lane, j * B, B);
    }
    *S0 = s0;
    *S1 = s1;
}

static void s_train_grad(const void *payload, const float *G, float *gout) {
    const spqr_packed *p = payload;
    const int64_t R = p->rows, C = p->cols, NG = p->ngroups, NRB = p->nrb, B1 = p->beta1;
    const size_t nstat = s_train_count(p) - (size_t)p->n_outliers;
    if (p->beta2 > 0 && p->sq == SPQR_SQ_KMEANS) {
        const int64_t SZ = p->sbits + p->zbits, ns = (int64_t)1 << p->sbits, nz = (int64_t)1 << p->zbits;
#pragma omp parallel num_threads(spqr_num_threads()) if (R * C > (1 << 15))
        {
            double acc[512];
            memset(acc, 0, sizeof acc);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++)
                for (int64_t g = 0; g < NG; g++) {
                    const int64_t j0 = g * B1, j1 = j0 + B1 < C ? j0 + B1 : C;
                    double S0, S1;
                    row_group_sums(p, G + (size_t)(r * C), r, j0, j1, &S0, &S1);
                    const uint32_t v = spqr_packed_get_bits(
                        p->stat_codes + (r / SPQR_PACKED_TILE) * p->stat_words * SPQR_PACKED_TILE,
                        (int)(r % SPQR_PACKED_TILE), g * SZ, (int)SZ);
                    const uint32_t sc = v & ((1u << p->sbits) - 1u), zc = v >> p->sbits;
                    const float scale = spqr_f16_to_f32(p->stats2[sc]), zero = spqr_f16_to_f32(p->stats2[ns + zc]);
                    acc[sc] += S1 - (double)zero * S0;
                    acc[ns + zc] += -(double)scale * S0;
                }
#pragma omp critical
            for (int64_t i = 0; i < ns + nz; i++) gout[i] += (float)acc[i];
        }
    } else if (p->beta2 > 0) {
        const int64_t M = NG * NRB, SZ = p->sbits + p->zbits;
        const int uni = p->sq == SPQR_SQ_UNIFORM, w = uni ? 2 : 4;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (R * C > (1 << 15))
        for (int64_t rb = 0; rb < NRB; rb++) {
            const int64_t r0 = rb * p->beta2, r1 = r0 + p->beta2 < R ? r0 + p->beta2 : R;
            for (int64_t g = 0; g < NG; g++) {
                const uint16_t *e = p->stats2 + (rb * NG + g) * w;
                const float s2s = spqr_f16_to_f32(e[0]);
                const float s2z = uni ? spqr_sq_mid(p->sbits) : spqr_f16_to_f32(e[1]);
                const float z2s = spqr_f16_to_f32(e[uni ? 1 : 2]);
                const float z2z = uni ? spqr_sq_mid(p->zbits) : spqr_f16_to_f32(e[3]);
                const int64_t j0 = g * B1, j1 = j0 + B1 < C ? j0 + B1 : C;
                double a[4] = {0, 0, 0, 0};
                for (int64_t r = r0; r < r1; r++) {
                    double S0, S1;
                    row_group_sums(p, G + (size_t)(r * C), r, j0, j1, &S0, &S1);
                    const uint32_t v = spqr_packed_get_bits(
                        p->stat_codes + (r / SPQR_PACKED_TILE) * p->stat_words * SPQR_PACKED_TILE,
                        (int)(r % SPQR_PACKED_TILE), g * SZ, (int)SZ);
                    const float sc = (float)(v & ((1u << p->sbits) - 1u)), zc = (float)(v >> p->sbits);
                    const float scale = s2s * (sc - s2z), zero = z2s * (zc - z2z);
                    const double dscale = S1 - (double)zero * S0, dzero = -(double)scale * S0;
                    a[0] += dscale * ((double)sc - s2z);
                    a[1] -= (double)s2s * dscale;
                    a[2] += dzero * ((double)zc - z2z);
                    a[3] -= (double)z2s * dzero;
                }
                if (uni) {
                    gout[g * NRB + rb] += (float)a[0];
                    gout[M + g * NRB + rb] += (float)a[2];
                } else
                    for (int q = 0; q < 4; q++) gout[q * M + g * NRB + rb] += (float)a[q];
            }
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (R * C > (1 << 15))
        for (int64_t r = 0; r < R; r++)
            for (int64_t g = 0; g < NG; g++) {
                const float scale = spqr_f16_to_f32(p->stats[stats_at(p, r, g, 0)]);
                const float zero = spqr_f16_to_f32(p->stats[stats_at(p, r, g, 1)]);
                const int64_t j0 = g * B1, j1 = j0 + B1 < C ? j0 + B1 : C;
                double S0, S1;
                row_group_sums(p, G + (size_t)(r * C), r, j0, j1, &S0, &S1);
                gout[g * R + r] += (float)(S1 - (double)zero * S0);
                gout[NG * R + g * R + r] += (float)(-(double)scale * S0);
            }
    }
    for (int64_t r = 0; r < R; r++)
        for (int64_t k = p->ol_row_ptr[r]; k < p->ol_row_ptr[r + 1]; k++)
            gout[nstat + (size_t)k] += G[(size_t)(r * C) + spqr_packed_idx(p->perm, p->wide, spqr_packed_idx(p->ol_col, p->wide, k))];
}

const spqr_qformat spqr_qformat_spqr = {
    .name = "spqr",
    .summary = "SpQR: bit-packed codes, bilevel or fp16 group statistics, fp16 outliers (packed.h)",
    .quantized = 1,
    .sections = s_sections,
    .write_geometry = s_write_geometry,
    .open = s_open,
    .free = s_free,
    .bytes = s_bytes,
    .formula_bits = s_formula_bits,
    .n_outliers = s_n_outliers,
    .describe = s_describe,
    .dequantize = s_dequantize,
    .gemm_ref = s_gemm_ref,
    .gemm = s_gemm,
    .cuda_estimate = s_cuda_estimate,
    .cuda_upload = s_cuda_upload,
    .cuda_gemm = s_cuda_gemm,
    .cuda_free = s_cuda_free,
    .train_count = s_train_count,
    .train_get = s_train_get,
    .train_set = s_train_set,
    .train_grad = s_train_grad,
    .train_scale = s_train_scale,
};
