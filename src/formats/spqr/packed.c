/* packed.c - building, validating and unpacking spqr_packed (see packed.h). */
#include "packed.h"

#include <stdlib.h>
#include <sys/mman.h>

/* Section indices; the order is the order spqr_packed_sections lists them. */
enum { S_CODES, S_STAT_CODES, S_STATS2, S_STATS, S_PERM, S_OL_COUNT, S_OL_COL, S_OL_VAL, S_COUNT };
static const char *const k_names[S_COUNT] = {"codes",    "stat_codes", "stats2", "stats",
                                             "perm",     "ol_count",   "ol_col", "ol_val"};

#define TILE SPQR_PACKED_TILE /* rows per lane-interleaved tile */

#define MAX_DIM ((int64_t)1 << 30)

typedef struct derived {
    int64_t NG, NRB, T, CW, SW;
    int wide;
    size_t isz;  /* index element size */
    size_t ocsz; /* outlier count element size */
} derived;

const char *spqr_packed_section_name(int i) { return i >= 0 && i < S_COUNT ? k_names[i] : NULL; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static spqr_status geom_derive(const spqr_packed_geom *g, derived *d, spqr_status err) {
    if (g->rows < 1 || g->cols < 1 || g->rows > MAX_DIM || g->cols > MAX_DIM)
        return spqr_fail(err, "packed layer: bad shape %dx%d", (int)g->rows, (int)g->cols);
    if (g->wbits < 2 || g->wbits > 8) return spqr_fail(err, "packed layer: wbits %d not in 2..8", (int)g->wbits);
    if (g->beta1 < 1) return spqr_fail(err, "packed layer: beta1 %d < 1", (int)g->beta1);
    if (g->beta2 < 0) return spqr_fail(err, "packed layer: beta2 %d < 0", (int)g->beta2);
    int lo = g->beta2 > 0 ? 1 : 0;
    if (g->sbits < lo || g->sbits > 8 || g->zbits < lo || g->zbits > 8)
        return spqr_fail(err, "packed layer: sbits/zbits %d/%d not in %d..8", (int)g->sbits, (int)g->zbits, lo);
    if (g->sq < 0 || g->sq >= SPQR_SQ_COUNT)
        return spqr_fail(err, "packed layer: unknown statistics quantizer %d", (int)g->sq);
    if (g->sq != SPQR_SQ_MINMAX && g->beta2 == 0)
        return spqr_fail(err, "packed layer: statistics quantizer '%s' needs beta2 > 0", spqr_statq_name(g->sq));
    d->NG = ceil_div(g->cols, g->beta1);
    d->NRB = g->beta2 > 0 ? ceil_div(g->rows, g->beta2) : 0;
    d->T = ceil_div(g->rows, SPQR_PACKED_TILE);
    d->CW = ceil_div((int64_t)g->cols * g->wbits, 32);
    d->SW = g->beta2 > 0 ? ceil_div(d->NG * (g->sbits + g->zbits), 32) : 0;
    d->wide = g->cols > 65535;
    d->isz = d->wide ? 4 : 2;
    if (g->ocw != 0 && g->ocw != 1 && g->ocw != 2 && g->ocw != 4)
        return spqr_fail(err, "packed layer: outlier count width %d is not 1, 2 or 4 bytes", (int)g->ocw);
    d->ocsz = g->ocw ? (size_t)g->ocw : d->isz;
    return SPQR_OK;
}

static bool sec_applies(int s, int bilevel) {
    if (s == S_STAT_CODES || s == S_STATS2) return bilevel;
    if (s == S_STATS) return !bilevel;
    return true;
}

/* Size of section s; false on overflow. */
static bool sec_bytes(const spqr_packed_geom *g, const derived *d, int s, int64_t n_ol, size_t *out) {
    size_t a = 0;
    switch (s) {
    case S_CODES: return spqr_mul_size((size_t)d->T * 64, (size_t)d->CW, out);
    case S_STAT_CODES: return spqr_mul_size((size_t)d->T * 64, (size_t)d->SW, out);
    case S_STATS2:
        if (g->sq == SPQR_SQ_KMEANS) {
            *out = 2 * (((size_t)1 << g->sbits) + ((size_t)1 << g->zbits));
            return true;
        }
        return spqr_mul_size((size_t)d->NRB * (g->sq == SPQR_SQ_UNIFORM ? 4 : 8), (size_t)d->NG, out);
    case S_STATS: return spqr_mul_size((size_t)d->T * 64, (size_t)d->NG, out);
    case S_PERM: return spqr_mul_size(d->isz, (size_t)g->cols, out);
    case S_OL_COUNT: return spqr_mul_size(d->ocsz, (size_t)g->rows, out);
    case S_OL_COL: a = d->isz; break;
    case S_OL_VAL: a = 2; break;
    default: return false;
    }
    if (n_ol < 0) return false;
    return spqr_mul_size(a, (size_t)n_ol, out);
}

static size_t sec_align(const derived *d, int s) {
    switch (s) {
    case S_CODES:
    case S_STAT_CODES: return 4;
    case S_OL_COUNT: return d->ocsz;
    case S_PERM:
    case S_OL_COL: return d->isz;
    default: return 2;
    }
}

spqr_status spqr_packed_section_bytes(const spqr_packed_geom *g, const char *name, int64_t n_outliers,
                                      size_t *bytes) {
    derived d = {0};
    spqr_status st = geom_derive(g, &d, SPQR_ERR_FORMAT);
    if (st) return st;
    for (int s = 0; s < S_COUNT; s++) {
        if (strcmp(name, k_names[s]) != 0) continue;
        if (!sec_applies(s, g->beta2 > 0))
            return spqr_fail(SPQR_ERR_FORMAT, "packed layer: section '%s' does not apply to beta2=%d", name,
                             (int)g->beta2);
        if (!sec_bytes(g, &d, s, n_outliers, bytes))
            return spqr_fail(SPQR_ERR_NOMEM, "packed layer: size of section '%s' overflows", name);
        return SPQR_OK;
    }
    return spqr_fail(SPQR_ERR_FORMAT, "packed layer: unknown section '%s'", name);
}

static inline uint32_t cnt_at(const void *a, size_t sz, int64_t i) {
    return sz == 1 ? ((const uint8_t *)a)[i] : sz == 2 ? ((const uint16_t *)a)[i] : ((const uint32_t *)a)[i];
}

/* Fill p from geometry + the section pointers in data[] (sizes already
 * checked), validating the contents, and rebuild the outlier offsets. */
static spqr_status init_checked(spqr_packed *p, const spqr_packed_geom *g, const derived *d,
                                const void *const data[S_COUNT], int64_t n_ol, spqr_status err) {
    p->rows = g->rows;
    p->cols = g->cols;
    p->wbits = g->wbits;
    p->beta1 = g->beta1;
    p->beta2 = g->beta2;
    p->sbits = g->sbits;
    p->zbits = g->zbits;
    p->ngroups = (int32_t)d->NG;
    p->nrb = (int32_t)d->NRB;
    p->ntiles = (int32_t)d->T;
    p->sq = g->sq;
    p->code_words = d->CW;
    p->stat_words = d->SW;
    p->n_outliers = n_ol;
    p->wide = d->wide;
    p->ocsz = (int)d->ocsz;
    p->codes = data[S_CODES];
    p->stat_codes = data[S_STAT_CODES];
    p->stats2 = data[S_STATS2];
    p->stats = data[S_STATS];
    p->perm = data[S_PERM];
    p->ol_count = data[S_OL_COUNT];
    p->ol_col = data[S_OL_COL];
    p->ol_val = data[S_OL_VAL];

    const int64_t R = g->rows, C = g->cols;
    if (g->sq != SPQR_SQ_MINMAX) { /* the new variants' values must be finite (minmax is checked as before: not) */
        size_t nb = 0;
        sec_bytes(g, d, S_STATS2, 0, &nb);
        for (size_t i = 0; i < nb / 2; i++)
            if ((p->stats2[i] & 0x7c00u) == 0x7c00u)
                return spqr_fail(err, "packed layer: %s statistic %zu of 'stats2' is not finite",
                                 spqr_statq_name(g->sq), i);
    }
    /* permutation */
    uint8_t *seen = calloc((size_t)C, 1);
    if (!seen) return spqr_fail(SPQR_ERR_NOMEM, "out of memory (packed perm check, %lld columns)", (long long)C);
    for (int64_t j = 0; j < C; j++) {
        uint32_t v = spqr_packed_idx(p->perm, d->wide, j);
        if ((int64_t)v >= C || seen[v]) {
            free(seen);
            return spqr_fail(err, "packed layer: perm[%lld] = %u is %s", (long long)j, v,
                             (int64_t)v >= C ? "out of range" : "a duplicate");
        }
        seen[v] = 1;
    }
    free(seen);

    /* outliers */
    int64_t *rp = spqr_malloc_array((size_t)R + 1, sizeof(int64_t));
    if (!rp) return spqr_fail(SPQR_ERR_NOMEM, "out of memory (outlier offsets, %lld rows)", (long long)R);
    int64_t acc = 0;
    rp[0] = 0;
    for (int64_t r = 0; r < R; r++) {
        uint32_t c = cnt_at(p->ol_count, d->ocsz, r);
        if ((int64_t)c > C || acc + (int64_t)c > n_ol) {
            free(rp);
            return spqr_fail(err, "packed layer: outlier count of row %lld (%u) exceeds %s", (long long)r, c,
                             (int64_t)c > C ? "the column count" : "the number of stored outliers");
        }
        for (int64_t k = acc; k < acc + (int64_t)c; k++) {
            uint32_t col = spqr_packed_idx(p->ol_col, d->wide, k);
            if ((int64_t)col >= C || (k > acc && col <= spqr_packed_idx(p->ol_col, d->wide, k - 1))) {
                free(rp);
                return spqr_fail(err, "packed layer: outlier %lld of row %lld has column %u (%s)", (long long)k,
                                 (long long)r, col, (int64_t)col >= C ? "out of range" : "not ascending");
            }
        }
        acc += c;
        rp[r + 1] = acc;
    }
    if (acc != n_ol) {
        free(rp);
        return spqr_fail(err, "packed layer: outlier counts sum to %lld but %lld outliers are stored",
                         (long long)acc, (long long)n_ol);
    }
    p->ol_row_ptr = rp;
    spqr_status st = spqr_packed_refresh(p);
    if (st) {
        free(rp);
        p->ol_row_ptr = NULL;
        return st;
    }
    p->max_tile_outliers = 0;
    for (int64_t r0 = 0; r0 < R; r0 += TILE) {
        const int64_t n = rp[r0 + TILE < R ? r0 + TILE : R] - rp[r0];
        if (n > p->max_tile_outliers) p->max_tile_outliers = n;
    }
    return SPQR_OK;
}

spqr_status spqr_packed_from_sections(const spqr_packed_geom *g, const spqr_packed_section *sec, int nsec,
                                      spqr_packed *out) {
    memset(out, 0, sizeof *out);
    if (!g || (!sec && nsec > 0) || nsec < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "packed layer: bad arguments");
    derived d = {0};
    spqr_status st = geom_derive(g, &d, SPQR_ERR_FORMAT);
    if (st) return st;
    const int bilevel = g->beta2 > 0;
    int found[S_COUNT] = {0};
    const void *data[S_COUNT] = {0};
    size_t bytes[S_COUNT] = {0};
    for (int i = 0; i < nsec; i++) {
        int s = -1;
        for (int k = 0; k < S_COUNT && sec[i].name; k++)
            if (strcmp(sec[i].name, k_names[k]) == 0) s = k;
        if (s < 0 || !sec_applies(s, bilevel))
            return spqr_fail(SPQR_ERR_FORMAT, "packed layer: unexpected section '%s' (beta2=%d)",
                             sec[i].name ? sec[i].name : "(null)", (int)g->beta2);
        if (found[s]) return spqr_fail(SPQR_ERR_FORMAT, "packed layer: duplicate section '%s'", k_names[s]);
        found[s] = 1;
        data[s] = sec[i].data;
        bytes[s] = sec[i].bytes;
        if (bytes[s] > 0 && !data[s])
            return spqr_fail(SPQR_ERR_FORMAT, "packed layer: section '%s' has no data", k_names[s]);
        if (data[s] && ((uintptr_t)data[s] % sec_align(&d, s)) != 0)
            return spqr_fail(SPQR_ERR_FORMAT, "packed layer: section '%s' is not aligned to %zu bytes", k_names[s],
                             sec_align(&d, s));
    }
    for (int s = 0; s < S_COUNT; s++)
        if (sec_applies(s, bilevel) && !found[s])
            return spqr_fail(SPQR_ERR_FORMAT, "packed layer: missing section '%s'", k_names[s]);
    if (bytes[S_OL_COL] % d.isz != 0)
        return spqr_fail(SPQR_ERR_FORMAT, "packed layer: section 'ol_col' has %zu bytes, not a multiple of %zu",
                         bytes[S_OL_COL], d.isz);
    int64_t n_ol = (int64_t)(bytes[S_OL_COL] / d.isz);
    for (int s = 0; s < S_COUNT; s++) {
        if (!sec_applies(s, bilevel)) continue;
        size_t want;
        if (!sec_bytes(g, &d, s, n_ol, &want))
            return spqr_fail(SPQR_ERR_FORMAT, "packed layer: size of section '%s' overflows", k_names[s]);
        if (want != bytes[s])
            return spqr_fail(SPQR_ERR_FORMAT,
                             "packed layer: section '%s' has %zu bytes, expected %zu (%dx%d wbits=%d beta1=%d "
                             "beta2=%d, %lld outliers)",
                             k_names[s], bytes[s], want, (int)g->rows, (int)g->cols, (int)g->wbits, (int)g->beta1,
                             (int)g->beta2, (long long)n_ol);
    }
    st = init_checked(out, g, &d, data, n_ol, SPQR_ERR_FORMAT);
    if (st) memset(out, 0, sizeof *out);
    return st;
}

void spqr_packed_geometry(const spqr_packed *p, spqr_packed_geom *g) {
    g->rows = p->rows;
    g->cols = p->cols;
    g->wbits = p->wbits;
    g->beta1 = p->beta1;
    g->beta2 = p->beta2;
    g->sbits = p->sbits;
    g->zbits = p->zbits;
    g->ocw = p->ocsz;
    g->sq = p->sq;
}

int spqr_packed_sections(const spqr_packed *p, spqr_packed_section out[], int max) {
    spqr_packed_geom g;
    spqr_packed_geometry(p, &g);
    derived d = {0};
    if (geom_derive(&g, &d, SPQR_ERR_INTERNAL)) return -1;
    const void *data[S_COUNT] = {p->codes, p->stat_codes, p->stats2, p->stats,
                                 p->perm,  p->ol_count,   p->ol_col, p->ol_val};
    int n = 0;
    for (int s = 0; s < S_COUNT; s++) {
        if (!sec_applies(s, p->beta2 > 0)) continue;
        if (n >= max) return -1;
        size_t b = 0;
        sec_bytes(&g, &d, s, p->n_outliers, &b);
        out[n].name = k_names[s];
        out[n].data = b ? data[s] : NULL;
        out[n].bytes = b;
        n++;
    }
    return n;
}

size_t spqr_packed_bytes(const spqr_packed *p) {
    spqr_packed_section s[SPQR_PACKED_MAX_SECTIONS];
    int n = spqr_packed_sections(p, s, SPQR_PACKED_MAX_SECTIONS);
    size_t t = 0;
    for (int i = 0; i < n; i++) t += s[i].bytes;
    return t;
}

void spqr_packed_free(spqr_packed *p) {
    if (!p) return;
    for (int i = 0; i < SPQR_PACKED_MAX_SECTIONS; i++) free(p->owned[i]);
    free(p->ol_row_ptr);
    free(p->kbuf);
    memset(p, 0, sizeof *p);
}

/* ---- packing ------------------------------------------------------------ */

/* OR `v` (nbits wide, already < 2^nbits) into the lane-interleaved stream of
 * lane `lane` at bit position `pos`. base points at the tile's word 0. */
static inline void put_bits(uint32_t *base, int lane, int64_t pos, uint32_t v, int nbits) {
    int64_t w = pos >> 5;
    int s = (int)(pos & 31);
    base[w * TILE + lane] |= v << s;
    if (s + nbits > 32) base[(w + 1) * TILE + lane] |= v >> (32 - s);
}


spqr_status spqr_pack(const spqr_qlayer *q, spqr_packed *out) {
    memset(out, 0, sizeof *out);
    if (!q) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: NULL layer");
    spqr_packed_geom g = {q->rows, q->cols, q->wbits, q->beta1, q->beta2, q->sbits, q->zbits, 0, q->sq};
    derived d = {0};
    spqr_status st = geom_derive(&g, &d, SPQR_ERR_INVALID_ARG);
    if (st) return st;
    /* outlier counts in one byte when every row has at most 255 */
    uint32_t maxc = 0;
    if (q->row_ptr)
        for (int64_t r = 0; r < g.rows; r++)
            if (q->row_ptr[r + 1] >= q->row_ptr[r] && q->row_ptr[r + 1] - q->row_ptr[r] > maxc)
                maxc = q->row_ptr[r + 1] - q->row_ptr[r];
    g.ocw = maxc <= 255 ? 1 : (int32_t)d.isz;
    d.ocsz = (size_t)g.ocw;
    const int bilevel = g.beta2 > 0;
    const int64_t R = g.rows, C = g.cols, NG = d.NG, NRB = d.NRB, T = d.T;
    if (q->ngroups != NG || q->nrb != NRB)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: ngroups/nrb %d/%d do not match the geometry (%lld/%lld)",
                         (int)q->ngroups, (int)q->nrb, (long long)NG, (long long)NRB);
    if (!q->perm || !q->codes || (bilevel && (!q->scale_code || !q->zero_code || !q->s2_scale || !q->s2_zero ||
                                              !q->z2_scale || !q->z2_zero)) ||
        (!bilevel && (!q->scale_f16 || !q->zero_f16)) || !q->row_ptr)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: layer arrays missing");
    if (g.sq == SPQR_SQ_KMEANS && (!q->cb_scale || !q->cb_zero))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: k-means codebooks missing");
    if (g.sq == SPQR_SQ_UNIFORM) {
        const uint16_t ms = spqr_f32_to_f16(spqr_sq_mid(g.sbits)), mz = spqr_f32_to_f16(spqr_sq_mid(g.zbits));
        for (int64_t i = 0; i < NG * NRB; i++)
            if (q->s2_zero[i] != ms || q->z2_zero[i] != mz)
                return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: uniform statistics with a zero point other "
                                 "than the mid-point (%lld)", (long long)i);
    }
    const int64_t n_ol = q->n_outliers;
    if (n_ol < 0 || q->row_ptr[0] != 0 || (int64_t)q->row_ptr[R] != n_ol || (n_ol > 0 && (!q->ol_col || !q->ol_val)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: inconsistent outlier arrays (%lld outliers)",
                         (long long)n_ol);
    for (int64_t r = 0; r < R; r++) {
        if (q->row_ptr[r + 1] < q->row_ptr[r] || q->row_ptr[r + 1] - q->row_ptr[r] > (uint32_t)C)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: bad outlier row offsets at row %lld", (long long)r);
    }
    const uint32_t wmax = (1u << g.wbits) - 1u;
    for (int64_t i = 0; i < R * C; i++)
        if (q->codes[i] > wmax)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: code %u at %lld exceeds %d bits", q->codes[i],
                             (long long)i, (int)g.wbits);
    if (bilevel) {
        for (int64_t i = 0; i < NG * R; i++)
            if (q->scale_code[i] >> g.sbits || q->zero_code[i] >> g.zbits)
                return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: statistic code at %lld out of range",
                                 (long long)i);
    }
    for (int64_t j = 0; j < C; j++)
        if (q->perm[j] < 0 || q->perm[j] >= C)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: perm[%lld] = %d out of range", (long long)j,
                             (int)q->perm[j]);

    size_t bytes[S_COUNT] = {0};
    void *buf[S_COUNT] = {0};
    for (int s = 0; s < S_COUNT; s++) {
        if (!sec_applies(s, bilevel)) continue;
        if (!sec_bytes(&g, &d, s, n_ol, &bytes[s]))
            return spqr_fail(SPQR_ERR_NOMEM, "spqr_pack: size of section '%s' overflows", k_names[s]);
        if (bytes[s] == 0) continue;
        buf[s] = spqr_aligned_alloc(bytes[s]);
        if (!buf[s]) {
            for (int k = 0; k < s; k++) free(buf[k]);
            return spqr_fail(SPQR_ERR_NOMEM, "spqr_pack: out of memory (%zu bytes)", bytes[s]);
        }
#ifdef MADV_HUGEPAGE
        /* large sections are streamed by the kernels: ask for huge pages (fewer
         * TLB misses, no prefetch stop at every 4 KiB); advisory only */
        if (bytes[s] >= ((size_t)4 << 20)) {
            uintptr_t a = ((uintptr_t)buf[s] + 4095) & ~(uintptr_t)4095;
            uintptr_t e = ((uintptr_t)buf[s] + bytes[s]) & ~(uintptr_t)4095;
            if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
        }
#endif
        memset(buf[s], 0, bytes[s]);
    }

    const int B = g.wbits, SZ = g.sbits + g.zbits;
    uint32_t *codes = buf[S_CODES];
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
    for (int64_t t = 0; t < T; t++) {
        uint32_t *base = codes + t * d.CW * TILE;
        for (int l = 0; l < TILE && t * TILE + l < R; l++) {
            const uint8_t *row = q->codes + (t * TILE + l) * C;
            for (int64_t j = 0; j < C; j++) put_bits(base, l, j * B, row[j], B);
        }
    }
    if (bilevel) {
        uint32_t *sc = buf[S_STAT_CODES];
        for (int64_t t = 0; t < T; t++)
            for (int l = 0; l < TILE && t * TILE + l < R; l++) {
                int64_t r = t * TILE + l;
                for (int64_t gi = 0; gi < NG; gi++) {
                    uint32_t v = (uint32_t)q->scale_code[gi * R + r] | (uint32_t)q->zero_code[gi * R + r] << g.sbits;
                    put_bits(sc + t * d.SW * TILE, l, gi * SZ, v, SZ);
                }
            }
        uint16_t *s2 = buf[S_STATS2];
        if (g.sq == SPQR_SQ_KMEANS) {
            memcpy(s2, q->cb_scale, sizeof(uint16_t) << g.sbits);
            memcpy(s2 + ((size_t)1 << g.sbits), q->cb_zero, sizeof(uint16_t) << g.zbits);
        } else if (g.sq == SPQR_SQ_UNIFORM) {
            for (int64_t rb = 0; rb < NRB; rb++)
                for (int64_t gi = 0; gi < NG; gi++) {
                    uint16_t *e = s2 + (rb * NG + gi) * 2;
                    e[0] = q->s2_scale[gi * NRB + rb];
                    e[1] = q->z2_scale[gi * NRB + rb];
                }
        } else
            for (int64_t rb = 0; rb < NRB; rb++)
                for (int64_t gi = 0; gi < NG; gi++) {
                    uint16_t *e = s2 + (rb * NG + gi) * 4;
                    e[0] = q->s2_scale[gi * NRB + rb];
                    e[1] = q->s2_zero[gi * NRB + rb];
                    e[2] = q->z2_scale[gi * NRB + rb];
                    e[3] = q->z2_zero[gi * NRB + rb];
                }
    } else {
        uint16_t *sf = buf[S_STATS];
        for (int64_t t = 0; t < T; t++)
            for (int64_t gi = 0; gi < NG; gi++)
                for (int l = 0; l < TILE && t * TILE + l < R; l++) {
                    sf[((t * NG + gi) * 2 + 0) * TILE + l] = q->scale_f16[gi * R + t * TILE + l];
                    sf[((t * NG + gi) * 2 + 1) * TILE + l] = q->zero_f16[gi * R + t * TILE + l];
                }
    }
    for (int64_t j = 0; j < C; j++) {
        if (d.wide) ((uint32_t *)buf[S_PERM])[j] = (uint32_t)q->perm[j];
        else ((uint16_t *)buf[S_PERM])[j] = (uint16_t)q->perm[j];
    }
    for (int64_t r = 0; r < R; r++) {
        uint32_t c = q->row_ptr[r + 1] - q->row_ptr[r];
        if (d.ocsz == 4) ((uint32_t *)buf[S_OL_COUNT])[r] = c;
        else if (d.ocsz == 2) ((uint16_t *)buf[S_OL_COUNT])[r] = (uint16_t)c;
        else ((uint8_t *)buf[S_OL_COUNT])[r] = (uint8_t)c;
    }
    for (int64_t k = 0; k < n_ol; k++) {
        if (d.wide) ((uint32_t *)buf[S_OL_COL])[k] = q->ol_col[k];
        else ((uint16_t *)buf[S_OL_COL])[k] = (uint16_t)(q->ol_col[k] > 65535u ? 65535u : q->ol_col[k]);
        ((uint16_t *)buf[S_OL_VAL])[k] = q->ol_val[k];
    }
    for (int64_t k = 0; k < n_ol; k++)
        if (q->ol_col[k] >= (uint32_t)C) {
            for (int s = 0; s < S_COUNT; s++) free(buf[s]);
            return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_pack: outlier %lld has column %u >= %lld", (long long)k,
                             q->ol_col[k], (long long)C);
        }

    const void *data[S_COUNT];
    for (int s = 0; s < S_COUNT; s++) data[s] = buf[s];
    st = init_checked(out, &g, &d, data, n_ol, SPQR_ERR_INVALID_ARG);
    if (st) {
        for (int s = 0; s < S_COUNT; s++) free(buf[s]);
        memset(out, 0, sizeof *out);
        return st;
    }
    for (int s = 0, n = 0; s < S_COUNT; s++)
        if (buf[s]) out->owned[n++] = buf[s];
    return SPQR_OK;
}

