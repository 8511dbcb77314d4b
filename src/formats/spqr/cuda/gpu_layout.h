/* gpu_layout.h - the SpQR GPU layout: its geometry, where every weight's code,
 * statistics and outliers live (the one definition, used by the packer, the
 * reference kernel and the CPU round-trip test), and the host-side packing.
 *
 * Plain C11 that nvcc also compiles: the inline decode functions are
 * SPQR_HD (__host__ __device__ under nvcc, nothing in C), so the CUDA kernels
 * and tests/test_gpu_layout.c (which runs without a GPU) share them. The
 * packer (gpu_layout.c) is plain C and part of every build.
 *
 * ---------------------------------------------------------------------------
 * GPU layout (what spqr_cuda_qlinear_upload builds from an spqr_qlayer)
 * ---------------------------------------------------------------------------
 * Rows are padded to 16 ("tiles"), permuted columns to 256 ("quads" of four
 * 64-column "windows"); padding codes are 0 and padded inputs are 0. A warp
 * computes one tile over a range of quads with mma.m16n8k16 (fp16 in, fp32
 * accumulation). The k dimension of one mma is NOT 16 consecutive columns:
 * lane L = 4g + t (g = L/4, t = L%4) owns column quarter t of every window
 * (columns 16t..16t+15) for rows g and g+8, and k-tile kt (0..3) of a window
 * takes columns 16t + 4kt + {0,1,2,3} of each quarter (the mma's k = 2t,
 * 2t+1, 2t+8, 2t+9). So a lane's weights of a window share one first-level
 * group per row when beta1 is a multiple of 16 (two groups when beta1 = 8),
 * and each lane decodes only its own statistics. The B operand (inputs) uses
 * the same k order, which is just 4 consecutive permuted columns per lane.
 *
 * "fast" layout (beta1 = 8 or a multiple of 16):
 *  - codes: per (tile, quad, lane) B 16-byte words (B = wbits for 2..4, 8 for
 *    5..8), stored as uint4 [tile][quad][u][lane] so a warp load is 512
 *    contiguous bytes. Window wi owns words wi*B .. wi*B+B-1 of the lane.
 *    Its 32 codes form 16 pairs p = 4kt + r (r = register of the A fragment:
 *    row g + 8*(r&1), columns 2*(r>>1) + {0,1} of the k-tile's four); the
 *    second code of a pair is always 16 bits above the first, so one LOP3
 *    with 0x6400 turns a pair into half2(1024 + c) and one exact HSUB2/HFMA2
 *    into the integers. B=4: word kt, r = 0/2/1/3 at bits 0/4/8/12.
 *    B=2: word p/8, bit 2(p%8). B=3: word p/5, bit 3(p%5) for p < 15, and
 *    pair 15 spread over bits 15/31 of the three words (bit b in word b).
 *    B=8: word p/2, byte p%2 (second code two bytes up). spqr_gpu_code_loc()
 *    below is the one definition.
 *  - first-level statistics, mode BIL4 (bilevel, sbits and zbits <= 4,
 *    beta2 a multiple of 16): per (tile, quad, lane) 2 words (4 with
 *    beta1 = 8): 4-bit scale codes in the low half, zero codes 16 bits
 *    higher, rows g / g+8 at +0 / +4, windows (or the two groups when
 *    beta1 = 8) at +0 / +8. Second level: uint2 [row block][group] = {s2_zero
 *    | z2_zero << 16, s2_scale | -z2_scale << 16} (fp16 bits), each row
 *    block padded with zeros to the groups of the padded columns.
 *    Mode F16 (beta2 = 0, or other bilevel settings): per (row, group) a
 *    half2 (scale, -zero) (fp16; for bilevel layers these are the exact
 *    float statistics rounded to fp16), 8 words per (tile, quad, lane)
 *    (16 with beta1 = 8).
 *    Statistics quantizers (qlayer.h): a "uniform" layer is minmax with its
 *    zeros at the mid-points (the qlayer holds them), so it takes BIL4 or
 *    F16 like minmax; a "kmeans" layer always takes F16 (its statistics are
 *    fp16 centroids, so F16 holds them exactly).
 *  - outliers: buckets per (tile, quad), u32 prefix offsets
 *    [ntiles*nquads + 1]; entry = column-in-quad (8 bits) | row-in-tile << 8
 *    | fp16 value << 16 (32 bits per outlier), read by the batch-1 kernel;
 *    and a row-ordered copy (u32 offsets [rows + 1], u32 permuted column,
 *    fp16 value) for the batch-T outlier kernel (device memory only: a
 *    product reads one of the two).
 *  - perm[cols] (int32), as in qlayer.h.
 *  Storage per weight for wbits = 3/4, beta1 = beta2 = 16, sbits = zbits = 3
 *  with 1% outliers: wbits + 0.5 + 0.25 + 0.32 bits (4-bit stat fields).
 *
 * "generic" layout (any other beta1): codes one byte each [rows][cols],
 * float (scale, zero) per (row, group), outliers as CSR with float values;
 * only the reference kernel runs on it.
 *
 * Decoded weights equal spqr_qlayer_dequantize exactly (same float32
 * operations) except where the layout holds fp16-rounded statistics
 * (spqr_gpu_plan.exact_stats == 0: fast layout, bilevel minmax or uniform,
 * sbits or zbits > 4 or beta2 not a multiple of 16).
 *
 * All sections of one layer live in one image (host staging buffer or
 * device allocation) at 256-byte aligned offsets: spqr_gpu_plan.
 */
