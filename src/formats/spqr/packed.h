/* packed.h - the kernel-friendly packed form of one quantized linear layer.
 *
 * A spqr_packed holds exactly the information of a spqr_qlayer (codes,
 * statistics, outliers, permutation; see qlayer.h for the meaning and
 * for THE definition of dequantization) re-arranged into a few flat arrays
 * ("sections") that the CPU kernels stream through once per matrix product.
 * Every section is one contiguous little-endian buffer with a byte size fixed
 * by the geometry (and, for the outlier sections, by the outlier count), so a
 * file writer stores them verbatim and a reader points them into a mapped
 * file without copying (spqr_packed_from_sections validates everything).
 *
 * ---- Layout ("SpQR packed v1") -------------------------------------------
 *
 * Geometry (stored by the writer as metadata; all small integers):
 *   R = rows, C = cols, B = wbits (2..8), beta1 (>= 1), beta2 (>= 0),
 *   sbits, zbits (1..8 each when beta2 > 0; ignored, 0..8, when beta2 == 0).
 * Derived:
 *   NG  = ceil(C / beta1)              first-level groups (last may be partial)
 *   NRB = ceil(R / beta2)              second-level row blocks (0 if beta2 == 0)
 *   T   = ceil(R / 16)                 row tiles of 16 rows
 *   CW  = ceil(C * B / 32)             code words per row
 *   SZ  = sbits + zbits
 *   SW  = ceil(NG * SZ / 32)           statistic-code words per row
 *   I   = uint16 if C <= 65535, else uint32   (index type, see below)
 * All columns are PERMUTED columns (qlayer order); row r lives in tile
 * t = r / 16 at lane l = r % 16. Rows R..16T-1 of the last tile are padding.
 *
 * Row bit streams. Row r's codes form a little-endian bit stream in which the
 * code of column j occupies bits [j*B, j*B + B) (least significant bit
 * first); the stream is cut into 32-bit words, word w holding stream bits
 * [32w, 32w + 32). Bits past C*B and padding rows are zero. The words of the
 * 16 rows of a tile are interleaved ("lane-interleaved"), so that one 64-byte
 * vector holds word w of all 16 rows and a kernel decodes one column for 16
 * rows with one shift (+ one permute/convert); 32 consecutive columns always
 * use exactly B whole words.
 *
 * Sections (name: element type [dimensions], outermost first):
 *   "codes"      uint32 [T][CW][16]   word w of row 16t+l at [t][w][l]
 *   "stat_codes" uint32 [T][SW][16]   (beta2 > 0 only) the same arrangement
 *                                     for a bit stream of SZ-bit fields, one
 *                                     per group g at bits [g*SZ, g*SZ + SZ):
 *                                     field = scale_code | zero_code << sbits
 *   "stats2"     fp16   (beta2 > 0 only) second-level statistics, by the
 *                                     statistics quantizer SQ (geometry key
 *                                     "stat_quantizer", qlayer.h):
 *                        minmax  [NRB][NG][4]  (row block, group): s2_scale,
 *                                     s2_zero, z2_scale, z2_zero
 *                        uniform [NRB][NG][2]  s2_scale, z2_scale (the zeros
 *                                     are the fixed mid-points spqr_sq_mid)
 *                        kmeans  [2^sbits + 2^zbits]  the layer's scale
 *                                     centroids, then its zero centroids
 *   "stats"      fp16   [T][NG][2][16] (beta2 == 0 only) scale of the 16 rows
 *                                     of tile t for group g, then their zeros;
 *                                     padding rows zero
 *   "perm"       I      [C]           permuted column j = original column
 *                                     perm[j]; must be a permutation
 *   "ol_count"   OC     [R]           outliers per row (sum = N); OC = uint8
 *                                     when ocw = 1, uint16 / uint32 when ocw
 *                                     = 2 / 4, I when ocw = 0 (older files);
 *                                     spqr_pack writes uint8 whenever every
 *                                     row has at most 255 outliers
 *   "ol_col"     I      [N]           permuted column of each outlier, sorted
 *                                     by row, then strictly ascending column
 *   "ol_val"     fp16   [N]           residual added to the dense value
 * N (the outlier count) is implied by the size of "ol_col". Outlier row
 * offsets are rebuilt in memory at load time. Empty sections (N == 0) have
 * size 0. Exact byte sizes:
 *   codes = 64*T*CW, stat_codes = 64*T*SW, stats2 = 8*NRB*NG (minmax),
 *   4*NRB*NG (uniform), 2*(2^sbits + 2^zbits) (kmeans), stats = 64*T*NG,
 *   perm = |I|*C, ol_count = |OC|*R, ol_col = |I|*N, ol_val = 2*N.
 * Buffers must be aligned to their element size (64 bytes is recommended and
 * is what spqr_pack allocates); writers should start each section on a
 * 64-byte boundary.
 *
 * Size: for beta1 = beta2 = 16, B = 4, sbits = zbits = 3, 512 x 512 with
 * 2621 outliers (1%) this is 163572 bytes vs 162036 by the paper's formula
 * (+0.9%: the permutation and the per-row outlier counts, which the formula
 * omits; +1.3% at B = 3, +0.1% for 4096 x 4096). There is no padding except
 * the last word of each row stream and the rows of a partial last tile.
 * Compared with the bit-plane layout (one uint16 plane word per bit, column
 * and tile) the size is the same, but decoding one column costs a shift and a
 * permute instead of B masked adds, and 3-bit codes need no special case.
 */