/* ---- unpacking ---------------------------------------------------------- */

spqr_status spqr_unpack(const spqr_packed *p, spqr_qlayer *q) {
    memset(q, 0, sizeof *q);
    const int64_t R = p->rows, C = p->cols, NG = p->ngroups, NRB = p->nrb, n_ol = p->n_outliers;
    const int bilevel = p->beta2 > 0;
    q->rows = p->rows;
    q->cols = p->cols;
    q->wbits = p->wbits;
    q->beta1 = p->beta1;
    q->beta2 = p->beta2;
    q->sbits = p->sbits;
    q->zbits = p->zbits;
    q->sq = p->sq;
    q->ngroups = p->ngroups;
    q->nrb = p->nrb;
    q->n_outliers = n_ol;
    bool ok = true;
    ok &= (q->perm = spqr_malloc_array((size_t)C, sizeof(int32_t))) != NULL;
    ok &= (q->codes = spqr_malloc_array((size_t)R, (size_t)C)) != NULL;
    ok &= (q->row_ptr = spqr_malloc_array((size_t)R + 1, sizeof(uint32_t))) != NULL;
    if (bilevel) {
        ok &= (q->scale_code = spqr_malloc_array((size_t)NG, (size_t)R)) != NULL;
        ok &= (q->zero_code = spqr_malloc_array((size_t)NG, (size_t)R)) != NULL;
        ok &= (q->s2_scale = spqr_malloc_array((size_t)(NG * NRB), 2)) != NULL;
        ok &= (q->s2_zero = spqr_malloc_array((size_t)(NG * NRB), 2)) != NULL;
        ok &= (q->z2_scale = spqr_malloc_array((size_t)(NG * NRB), 2)) != NULL;
        ok &= (q->z2_zero = spqr_malloc_array((size_t)(NG * NRB), 2)) != NULL;
        if (p->sq == SPQR_SQ_KMEANS) {
            ok &= (q->cb_scale = spqr_malloc_array((size_t)1 << p->sbits, 2)) != NULL;
            ok &= (q->cb_zero = spqr_malloc_array((size_t)1 << p->zbits, 2)) != NULL;
        }
    } else {
        ok &= (q->scale_f16 = spqr_malloc_array((size_t)NG, (size_t)R * 2)) != NULL;
        ok &= (q->zero_f16 = spqr_malloc_array((size_t)NG, (size_t)R * 2)) != NULL;
    }
    if (n_ol > 0) {
        ok &= (q->ol_col = spqr_malloc_array((size_t)n_ol, sizeof(uint32_t))) != NULL;
        ok &= (q->ol_val = spqr_malloc_array((size_t)n_ol, sizeof(uint16_t))) != NULL;
    }
    if (!ok || n_ol > (int64_t)UINT32_MAX) {
        spqr_qlayer_free(q);
        return spqr_fail(SPQR_ERR_NOMEM, "spqr_unpack: out of memory (%lldx%lld layer)", (long long)R, (long long)C);
    }
    const int B = p->wbits, SZ = p->sbits + p->zbits;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
    for (int64_t r = 0; r < R; r++) {
        const uint32_t *base = p->codes + (r / TILE) * p->code_words * TILE;
        for (int64_t j = 0; j < C; j++) q->codes[r * C + j] = (uint8_t)spqr_packed_get_bits(base, (int)(r % TILE), j * B, B);
    }
    if (bilevel) {
        for (int64_t r = 0; r < R; r++) {
            const uint32_t *base = p->stat_codes + (r / TILE) * p->stat_words * TILE;
            for (int64_t gi = 0; gi < NG; gi++) {
                uint32_t v = spqr_packed_get_bits(base, (int)(r % TILE), gi * SZ, SZ);
                q->scale_code[gi * R + r] = (uint8_t)(v & ((1u << p->sbits) - 1u));
                q->zero_code[gi * R + r] = (uint8_t)(v >> p->sbits);
            }
        }
        const uint16_t ms = spqr_f32_to_f16(spqr_sq_mid(p->sbits)), mz = spqr_f32_to_f16(spqr_sq_mid(p->zbits));
        for (int64_t rb = 0; rb < NRB; rb++)
            for (int64_t gi = 0; gi < NG; gi++) {
                const int64_t k = gi * NRB + rb;
                if (p->sq == SPQR_SQ_KMEANS) { /* no per-block values */
                    q->s2_scale[k] = q->s2_zero[k] = q->z2_scale[k] = q->z2_zero[k] = 0;
                } else if (p->sq == SPQR_SQ_UNIFORM) {
                    const uint16_t *e = p->stats2 + (rb * NG + gi) * 2;
                    q->s2_scale[k] = e[0];
                    q->s2_zero[k] = ms;
                    q->z2_scale[k] = e[1];
                    q->z2_zero[k] = mz;
                } else {
                    const uint16_t *e = p->stats2 + (rb * NG + gi) * 4;
                    q->s2_scale[k] = e[0];
                    q->s2_zero[k] = e[1];
                    q->z2_scale[k] = e[2];
                    q->z2_zero[k] = e[3];
                }
            }
        if (p->sq == SPQR_SQ_KMEANS) {
            memcpy(q->cb_scale, p->stats2, sizeof(uint16_t) << p->sbits);
            memcpy(q->cb_zero, p->stats2 + ((size_t)1 << p->sbits), sizeof(uint16_t) << p->zbits);
        }
    } else {
        for (int64_t r = 0; r < R; r++)
            for (int64_t gi = 0; gi < NG; gi++) {
                q->scale_f16[gi * R + r] = p->stats[(((r / TILE) * NG + gi) * 2 + 0) * TILE + r % TILE];
                q->zero_f16[gi * R + r] = p->stats[(((r / TILE) * NG + gi) * 2 + 1) * TILE + r % TILE];
            }
    }
    for (int64_t j = 0; j < C; j++) q->perm[j] = (int32_t)spqr_packed_idx(p->perm, p->wide, j);
    for (int64_t r = 0; r <= R; r++) q->row_ptr[r] = (uint32_t)p->ol_row_ptr[r];
    for (int64_t k = 0; k < n_ol; k++) {
        q->ol_col[k] = spqr_packed_idx(p->ol_col, p->wide, k);
        q->ol_val[k] = p->ol_val[k];
    }
    return SPQR_OK;
}