#ifndef SPQR_GPU_LAYOUT_H
#define SPQR_GPU_LAYOUT_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define SPQR_HD __host__ __device__
#else
#define SPQR_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

#include "util/common.h" /* spqr_status, spqr_f16_to_f32 */

struct spqr_qlayer; /* formats/spqr/qlayer.h */

/* ---- geometry ------------------------------------------------------------ */

enum {
    SPQR_GPU_TILE_ROWS = 16,      /* rows per tile: the mma's m, one warp's rows  */
    SPQR_GPU_HALF_ROWS = 8,       /* a lane's rows g and g + 8 of its tile         */
    SPQR_GPU_QUARTER_COLS = 16,   /* columns of a lane's quarter of a window       */
    SPQR_GPU_WINDOW_QUARTERS = 4, /* quarters (lane columns t) per window          */
    SPQR_GPU_WINDOW_COLS = 64,    /* columns per window                            */
    SPQR_GPU_QUAD_WINDOWS = 4,    /* windows per quad                              */
    SPQR_GPU_QUAD_COLS = 256,     /* columns per quad: the unit a warp streams     */
    SPQR_GPU_KTILE_COLS = 4,      /* columns of a quarter per k-tile               */
    SPQR_GPU_KTILES = 4,          /* k-tiles per window                            */
    SPQR_GPU_PAIRS = 16,          /* code pairs per lane and window (4 per k-tile) */
    SPQR_GPU_LANES = 32,          /* lanes of a warp                               */
    SPQR_GPU_ALIGN = 256,         /* alignment of each section in the image        */
    SPQR_GPU_TILE_LOG2 = 4,
    SPQR_GPU_HALF_LOG2 = 3
};
static_assert(1 << SPQR_GPU_TILE_LOG2 == SPQR_GPU_TILE_ROWS && 1 << SPQR_GPU_HALF_LOG2 == SPQR_GPU_HALF_ROWS,
              "log2 of the tile sizes");
static_assert(SPQR_GPU_WINDOW_COLS == SPQR_GPU_WINDOW_QUARTERS * SPQR_GPU_QUARTER_COLS, "window = 4 quarters");
static_assert(SPQR_GPU_QUAD_COLS == SPQR_GPU_QUAD_WINDOWS * SPQR_GPU_WINDOW_COLS, "quad = 4 windows");
static_assert(SPQR_GPU_QUARTER_COLS == SPQR_GPU_KTILES * SPQR_GPU_KTILE_COLS, "quarter = 4 k-tiles");
static_assert(SPQR_GPU_TILE_ROWS == 2 * SPQR_GPU_HALF_ROWS, "a lane holds rows g and g + 8");
static_assert(SPQR_GPU_LANES == SPQR_GPU_HALF_ROWS * SPQR_GPU_WINDOW_QUARTERS, "lane = 4g + t");
static_assert(SPQR_GPU_PAIRS * 2 == 2 * SPQR_GPU_QUARTER_COLS, "a lane's 32 codes of a window are 16 pairs");
static_assert(SPQR_GPU_TILE_ROWS == 16 && SPQR_GPU_QUARTER_COLS == 16, "mma.m16n8k16");
static_assert(SPQR_GPU_QUAD_COLS <= 256 && SPQR_GPU_TILE_ROWS <= 16,
              "bucket entries hold the column in a quad in 8 bits and the row in a tile in 4");