#ifndef SPQR_PACKED_H
#define SPQR_PACKED_H

#include "qlayer.h"

#define SPQR_PACKED_TILE 16 /* rows per tile = lanes of one interleaved word group */
#define SPQR_PACKED_MAX_SECTIONS 8
_Static_assert(SPQR_PACKED_TILE == 16, "the SIMD kernels hold one tile's 16 lanes in one zmm / two ymm registers");
#define SPQR_PACKED_MAX_SECTIONS 8

typedef struct spqr_packed_geom {
    int32_t rows, cols, wbits, beta1, beta2, sbits, zbits;
    int32_t ocw; /* bytes per outlier count: 1, 2 or 4; 0 = the index width I (files of model layout 1) */
    int32_t sq;  /* statistics quantizer (spqr_statq); non-minmax needs beta2 > 0 */
} spqr_packed_geom;

typedef struct spqr_packed_section {
    const char *name;   /* static string: "codes", "stat_codes", ...         */
    const void *data;   /* may be NULL when bytes == 0                        */
    size_t bytes;
} spqr_packed_section;

typedef struct spqr_packed {
    /* geometry */
    int32_t rows, cols, wbits, beta1, beta2, sbits, zbits;
    int32_t sq;           /* statistics quantizer (spqr_statq)               */
    /* derived */
    int32_t ngroups, nrb, ntiles;
    int64_t code_words;   /* CW: words per row in "codes"                    */
    int64_t stat_words;   /* SW: words per row in "stat_codes" (0 if plain)  */
    int64_t n_outliers;
    int wide;             /* 1: index type uint32 (cols > 65535), else uint16 */
    int ocsz;             /* bytes per outlier count (1, 2 or 4)                */

    /* sections (borrowed from a file or owned, see owned[]) */
    const uint32_t *codes;
    const uint32_t *stat_codes; /* beta2 > 0  */
    const uint16_t *stats2;     /* beta2 > 0  */
    const uint16_t *stats;      /* beta2 == 0 */
    const void *perm;           /* uint16 / uint32 */
    const void *ol_count;       /* uint8 / uint16 / uint32: ocsz bytes each */
    const void *ol_col;         /* uint16 / uint32 */
    const uint16_t *ol_val;

    /* What the SIMD kernels read (derived at load from the sections above
     * and rebuilt by spqr_packed_refresh): minmax: kbeta2 = beta2, kstats2 =
     * stats2; uniform: kbeta2 = beta2 and kstats2 an owned minmax-shaped copy
     * [NRB][NG][4] with the fixed mid-point zeros (the same float operations,
     * so bit-identical); kmeans: kbeta2 = 0 and kstats an owned plain-shaped
     * [T][NG][2][16] table of the centroids each (row, group) selects (fp16
     * values, so exact); beta2 == 0: kstats = stats. */
    int32_t kbeta2;
    const uint16_t *kstats2, *kstats;
    uint16_t *kbuf;             /* owned buffer behind a derived kstats2 / kstats */

    /* rebuilt at load: outliers of row r are [ol_row_ptr[r], ol_row_ptr[r+1]) */
    int64_t *ol_row_ptr;        /* [rows + 1], owned */
    int64_t max_tile_outliers;  /* most outliers in one 16-row tile (kernel scratch) */

    void *owned[SPQR_PACKED_MAX_SECTIONS]; /* buffers freed by spqr_packed_free */
} spqr_packed;

/* Entry i of an index section (perm, ol_col): uint32 when wide, else uint16. */
static inline uint32_t spqr_packed_idx(const void *a, int wide, int64_t i) {
    return wide ? ((const uint32_t *)a)[i] : ((const uint16_t *)a)[i];
}

/* The nbits-wide field at bit `pos` of lane `lane`'s stream in a
 * lane-interleaved section ("codes", "stat_codes"); base points at the
 * tile's word 0. The one reader of the layout outside the SIMD kernels. */
static inline uint32_t spqr_packed_get_bits(const uint32_t *base, int lane, int64_t pos, int nbits) {
    int64_t w = pos >> 5;
    int s = (int)(pos & 31);
    uint32_t v = base[w * SPQR_PACKED_TILE + lane] >> s;
    if (s + nbits > 32) v |= base[(w + 1) * SPQR_PACKED_TILE + lane] << (32 - s);
    return v & ((1u << nbits) - 1u);
}

/* First-level statistics of (row r, group g) of p, decoded from the
 * sections exactly as qlayer.h defines them (every variant): the scalar
 * reference kernel, the training hooks and the tests use this. */