/* ---- the kernels' derived statistics ------------------------------------ */

spqr_status spqr_packed_refresh(spqr_packed *p) {
    free(p->kbuf);
    p->kbuf = NULL;
    p->kbeta2 = p->beta2;
    p->kstats2 = p->stats2;
    p->kstats = p->stats;
    if (p->beta2 == 0 || p->sq == SPQR_SQ_MINMAX) return SPQR_OK;
    const int64_t NG = p->ngroups, NRB = p->nrb, T = p->ntiles, R = p->rows;
    if (p->sq == SPQR_SQ_UNIFORM) { /* minmax-shaped, zeros at the mid-points */
        uint16_t *k = spqr_aligned_alloc((size_t)(NRB * NG * 4) * sizeof(uint16_t) + 64);
        if (!k) return spqr_fail(SPQR_ERR_NOMEM, "packed layer: out of memory (uniform statistics)");
        const uint16_t ms = spqr_f32_to_f16(spqr_sq_mid(p->sbits)), mz = spqr_f32_to_f16(spqr_sq_mid(p->zbits));
        for (int64_t i = 0; i < NRB * NG; i++) {
            k[4 * i + 0] = p->stats2[2 * i + 0];
            k[4 * i + 1] = ms;
            k[4 * i + 2] = p->stats2[2 * i + 1];
            k[4 * i + 3] = mz;
        }
        p->kbuf = k;
        p->kstats2 = k;
        return SPQR_OK;
    }
    /* kmeans: the plain fp16 table of the centroids each (row, group) selects */
    size_t n;
    if (!spqr_mul_size((size_t)(T * NG) * 2 * TILE, sizeof(uint16_t), &n))
        return spqr_fail(SPQR_ERR_NOMEM, "packed layer: k-means statistics table overflows");
    uint16_t *k = spqr_aligned_alloc(n + 64);
    if (!k) return spqr_fail(SPQR_ERR_NOMEM, "packed layer: out of memory (%zu bytes, k-means statistics)", n);
    memset(k, 0, n);
    const int SZ = p->sbits + p->zbits;
    const uint16_t *cz = p->stats2 + ((size_t)1 << p->sbits);
    for (int64_t r = 0; r < R; r++) {
        const uint32_t *base = p->stat_codes + (r / TILE) * p->stat_words * TILE;
        for (int64_t g = 0; g < NG; g++) {
            const uint32_t v = spqr_packed_get_bits(base, (int)(r % TILE), g * SZ, SZ);
            uint16_t *e = k + (((r / TILE) * NG + g) * 2) * TILE;
            e[r % TILE] = p->stats2[v & ((1u << p->sbits) - 1u)];
            e[TILE + r % TILE] = cz[v >> p->sbits];
        }
    }
    p->kbuf = k;
    p->kstats = k;
    p->kbeta2 = 0;
    return SPQR_OK;
}
