/* cluscomp.c - the ClusComp codebook layer (cluscomp.h): index stream
 * packing, construction from quantizer output or from (untrusted) stored
 * parts, and the index accessors. The format table is cluscomp_format.c, the
 * CPU kernels cpu/ccgemm*.c. */
#include "cluscomp.h"

#include <stdlib.h>

/* ---- the index stream ------------------------------------------------------- */

static inline void store_le64(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

#define get_field spqr_cc_get_field

int spqr_cc_index_bits(int n) {
    if (n < 1) return 0;
    int b = 1;
    while ((1ull << b) < (unsigned long long)n) b++;
    return b;
}

size_t spqr_cc_index_bytes(int64_t fields, int ibits) {
    if (fields < 0 || ibits < 1 || ibits > 32) return 0;
    if ((uint64_t)fields > UINT64_MAX / (uint64_t)ibits) return 0;
    const uint64_t bits = (uint64_t)fields * (uint64_t)ibits;
    const uint64_t words = bits / 64 + (bits % 64 != 0);
    if (words > (SIZE_MAX - SPQR_CC_INDEX_SLACK) / 8) return 0;
    return (size_t)words * 8 + SPQR_CC_INDEX_SLACK;
}

/* Pack fields into dst (idx_bytes bytes, zeroed here). */
static void pack_fields(uint8_t *dst, size_t idx_bytes, const uint32_t *idx, int64_t fields, int ibits) {
    memset(dst, 0, idx_bytes);
    uint64_t acc = 0;
    int nacc = 0;
    size_t o = 0;
    for (int64_t i = 0; i < fields; i++) {
        const uint64_t v = idx[i];
        acc |= v << nacc;
        nacc += ibits;
        if (nacc >= 64) {
            store_le64(dst + o, acc);
            o += 8;
            nacc -= 64;
            acc = nacc ? v >> (ibits - nacc) : 0;
        }
    }
    if (nacc > 0) store_le64(dst + o, acc);
}

uint32_t spqr_cc_index(const spqr_cc_layer *L, int b, int j) {
    return get_field(L->idx, (int64_t)b * L->cols + j, L->ibits);
}

void spqr_cc_unpack_indices(const spqr_cc_layer *L, uint32_t *idx) {
    const int64_t fields = (int64_t)L->nb * L->cols;
    for (int64_t i = 0; i < fields; i++) idx[i] = get_field(L->idx, i, L->ibits);
}

void spqr_cc_dequantize(const spqr_cc_layer *L, float *W) {
    const int d = L->d, cols = L->cols;
    for (int b = 0; b < L->nb; b++) {
        const int nr = L->rows - b * d < d ? L->rows - b * d : d;
        float *w = W + (size_t)b * (size_t)d * (size_t)cols;
        for (int j = 0; j < cols; j++) {
            const float *e = L->cb32 + (size_t)get_field(L->idx, (int64_t)b * cols + j, L->ibits) * (size_t)d;
            for (int t = 0; t < nr; t++) w[(size_t)t * (size_t)cols + (size_t)j] = e[t];
        }
    }
}

/* ---- construction ------------------------------------------------------------- */

static bool f16_finite(uint16_t h) { return ((h >> 10) & 0x1f) != 0x1f; }

/* cb32 = the fp16 codebook widened, plus SPQR_CC_CB_PAD zero floats. */
static spqr_status make_cb32(spqr_cc_layer *L) {
    const size_t nd = (size_t)L->n * (size_t)L->d;
    float *c = spqr_aligned_alloc((nd + SPQR_CC_CB_PAD) * sizeof(float));
    if (!c) return spqr_fail(SPQR_ERR_NOMEM, "cluscomp: out of memory (codebook of %d x %d)", L->n, L->d);
    for (size_t i = 0; i < nd; i++) c[i] = spqr_f16_to_f32(L->codebook[i]);
    memset(c + nd, 0, SPQR_CC_CB_PAD * sizeof(float));
    L->cb32 = c;
    return SPQR_OK;
}

/* Round an fp32 codebook to fp16; every value must stay finite. */
static spqr_status round_codebook(const float *cb, size_t nd, uint16_t *h) {
    for (size_t i = 0; i < nd; i++) {
        h[i] = spqr_f32_to_f16(cb[i]);
        if (!f16_finite(h[i]))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp: codebook value %zu (%g) is not finite in fp16", i,
                             (double)cb[i]);
    }
    return SPQR_OK;
}