static inline void spqr_packed_group_stats(const spqr_packed *p, int64_t r, int64_t g, float *scale, float *zero) {
    const int lane = (int)(r % SPQR_PACKED_TILE);
    if (p->beta2 > 0) {
        const uint32_t *base = p->stat_codes + (r / SPQR_PACKED_TILE) * p->stat_words * SPQR_PACKED_TILE;
        const uint32_t v = spqr_packed_get_bits(base, lane, g * (p->sbits + p->zbits), p->sbits + p->zbits);
        const uint32_t sc = v & ((1u << p->sbits) - 1u), zc = v >> p->sbits;
        const int64_t rb = r / p->beta2;
        if (p->sq == SPQR_SQ_KMEANS) { /* centroid lookup */
            *scale = spqr_f16_to_f32(p->stats2[sc]);
            *zero = spqr_f16_to_f32(p->stats2[((size_t)1 << p->sbits) + zc]);
        } else if (p->sq == SPQR_SQ_UNIFORM) { /* fixed mid-point */
            const uint16_t *e = p->stats2 + (rb * p->ngroups + g) * 2;
            *scale = spqr_f16_to_f32(e[0]) * ((float)sc - spqr_sq_mid(p->sbits));
            *zero = spqr_f16_to_f32(e[1]) * ((float)zc - spqr_sq_mid(p->zbits));
        } else {
            const uint16_t *e = p->stats2 + (rb * p->ngroups + g) * 4;
            *scale = spqr_f16_to_f32(e[0]) * ((float)sc - spqr_f16_to_f32(e[1]));
            *zero = spqr_f16_to_f32(e[2]) * ((float)zc - spqr_f16_to_f32(e[3]));
        }
    } else {
        const uint16_t *e = p->stats + (((r / SPQR_PACKED_TILE) * p->ngroups + g) * 2) * SPQR_PACKED_TILE;
        *scale = spqr_f16_to_f32(e[lane]);
        *zero = spqr_f16_to_f32(e[SPQR_PACKED_TILE + lane]);
    }
}

/* Rebuild the kernels' derived statistics (kbeta2, kstats2, kstats) from
 * the sections, e.g. after the training hooks rewrote "stats2". */
spqr_status spqr_packed_refresh(spqr_packed *p);

/* Build the packed form of q (which is not modified). The sections are owned
 * by *out (64-byte aligned). Returns SPQR_ERR_INVALID_ARG if q is
 * inconsistent (bad geometry, unsorted or out-of-range outliers, perm not a
 * permutation, codes or stat codes out of range), SPQR_ERR_NOMEM. */
spqr_status spqr_pack(const spqr_qlayer *q, spqr_packed *out);

/* Convert back: *q receives freshly malloc'd arrays (release with
 * spqr_qlayer_free, which free()s every array) holding exactly the codes,
 * statistics, outliers and permutation that were packed. Arrays that do not
 * apply to the statistics kind (bilevel vs fp16) are NULL, as are ol_col and
 * ol_val when there are no outliers. */
spqr_status spqr_unpack(const spqr_packed *p, spqr_qlayer *q);

/* Free the owned buffers and zero the struct (NULL is allowed). */
void spqr_packed_free(spqr_packed *p);

/* The geometry of p. */
void spqr_packed_geometry(const spqr_packed *p, spqr_packed_geom *g);

/* List the sections of p (those that apply to its statistics kind, in the
 * order of the table above, empty ones included) into out[0..max). Returns
 * the number of sections (<= SPQR_PACKED_MAX_SECTIONS) or -1 if max is too
 * small. */
int spqr_packed_sections(const spqr_packed *p, spqr_packed_section out[], int max);

/* The byte size that section `name` must have for geometry g and n_outliers
 * outliers. Returns SPQR_ERR_FORMAT for a bad geometry, an unknown name or a
 * section that does not apply to g, SPQR_ERR_NOMEM on size overflow. */
spqr_status spqr_packed_section_bytes(const spqr_packed_geom *g, const char *name, int64_t n_outliers,
                                      size_t *bytes);

/* Point *out at the given sections (borrowed: they must outlive *out; only
 * the rebuilt outlier row offsets are allocated). Every section of the
 * geometry's statistics kind must appear exactly once with its exact size;
 * geometry, sizes, alignment, outlier counts and columns and the permutation
 * are all validated (the data may come from an untrusted file): any
 * inconsistency returns SPQR_ERR_FORMAT with a message. After success the
 * kernels never read out of bounds, whatever the code bits are. */
spqr_status spqr_packed_from_sections(const spqr_packed_geom *g, const spqr_packed_section *sec, int nsec,
                                      spqr_packed *out);

/* Name of section i in the order of the table above (all kinds), NULL past
 * the last: the one list of the layout's section names. */
const char *spqr_packed_section_name(int i);

/* Total bytes of all sections. */
size_t spqr_packed_bytes(const spqr_packed *p);

#endif
