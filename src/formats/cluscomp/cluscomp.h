/* cluscomp.h - the ClusComp codebook layer (format "cluscomp").
 *
 * ClusComp (Liao et al., 2025) stores a weight matrix W [rows][cols] as one
 * codebook C of n entries of dimension d plus one index per sub-vector.
 * Sub-vectors run along the OUTPUT dimension: rows are zero-padded to
 * nb = ceil(rows / d) blocks of d, and sub-vector (b, j) is
 * W[b*d .. b*d+d-1][j] (one input column j, d consecutive output rows):
 *
 *     W[b*d + t][j] = C[idx(b, j)][t]        (0 <= t < d, b*d + t < rows)
 *
 * idx(b, j) is field number i = b*cols + j of the index stream: fields of
 * ibits = max(1, ceil(log2 n)) bits, packed LSB-first into little-endian
 * bytes (field i occupies stream bits [i*ibits, (i+1)*ibits)). Every index
 * is < n. The codebook is stored in fp16; kernels use an fp32 copy (cb32)
 * made when the layer is built or opened.
 *
 * The codebook may be shared by several layers (codebook scope "block" or
 * "model"): then cb_share > 1 layers point at the same codebook, and the
 * layer's accounting charges it 1/cb_share of the codebook bytes.
 *
 * The dequantization above is THE definition; every kernel (scalar reference,
 * AVX2, AVX-512, CUDA) must compute Y = X W^T with W defined by it.
 */
#ifndef SPQR_CLUSCOMP_H
#define SPQR_CLUSCOMP_H

#include <stdint.h>

#include "../../format/qformat.h"

#define SPQR_CC_MAX_D 64          /* largest sub-vector dimension          */
#define SPQR_CC_MAX_N (1 << 24)   /* largest codebook (ibits <= 24)        */

/* Stored index stream: ceil(nb*cols*ibits / 64) little-endian 64-bit words
 * followed by SPQR_CC_INDEX_SLACK bytes; every bit after the last field is
 * zero (open() rejects a stream whose padding is not). The slack lets SIMD
 * kernels load 64 bytes from the byte of any field without a bounds check. */
#define SPQR_CC_INDEX_SLACK 64
/* cb32 holds n*d floats [n][d] followed by SPQR_CC_CB_PAD zero floats, so
 * kernels may load a whole 16-float vector starting at any entry. */
#define SPQR_CC_CB_PAD 16

typedef struct spqr_cc_layer {
    int rows, cols;   /* W [rows][cols]                                     */
    int d, n;         /* sub-vector dimension, codebook entries             */
    int ibits;        /* bits per index = max(1, ceil(log2 n))              */
    int nb;           /* ceil(rows / d) row blocks                          */
    int cb_share;     /* number of layers sharing this codebook (>= 1)      */
    const uint16_t *codebook; /* [n][d] fp16 (owned or borrowed)           */
    const uint8_t *idx;       /* packed index stream (owned or borrowed)     */
    size_t idx_bytes;         /* stored length of the stream (see FORMAT.md) */
    float *cb32;              /* [n][d] fp32 copy of the codebook, owned     */
    void *own_cb, *own_idx;   /* owned storage (NULL when borrowed)          */
} spqr_cc_layer;

/* ibits for a codebook of n entries. */
int spqr_cc_index_bits(int n);
/* Stored byte length of the index stream of nb*cols fields of ibits bits. */
size_t spqr_cc_index_bytes(int64_t fields, int ibits);

/* Build a layer from an fp32 codebook [n][d] (rounded to fp16, cb32 holds
 * the rounded values) and indices [nb][cols] (each < n). */
spqr_status spqr_cc_layer_build(int rows, int cols, int d, int n, const float *codebook, const uint32_t *idx,
                                spqr_cc_layer **out);
/* Replace the codebook values (e.g. after tuning); rounds to fp16 like build.
 * Only for layers that own their codebook. */
spqr_status spqr_cc_layer_set_codebook(spqr_cc_layer *L, const float *codebook);
/* A layer over existing storage (e.g. the sections of a mapped file), which
 * is borrowed, not copied: codebook [n][d] fp16, the index stream of
 * idx_bytes bytes. Everything is treated as untrusted: sizes must match
 * exactly, ibits follows from n, codebook values must be finite, every
 * index < n and the stream padding zero. Fails with SPQR_ERR_FORMAT (and a
 * message naming the problem) or SPQR_ERR_NOMEM. */
spqr_status spqr_cc_layer_wrap(int rows, int cols, int d, int n, int cb_share, const uint16_t *codebook,
                               const uint8_t *idx, size_t idx_bytes, spqr_cc_layer **out);
/* Index of sub-vector (b, j). */
uint32_t spqr_cc_index(const spqr_cc_layer *L, int b, int j);
/* Unpack all indices into idx [nb][cols]. */
void spqr_cc_unpack_indices(const spqr_cc_layer *L, uint32_t *idx);
void spqr_cc_layer_free(spqr_cc_layer *L); /* accepts NULL */
/* W [rows][cols] float32 per the definition above. */
void spqr_cc_dequantize(const spqr_cc_layer *L, float *W);

/* Field i of an index stream of ibits-bit fields (reads the 8 bytes from the
 * byte holding the field's first bit; a stream of spqr_cc_index_bytes()
 * bytes always has them). */
static inline uint32_t spqr_cc_get_field(const uint8_t *s, int64_t i, int ibits) {
    const uint64_t p = (uint64_t)i * (uint64_t)ibits;
    uint64_t w;
    memcpy(&w, s + (p >> 3), 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return (uint32_t)((w >> (p & 7)) & ((1ull << ibits) - 1ull));
}

extern const spqr_qformat spqr_qformat_cluscomp;

#endif