/* statistics modes of the fast layout */
enum { SPQR_GPU_SM_BIL4 = 0, SPQR_GPU_SM_F16 = 1 };

/* Geometry of one layer in the GPU layout. The fields are a macro so that
 * the device view (DevLayer in device_layout.cuh) can begin with exactly
 * these fields and add its section pointers. */
#define SPQR_GPU_GEOM_FIELDS                                                                                 \
    int rows, cols, rows_pad, cols_pad, ntiles, nquads, ngroups;                                             \
    int beta1, beta2, nrb, wbits, B, sbits, zbits;                                                           \
    int fast;        /* 1: fast layout (tensor-core kernels); 0: generic                                  */ \
    int smode;       /* SPQR_GPU_SM_BIL4 or SPQR_GPU_SM_F16                                                */ \
    int g8;          /* beta1 == 8: two groups per 16-column quarter                                      */ \
    int m1;          /* beta1 == 16 (group of quarter = window quarter index)                             */ \
    uint32_t gmagic; /* group = umulhi(4w + t, gmagic) when beta1 = 16m, m > 1                            */ \
    int sw;          /* statistic words per lane per quad                                                 */ \
    int ng2;         /* row stride of stats2: groups padded so every quad's index is valid                */ \
    int s2step;      /* groups per quad when that is an integer (else 0)                                  */
typedef struct spqr_gpu_geom {
    SPQR_GPU_GEOM_FIELDS
} spqr_gpu_geom;

/* Sizes and 256-byte aligned offsets of the sections of a layer's image. */
typedef struct spqr_gpu_plan {
    spqr_gpu_geom geo;
    int exact_stats;    /* 0: first-level statistics rounded to fp16          */
    int64_t n_outliers;
    /* bytes; fast: codes, stats, stats2 (BIL4), bucket offsets, bucket
     * entries, perm, row-ordered outliers (offsets, columns, values);
     * generic: codes, stats, CSR offsets, CSR columns + values, perm */
    size_t b_codes, b_stats, b_stats2, b_olptr, b_ol, b_perm, b_orow, b_ocol, b_oval;
    size_t o_codes, o_stats, o_stats2, o_olptr, o_ol, o_perm, o_orow, o_ocol, o_oval;
    size_t total;       /* bytes of the image                                   */
} spqr_gpu_plan;

/* Pointers to the sections of an image (host or device memory); NULL for
 * sections the layout does not have. */
typedef struct spqr_gpu_sections {
    const uint32_t *codes;  /* fast: [ntiles][nquads][B][32] 16-byte words      */
    const uint32_t *stats;  /* fast: see spqr_gpu_stat_word_index               */
    const uint32_t *stats2; /* fast BIL4: [nrb][ng2] pairs of u32               */
    const uint32_t *ol_off; /* fast: [ntiles * nquads + 1]                      */
    const uint32_t *ol;     /* fast: bucket entries (spqr_gpu_ol_entry)         */
    const int32_t *perm;    /* [cols]                                           */
    const uint32_t *orow;   /* fast: row-ordered outliers: CSR offsets [rows+1],*/
    const uint32_t *ocol;   /*   permuted columns,                              */
    const uint16_t *oval;   /*   fp16 values                                    */
    const uint8_t *gcodes;  /* generic: [rows][cols]                            */
    const float *gstats;    /* generic: [rows][ngroups] (scale, zero) pairs     */
    const uint32_t *grow;   /* generic: outlier CSR row offsets [rows + 1]      */
    const uint32_t *gcol;   /* generic: permuted columns                        */
    const float *gval;      /* generic: values                                  */
} spqr_gpu_sections;

/* Check q (geometry and array presence) and compute its geometry and
 * image plan. SPQR_ERR_INVALID_ARG for inconsistent layers. */
spqr_status spqr_gpu_layout_plan(const struct spqr_qlayer *q, spqr_gpu_plan *p);
/* Check q's contents (perm range, outlier CSR) and pack it into a new
 * zero-filled host image of p->total bytes (free() it). */
spqr_status spqr_gpu_layout_pack(const struct spqr_qlayer *q, const spqr_gpu_plan *p, unsigned char **image);
/* The section pointers of an image (host or device) at base. */
void spqr_gpu_layout_sections(const spqr_gpu_plan *p, const void *base, spqr_gpu_sections *s);

