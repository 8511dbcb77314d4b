/* cluscomp_format.c - the ClusComp codebook layer (cluscomp.h) as a
 * registered quantized-layer format ("cluscomp"): file sections and
 * geometry, accounting, the CPU kernels (cpu/ccgemm.h) and the CUDA kernels
 * (cuda/cc_cuda.h). docs/FORMAT.md, section "Format cluscomp", is the spec.
 *
 * Sections: "codebook" F16 [n][d]; "indices" U8 [idx_bytes] (the packed
 * index stream, spqr_cc_index_bytes). Geometry keys: rows, cols, d, n,
 * ibits, cb_share. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "cluscomp.h"
#include "cpu/ccgemm.h"
#include "cuda/cc_cuda.h"

#define CB_SHARE_MAX (1 << 20)

static int c_sections(const void *payload, spqr_qsection *out, int max) {
    const spqr_cc_layer *L = payload;
    if (max < 2) return -1;
    out[0] = (spqr_qsection){"codebook", SPQR_DT_F16, L->codebook, (size_t)L->n * (size_t)L->d * sizeof(uint16_t)};
    out[1] = (spqr_qsection){"indices", SPQR_DT_U8, L->idx, L->idx_bytes};
    return 2;
}

static spqr_status c_write_geometry(const void *payload, cJSON *o) {
    const spqr_cc_layer *L = payload;
    const struct {
        const char *k;
        int v;
    } keys[] = {{"rows", L->rows}, {"cols", L->cols},   {"d", L->d},
                {"n", L->n},       {"ibits", L->ibits}, {"cb_share", L->cb_share}};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!cJSON_AddNumberToObject(o, keys[i].k, keys[i].v)) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    return SPQR_OK;
}

/* Integer geometry key k in [lo, hi], or a FORMAT failure naming it. */
static spqr_status jint(const cJSON *o, const char *k, int lo, int hi, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!j) return spqr_fail(SPQR_ERR_FORMAT, "cluscomp: geometry key \"%s\" is missing", k);
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) ||
        j->valuedouble != floor(j->valuedouble))
        return spqr_fail(SPQR_ERR_FORMAT, "cluscomp: geometry key \"%s\" is not an integer in [%d, %d]", k, lo, hi);
    *out = (int)j->valuedouble;
    return SPQR_OK;
}

static spqr_status c_open(const cJSON *layer, int rows, int cols, spqr_qsection_find_fn find, void *ctx,
                          void **payload) {
    int r = 0, c = 0, d = 0, n = 0, ibits = 0, share = 0;
    spqr_status st;
    if ((st = jint(layer, "rows", 1, 1 << 30, &r)) || (st = jint(layer, "cols", 1, 1 << 30, &c)) ||
        (st = jint(layer, "d", 1, SPQR_CC_MAX_D, &d)) || (st = jint(layer, "n", 1, SPQR_CC_MAX_N, &n)) ||
        (st = jint(layer, "ibits", 1, 24, &ibits)) || (st = jint(layer, "cb_share", 1, CB_SHARE_MAX, &share)))
        return st;
    if (r != rows || c != cols)
        return spqr_fail(SPQR_ERR_FORMAT, "cluscomp: the layer is %dx%d but the config implies %dx%d", r, c, rows, cols);
    if (ibits != spqr_cc_index_bits(n))
        return spqr_fail(SPQR_ERR_FORMAT, "cluscomp: ibits = %d, but a codebook of n = %d entries has %d-bit indices",
                         ibits, n, spqr_cc_index_bits(n));
    spqr_qsection cb, ix;
    if ((st = find(ctx, "codebook", &cb)) || (st = find(ctx, "indices", &ix))) return st;
    const size_t cb_bytes = (size_t)n * (size_t)d * sizeof(uint16_t);
    if (cb.dtype != SPQR_DT_F16 || cb.bytes != cb_bytes)
        return spqr_fail(SPQR_ERR_FORMAT, "cluscomp: section \"codebook\" is %s of %zu bytes; n = %d x d = %d needs F16 of %zu",
                         spqr_dtype_name(cb.dtype), cb.bytes, n, d, cb_bytes);
    if (ix.dtype != SPQR_DT_U8)
        return spqr_fail(SPQR_ERR_FORMAT, "cluscomp: section \"indices\" has dtype %s, not U8", spqr_dtype_name(ix.dtype));
    spqr_cc_layer *L = NULL;
    if ((st = spqr_cc_layer_wrap(rows, cols, d, n, share, cb.data, ix.data, ix.bytes, &L))) return st;
    *payload = L;
    return SPQR_OK;
}