/* Common geometry checks; sets L's shape fields. `st` is the status of a
 * failure (INVALID_ARG for callers, FORMAT for files). */
static spqr_status set_geometry(spqr_cc_layer *L, int rows, int cols, int d, int n, spqr_status st) {
    if (rows < 1 || cols < 1) return spqr_fail(st, "cluscomp: bad shape %d x %d", rows, cols);
    if (d < 1 || d > SPQR_CC_MAX_D) return spqr_fail(st, "cluscomp: d = %d is outside [1, %d]", d, SPQR_CC_MAX_D);
    if (n < 1 || n > SPQR_CC_MAX_N)
        return spqr_fail(st, "cluscomp: codebook size n = %d is outside [1, %d]", n, SPQR_CC_MAX_N);
    L->rows = rows;
    L->cols = cols;
    L->d = d;
    L->n = n;
    L->ibits = spqr_cc_index_bits(n);
    L->nb = (int)(((int64_t)rows + d - 1) / d);
    L->cb_share = 1;
    L->idx_bytes = spqr_cc_index_bytes((int64_t)L->nb * cols, L->ibits);
    size_t nd;
    if (!L->idx_bytes || !spqr_mul_size((size_t)n, (size_t)d, &nd) || nd > SIZE_MAX / 4 - SPQR_CC_CB_PAD)
        return spqr_fail(SPQR_ERR_NOMEM, "cluscomp: layer %d x %d (d %d, n %d) is too large", rows, cols, d, n);
    return SPQR_OK;
}

spqr_status spqr_cc_layer_build(int rows, int cols, int d, int n, const float *codebook, const uint32_t *idx,
                                spqr_cc_layer **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cc_layer_build: no output");
    *out = NULL;
    if (!codebook || !idx) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cc_layer_build: missing codebook or indices");
    spqr_cc_layer *L = calloc(1, sizeof *L);
    if (!L) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = set_geometry(L, rows, cols, d, n, SPQR_ERR_INVALID_ARG);
    const int64_t fields = (int64_t)L->nb * cols;
    if (!st)
        for (int64_t i = 0; i < fields; i++)
            if (idx[i] >= (uint32_t)n) {
                st = spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp: index %u of sub-vector (%lld, %lld) is >= n = %d",
                               idx[i], (long long)(i / cols), (long long)(i % cols), n);
                break;
            }
    const size_t nd = st ? 0 : (size_t)n * (size_t)d;
    if (!st) {
        L->own_cb = spqr_malloc_array(nd, sizeof(uint16_t));
        L->own_idx = spqr_aligned_alloc(L->idx_bytes);
        if (!L->own_cb || !L->own_idx)
            st = spqr_fail(SPQR_ERR_NOMEM, "cluscomp: out of memory (layer %d x %d)", rows, cols);
    }
    if (!st) st = round_codebook(codebook, nd, L->own_cb);
    if (!st) {
        L->codebook = L->own_cb;
        L->idx = L->own_idx;
        pack_fields(L->own_idx, L->idx_bytes, idx, fields, L->ibits);
        st = make_cb32(L);
    }
    if (st) {
        spqr_cc_layer_free(L);
        return st;
    }
    *out = L;
    return SPQR_OK;
}