/* ---- where a code lives (fast layout) -------------------------------------
 * Per (tile, window) a lane (g = lane / 4, t = lane % 4) holds 32 codes as 16
 * pairs p = 4*kt + r (k-tile kt = 0..3, register r = 0..3 of the mma A
 * fragment) with elements e = 0..1 (low / high half of the half2). Pair
 * (p, e) is the code of row g + 8*(r & 1), window column
 * 16*t + 4*kt + 2*(r >> 1) + e. Registers r = 0, 1 multiply the B register
 * b0 and r = 2, 3 multiply b1, so the "duo" (kt, h) = pairs 4kt + 2h and
 * 4kt + 2h + 1 shares one input pair. The B container words of a window
 * hold every pair with element 1 exactly 16 bits above element 0; one LOP3
 * with 0x6400 then yields half2(1024 + sigma * c) where sigma is the field's
 * bit scale, and both pairs of a duo have the same sigma (spqr_gpu_duo_k):
 *   B=4: word kt; r = 0/2/1/3 at bits 0/4/8/12 (sigma 1 for h = 0, 16 for
 *        h = 1; r = 1, 3 are read after a shift by 8)
 *   B=3: three words of five 3-bit slots (bits 0, 3, 6, 9, 12; read at
 *        sigma 1, 8, 1 (>> 6), 1 (>> 9), 8 (>> 9)) and one pair spread over
 *        bits 15/31 of the three words (bit b of each code in word b); the
 *        slot of each pair is in spqr_gpu_b3_loc
 *   B=2: two words of eight 2-bit slots (bit 2s; read at sigma 1, 4, 16 for
 *        s = 0..2, 1, 4 (>> 6) for s = 3, 4, and 1, 4, 16 (>> 10) for
 *        s = 5..7); the slot of each pair is in spqr_gpu_b2_loc
 *   B=8: word p/2, byte p%2 (element 1 two bytes higher), sigma 1 */
#define SPQR_GPU_B3_SPREAD 15
/* B=3: word * 8 + slot of pair p (15 = the spread pair). Written as one
 * expression so that device code with a compile-time p folds it. */
SPQR_HD static inline int spqr_gpu_b3_loc(int p) {
    return p == 0 ? 0 : p == 1 ? 2 : p == 2 ? 1 : p == 3 ? 4 : p == 4 ? 3 : p == 5 ? 8 : p == 6 ? 9 : p == 7 ? 12
         : p == 8 ? 10 : p == 9 ? 11 : p == 10 ? 17 : p == 11 ? 20 : p == 12 ? 16 : p == 13 ? 18 : p == 14 ? 19
         : SPQR_GPU_B3_SPREAD;
}
/* B=2: word * 8 + slot of pair p */
SPQR_HD static inline int spqr_gpu_b2_loc(int p) {
    return p == 0 ? 0 : p == 1 ? 3 : p == 2 ? 6 : p == 3 ? 9 : p == 4 ? 5 : p == 5 ? 8 : p == 6 ? 12 : p == 7 ? 14
         : p == 8 ? 11 : p == 9 ? 13 : p == 10 ? 2 : p == 11 ? 7 : p == 12 ? 1 : p == 13 ? 4 : p == 14 ? 10 : 15;
}
/* bit scale (log2 sigma) at which a slot is read */
SPQR_HD static inline int spqr_gpu_b3_slot_k(int slot) { return (slot == 1 || slot == 4) ? 3 : 0; }
SPQR_HD static inline int spqr_gpu_b2_slot_k(int slot) {
    return (slot == 0 || slot == 3 || slot == 5) ? 0 : (slot == 1 || slot == 4 || slot == 6) ? 2 : 4;
}
/* log2 of the bit scale sigma of duo (kt, h) */
SPQR_HD static inline int spqr_gpu_duo_k(int B, int kt, int h) {
    const int p = 4 * kt + 2 * h;
    switch (B) {
    case 4: return h ? 4 : 0;
    case 3: {
        const int l = spqr_gpu_b3_loc(p);
        return l == SPQR_GPU_B3_SPREAD ? 0 : spqr_gpu_b3_slot_k(l & 7);
    }
    case 2: return spqr_gpu_b2_slot_k(spqr_gpu_b2_loc(p) & 7);
    default: return 0;
    }
}
/* word (0..B-1 within the window; -1 for the spread pair of B=3) and bit of
 * element e of pair p */