static void c_free(void *payload) { spqr_cc_layer_free(payload); }

/* Index bytes plus this layer's share of the codebook (rounded up). */
static size_t c_bytes(const void *payload) {
    const spqr_cc_layer *L = payload;
    const size_t cb = (size_t)L->n * (size_t)L->d * sizeof(uint16_t);
    return L->idx_bytes + (cb + (size_t)L->cb_share - 1) / (size_t)L->cb_share;
}

/* The paper's ceil(log2 n)/d + 16 n d/(m k), counting the stored indices
 * exactly (nb*cols of them: rows padded to whole blocks) and 1/cb_share of
 * a shared codebook. */
static double c_formula_bits(const void *payload) {
    const spqr_cc_layer *L = payload;
    const double w = (double)L->rows * (double)L->cols;
    return ((double)L->ibits * (double)L->nb * (double)L->cols + 16.0 * (double)L->n * (double)L->d / L->cb_share) / w;
}

static void c_describe(const void *payload, char *buf, size_t n) {
    const spqr_cc_layer *L = payload;
    if (L->cb_share > 1) snprintf(buf, n, "d%d n%d i%d cb/%d", L->d, L->n, L->ibits, L->cb_share);
    else snprintf(buf, n, "d%d n%d i%d", L->d, L->n, L->ibits);
}

static spqr_status c_dequantize(const void *payload, float *W) {
    if (!payload || !W) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp dequantize: bad arguments");
    spqr_cc_dequantize(payload, W);
    return SPQR_OK;
}

static spqr_status c_gemm_ref(const void *payload, const float *X, int T, float *Y) {
    return spqr_cc_gemm_ref(payload, X, T, Y);
}

static spqr_status c_gemm(const void *payload, const float *X, int T, float *Y) {
    return spqr_cc_gemm(payload, X, T, Y);
}

/* ---- training (block tuning) --------------------------------------------------
 *
 * theta = the codebook entries, n*d floats in the stored order:
 * theta[c*d + t] = C[c][t]. W is linear in theta (each weight is one
 * codebook value), so
 *
 *     dL/dC[c][t] = sum over sub-vectors (b, j) with idx(b, j) == c of G[b*d+t][j]
 *
 * over the real rows only (the zero padding of the last block is no weight).
 * train_set rounds to fp16 (all or nothing) and refreshes cb32 (what the CPU
 * kernels read besides the fp16 codebook); a codebook borrowed from a mapped
 * file is first replaced by an owned copy (copy-on-write: the layer then no
 * longer shares it with the other layers of a shared codebook). A device copy
 * made by cuda_upload before train_set is not updated: upload again. */

static size_t round64(size_t b) { return (b + 63) & ~(size_t)63; }

static size_t c_train_count(const void *payload) {
    const spqr_cc_layer *L = payload;
    return (size_t)L->n * (size_t)L->d;
}

static void c_train_get(const void *payload, float *theta) {
    const spqr_cc_layer *L = payload;
    const size_t nd = (size_t)L->n * (size_t)L->d;
    for (size_t i = 0; i < nd; i++) theta[i] = spqr_f16_to_f32(L->codebook[i]);
}

static spqr_status c_train_set(void *payload, const float *theta) {
    spqr_cc_layer *L = payload;
    if (!L || !theta || !L->cb32) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp train_set: bad arguments");
    const size_t nd = (size_t)L->n * (size_t)L->d;
    for (size_t i = 0; i < nd; i++) { /* all or nothing: check everything first */
        const uint16_t h = spqr_f32_to_f16(theta[i]);
        if ((h & 0x7c00u) == 0x7c00u)
            return spqr_fail(SPQR_ERR_NUMERIC,
                             "cluscomp train_set: codebook entry %zu, component %zu = %g is not finite in fp16",
                             i / (size_t)L->d, i % (size_t)L->d, (double)theta[i]);
    }
    if (!L->own_cb) { /* borrowed (e.g. from a mapped file): copy on write */
        L->own_cb = spqr_malloc_array(nd, sizeof(uint16_t));
        if (!L->own_cb)
            return spqr_fail(SPQR_ERR_NOMEM, "cluscomp train_set: out of memory (codebook of %d x %d)", L->n, L->d);
        L->codebook = L->own_cb;
    }
    uint16_t *cb = L->own_cb;
    for (size_t i = 0; i < nd; i++) {
        cb[i] = spqr_f32_to_f16(theta[i]);
        L->cb32[i] = spqr_f16_to_f32(cb[i]);
    }
    return SPQR_OK;
}