spqr_status spqr_cc_layer_set_codebook(spqr_cc_layer *L, const float *codebook) {
    if (!L || !codebook) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cc_layer_set_codebook: bad arguments");
    if (!L->own_cb || L->codebook != L->own_cb || !L->cb32)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cc_layer_set_codebook: the layer borrows its codebook");
    const size_t nd = (size_t)L->n * (size_t)L->d;
    uint16_t *h = spqr_malloc_array(nd, sizeof(uint16_t));
    if (!h) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = round_codebook(codebook, nd, h); /* all or nothing */
    if (!st) {
        memcpy(L->own_cb, h, nd * sizeof(uint16_t));
        for (size_t i = 0; i < nd; i++) L->cb32[i] = spqr_f16_to_f32(h[i]);
    }
    free(h);
    return st;
}

spqr_status spqr_cc_layer_wrap(int rows, int cols, int d, int n, int cb_share, const uint16_t *codebook,
                               const uint8_t *idx, size_t idx_bytes, spqr_cc_layer **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cc_layer_wrap: no output");
    *out = NULL;
    spqr_cc_layer *L = calloc(1, sizeof *L);
    if (!L) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = set_geometry(L, rows, cols, d, n, SPQR_ERR_FORMAT);
    const size_t nd = st ? 0 : (size_t)n * (size_t)d;
    const int64_t fields = (int64_t)L->nb * cols;
    if (!st && (cb_share < 1))
        st = spqr_fail(SPQR_ERR_FORMAT, "cluscomp: cb_share = %d (must be >= 1)", cb_share);
    if (!st && (!codebook || !idx)) st = spqr_fail(SPQR_ERR_FORMAT, "cluscomp: missing codebook or index stream");
    if (!st && idx_bytes != L->idx_bytes)
        st = spqr_fail(SPQR_ERR_FORMAT,
                       "cluscomp: the index stream has %zu bytes; %lld fields of %d bits need %zu (padded to 8-byte "
                       "words + %d bytes)",
                       idx_bytes, (long long)fields, L->ibits, L->idx_bytes, SPQR_CC_INDEX_SLACK);
    /* the codebook is read as uint16_t: copy it when the storage is odd-aligned */
    if (!st && ((uintptr_t)codebook & 1u)) {
        L->own_cb = spqr_malloc_array(nd, sizeof(uint16_t));
        if (!L->own_cb) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
        else codebook = memcpy(L->own_cb, codebook, nd * sizeof(uint16_t));
    }
    if (!st)
        for (size_t i = 0; i < nd; i++)
            if (!f16_finite(codebook[i])) {
                st = spqr_fail(SPQR_ERR_FORMAT, "cluscomp: codebook entry %zu, component %zu is not finite",
                               i / (size_t)d, i % (size_t)d);
                break;
            }
    if (!st) {
        /* padding: every bit after the last field is zero */
        const uint64_t bits = (uint64_t)fields * (uint64_t)L->ibits;
        bool bad = (bits & 7) && (idx[bits >> 3] >> (bits & 7)) != 0;
        for (size_t k = (size_t)((bits + 7) >> 3); k < idx_bytes && !bad; k++) bad = idx[k] != 0;
        if (bad) st = spqr_fail(SPQR_ERR_FORMAT, "cluscomp: the index stream's padding bits are not zero");
    }
    /* when n is not a power of two (or is 1), an ibits-bit field can exceed it */
    if (!st && (n == 1 || (n & (n - 1)) != 0))
        for (int64_t i = 0; i < fields; i++) {
            const uint32_t v = get_field(idx, i, L->ibits);
            if (v >= (uint32_t)n) {
                st = spqr_fail(SPQR_ERR_FORMAT, "cluscomp: index %u of sub-vector (%lld, %lld) is >= n = %d", v,
                               (long long)(i / cols), (long long)(i % cols), n);
                break;
            }
        }
    if (!st) {
        L->cb_share = cb_share;
        L->codebook = codebook;
        L->idx = idx;
        st = make_cb32(L);
    }
    if (st) {
        spqr_cc_layer_free(L);
        return st;
    }
    *out = L;
    return SPQR_OK;
}

void spqr_cc_layer_free(spqr_cc_layer *L) {
    if (!L) return;
    free(L->cb32);
    free(L->own_cb);
    free(L->own_idx);
    free(L);
}