SPQR_HD static inline void spqr_gpu_code_loc(int B, int p, int e, int *word, int *bit) {
    switch (B) {
    case 4: {
        const int r = p & 3;
        *word = p >> 2;
        *bit = 4 * (((r & 1) << 1) | (r >> 1)) + 16 * e;
        break;
    }
    case 2: {
        const int l = spqr_gpu_b2_loc(p);
        *word = l >> 3;
        *bit = 2 * (l & 7) + 16 * e;
        break;
    }
    case 3: {
        const int l = spqr_gpu_b3_loc(p);
        if (l == SPQR_GPU_B3_SPREAD) {
            *word = -1;
            *bit = 15 + 16 * e;
        } else {
            *word = l >> 3;
            *bit = 3 * (l & 7) + 16 * e;
        }
        break;
    }
    default: /* 8 */
        *word = p >> 1;
        *bit = 8 * ((p & 1) + 2 * e);
        break;
    }
}

/* Where statistic word i (0..sw-1) of lane `lane` for (tile, quad) lives,
 * as a u32 index. Lanes of one (tile, quad) read 8-byte (sw == 2) or 16-byte
 * vectors that are contiguous across the warp. */
SPQR_HD static inline size_t spqr_gpu_stat_word_index(int sw, int nquads, int tile, int q, int lane, int i) {
    const size_t tq = (size_t)tile * nquads + q;
    if (sw == 2) return (tq * 32 + lane) * 2 + i;
    return ((tq * (sw / 4) + i / 4) * 32 + lane) * 4 + (i & 3);
}
/* u32 index of code word j (0..4B-1 within the quad; window wi owns words
 * wi*B .. wi*B+B-1) of lane `lane` for (tile, quad) */
SPQR_HD static inline size_t spqr_gpu_code_word_index(int B, int nquads, int tile, int q, int lane, int j) {
    return ((((size_t)tile * nquads + q) * B + j / 4) * 32 + lane) * 4 + (j & 3);
}
/* first-level group index of (window w, quarter t, group-of-quarter grp) */
SPQR_HD static inline int spqr_gpu_group_of(const spqr_gpu_geom *L, int w, int t, int grp) {
    int gi;
    if (L->g8) {
        gi = 8 * w + 2 * t + grp;
    } else {
        const uint32_t n = (uint32_t)(4 * w + t);
#ifdef __CUDA_ARCH__
        gi = L->m1 ? (int)n : (int)__umulhi(n, L->gmagic);
#else
        gi = L->m1 ? (int)n : (int)(((uint64_t)n * L->gmagic) >> 32);
#endif
    }
    return gi < L->ngroups ? gi : L->ngroups - 1;
}
/* fast layout, first-level statistics word of (half h, window wi, group of
 * quarter grp) among a lane's sw words of a quad, and the bit of its 4-bit
 * scale code (BIL4; the zero code is 16 bits higher) */
SPQR_HD static inline int spqr_gpu_bil4_word(int g8, int wi) { return g8 ? wi : (wi >> 1); }
SPQR_HD static inline int spqr_gpu_bil4_bit(int g8, int wi, int grp, int h) { return 8 * (g8 ? grp : (wi & 1)) + 4 * h; }
SPQR_HD static inline int spqr_gpu_f16_word(int g8, int wi, int grp, int h) { return g8 ? 4 * wi + 2 * grp + h : 2 * wi + h; }

/* bucket entry of an outlier: column in quad, row in tile, fp16 value bits */
SPQR_HD static inline uint32_t spqr_gpu_ol_entry(uint32_t col_in_quad, uint32_t row_in_tile, uint32_t f16) {
    return (col_in_quad & 255u) | (row_in_tile << 8) | (f16 << 16);
}
SPQR_HD static inline int spqr_gpu_ol_col(uint32_t en) { return (int)(en & 255u); }
SPQR_HD static inline int spqr_gpu_ol_row(uint32_t en) { return (int)((en >> 8) & 15u); }

/* generic layout: indices of a code and of a (scale, zero) pair */
SPQR_HD static inline size_t spqr_gpu_generic_code_index(const spqr_gpu_geom *L, int r, int j) {
    return (size_t)r * L->cols + j;
}
SPQR_HD static inline size_t spqr_gpu_generic_stat_index(const spqr_gpu_geom *L, int r, int gi) {
    return (size_t)r * L->ngroups + gi;
}

/* ---- decoding one weight ---------------------------------------------------- */

/* fp16 bits (low 16 bits of x) to float, exactly */
SPQR_HD static inline float spqr_gpu_h2f(uint32_t bits16) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half((unsigned short)(bits16 & 0xffffu)));
#else
    return spqr_f16_to_f32((uint16_t)(bits16 & 0xffffu));