/* acc[c*d + t] += G[b*d+t][j] for the sub-vectors of blocks [b0, b1); ib
 * (cols entries, may be NULL) holds one block's decoded indices. */
#define CC_GRAD_BLOCKS(ACC_T)                                                                                      \
    for (int64_t b = b0; b < b1; b++) {                                                                            \
        const int64_t nr = L->rows - b * d < d ? L->rows - b * d : d;                                              \
        if (ib)                                                                                                    \
            for (int64_t j = 0; j < C; j++) ib[j] = spqr_cc_get_field(L->idx, b * C + j, L->ibits);               \
        for (int64_t t = 0; t < nr; t++) {                                                                         \
            const float *row = G + (size_t)(b * d + t) * (size_t)C;                                                \
            for (int64_t j = 0; j < C; j++) {                                                                      \
                const uint32_t c = ib ? ib[j] : spqr_cc_get_field(L->idx, b * C + j, L->ibits);                    \
                acc[(size_t)c * (size_t)d + (size_t)t] += (ACC_T)row[j];                                           \
            }                                                                                                      \
        }                                                                                                          \
    }

static void grad_blocks_f64(const spqr_cc_layer *L, const float *G, int64_t b0, int64_t b1, double *acc,
                            uint32_t *ib) {
    const int64_t d = L->d, C = L->cols;
    CC_GRAD_BLOCKS(double)
}

static void grad_blocks_f32(const spqr_cc_layer *L, const float *G, int64_t b0, int64_t b1, float *acc,
                            uint32_t *ib) {
    const int64_t d = L->d, C = L->cols;
    CC_GRAD_BLOCKS(float)
}

/* Per-thread partial sums in double over a static split of the row blocks,
 * reduced in thread order: deterministic for a given thread count. The
 * thread count is capped so that the partials (n*d doubles each) cost no
 * more than the pass over G. Without memory for them: one float pass. */
static void c_train_grad(const void *payload, const float *G, float *g) {
    const spqr_cc_layer *L = payload;
    const size_t nd = (size_t)L->n * (size_t)L->d;
    const double work = (double)L->rows * (double)L->cols;
    int nt = spqr_num_threads();
    if (nt > L->nb) nt = L->nb;
    while (nt > 1 && (double)nt * (double)nd > work) nt--;
    if (nt < 1) nt = 1;
    const size_t per = round64(nd * sizeof(double)) + round64((size_t)L->cols * sizeof(uint32_t));
    char *buf = (size_t)nt <= SIZE_MAX / per ? spqr_aligned_alloc((size_t)nt * per) : NULL;
    if (!buf) {
        grad_blocks_f32(L, G, 0, L->nb, g, NULL);
        return;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int i = omp_get_thread_num();
        double *acc = (double *)(void *)(buf + (size_t)i * per);
        uint32_t *ib = (uint32_t *)(void *)(buf + (size_t)i * per + round64(nd * sizeof(double)));
        memset(acc, 0, nd * sizeof(double));
        const int64_t b0 = (int64_t)L->nb * i / nt, b1 = (int64_t)L->nb * (i + 1) / nt;
        grad_blocks_f64(L, G, b0, b1, acc, ib);
    }
    for (size_t k = 0; k < nd; k++) {
        double s = 0;
        for (int i = 0; i < nt; i++) s += ((const double *)(const void *)(buf + (size_t)i * per))[k];
        g[k] += (float)s;
    }
    free(buf);
}

const spqr_qformat spqr_qformat_cluscomp = {
    .name = "cluscomp",
    .summary = "ClusComp: fp16 codebook of d-dim sub-vectors along the output dimension + packed indices",
    .quantized = 1,
    .sections = c_sections,
    .write_geometry = c_write_geometry,
    .open = c_open,
    .free = c_free,
    .bytes = c_bytes,
    .formula_bits = c_formula_bits,
    .n_outliers = NULL,
    .describe = c_describe,
    .dequantize = c_dequantize,
    .gemm_ref = c_gemm_ref,
    .gemm = c_gemm,
    .cuda_estimate = spqr_cc_cuda_estimate,
    .cuda_upload = spqr_cc_cuda_upload,
    .cuda_gemm = spqr_cc_cuda_gemm,
    .cuda_free = spqr_cc_cuda_free,
    .train_count = c_train_count,
    .train_get = c_train_get,
    .train_set = c_train_set,
    .train_grad = c_train_grad,
};