#endif
}

/* Dequantized weight (row r, permuted column j) read from the fast layout,
 * in float32 exactly as qlayer.h defines it (for the statistics the layout
 * holds: exact for bilevel 4-bit codes and for fp16 statistics), without
 * the outliers. codes/stats/stats2 as in spqr_gpu_sections. */
SPQR_HD static inline float spqr_gpu_fast_weight(const spqr_gpu_geom *L, const uint32_t *codes,
                                                 const uint32_t *stats, const uint32_t *stats2, int r, int j) {
    const int tile = r >> SPQR_GPU_TILE_LOG2, lr = r & (SPQR_GPU_TILE_ROWS - 1);
    const int g = lr & (SPQR_GPU_HALF_ROWS - 1), h = lr >> SPQR_GPU_HALF_LOG2;
    const int q = j / SPQR_GPU_QUAD_COLS, wi = (j % SPQR_GPU_QUAD_COLS) / SPQR_GPU_WINDOW_COLS;
    const int cw = j % SPQR_GPU_WINDOW_COLS, t = cw / SPQR_GPU_QUARTER_COLS, cq = cw % SPQR_GPU_QUARTER_COLS;
    const int kt = cq / SPQR_GPU_KTILE_COLS, sl = cq % SPQR_GPU_KTILE_COLS, lane = 4 * g + t;
    const int p = 4 * kt + h + 2 * (sl >> 1), e = sl & 1;
    int wd, bit;
    spqr_gpu_code_loc(L->B, p, e, &wd, &bit);
    uint32_t code;
    if (wd < 0) {
        code = 0;
        for (int b = 0; b < 3; b++)
            code |= ((codes[spqr_gpu_code_word_index(3, L->nquads, tile, q, lane, wi * 3 + b)] >> bit) & 1u) << b;
    } else {
        const uint32_t v = codes[spqr_gpu_code_word_index(L->B, L->nquads, tile, q, lane, wi * L->B + wd)];
        code = (v >> bit) & ((1u << L->B) - 1u);
    }
    const int grp = L->g8 ? (kt >> 1) : 0;
    float s, nz;
    if (L->smode == SPQR_GPU_SM_BIL4) {
        const int i = spqr_gpu_bil4_word(L->g8, wi);
        const int base = spqr_gpu_bil4_bit(L->g8, wi, grp, h);
        const uint32_t sw = stats[spqr_gpu_stat_word_index(L->sw, L->nquads, tile, q, lane, i)];
        const uint32_t sc = (sw >> base) & 15u, zc = (sw >> (base + 16)) & 15u;
        const int gi = spqr_gpu_group_of(L, 4 * q + wi, t, grp);
        const int rb = r / L->beta2 < L->nrb - 1 ? r / L->beta2 : L->nrb - 1;
        /* one 8-byte entry {s2_zero | z2_zero << 16, s2_scale | -z2_scale << 16} */
        const uint64_t q2 = ((const uint64_t *)(const void *)stats2)[(size_t)rb * L->ng2 + gi];
        const uint32_t q2x = (uint32_t)q2, q2y = (uint32_t)(q2 >> 32);
        s = spqr_gpu_h2f(q2y) * ((float)sc - spqr_gpu_h2f(q2x));
        nz = spqr_gpu_h2f(q2y >> 16) * ((float)zc - spqr_gpu_h2f(q2x >> 16));
    } else {
        const int i = spqr_gpu_f16_word(L->g8, wi, grp, h);
        const uint32_t v = stats[spqr_gpu_stat_word_index(L->sw, L->nquads, tile, q, lane, i)];
        s = spqr_gpu_h2f(v);
        nz = spqr_gpu_h2f(v >> 16);
    }
    return s * ((float)code + nz);
}

/* Dequantized weight (row r, permuted column j) of the generic layout,
 * without the outliers. gstats as in spqr_gpu_sections. */
SPQR_HD static inline float spqr_gpu_generic_weight(const spqr_gpu_geom *L, const uint8_t *gcodes,
                                                    const float *gstats, int r, int j) {
    const size_t si = 2 * spqr_gpu_generic_stat_index(L, r, j / L->beta1);
    return gstats[si] * ((float)gcodes[spqr_gpu_generic_code_index(L, r, j)] - gstats[si + 1]);
}

#ifdef __cplusplus
}
#endif
#endif /* SPQR_GPU_LAYOUT_H */
