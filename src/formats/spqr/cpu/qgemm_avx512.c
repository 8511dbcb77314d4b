/* qgemm_avx512.c - AVX-512 tile kernel for packed SpQR layers.
 *
 *
 * A 16-row tile is one zmm. Decoding column k of a 32-column block (B words
 * per row, see packed.h) is: word (k*B)/32 shifted right by
 * (k*B)%32 (OR-ed with the next word shifted left when the code straddles),
 * then turned into floats by a permute from a table 0..15 of period 2^B
 * (B <= 4: the permute ignores the higher index bits), a two-table permute
 * (B = 5) or and + convert (B >= 6). B is a compile-time constant of each
 * instance, so every shift is an immediate.
 *
 * Fused path (beta1 = 16 or a multiple of 32, beta2 = 0 or a multiple of 16;
 * every whole group in whole blocks): for passes of 8/4/2/1 tokens, each
 * decoded column goes straight into the FMAs dot_t += code * x_t[col]; at a
 * group end y_t += scale * (dot_t - zero * sum_group x_t) with the tile's
 * scale/zero vectors precomputed once per tile. One token costs a shift, a
 * permute and an FMA per 16 weights, so decode runs near memory bandwidth.
 *
 * General path (other geometries and the remaining columns): per chunk of
 * SPQR_QG_CH columns, decode into a buffer, dequantize in place
 * (w = scale * (code - zero)), then y_t += w * x_t for blocks of up to 16
 * tokens (one weight load feeds 16 FMAs).
 *
 * Outliers are added at the end of each tile, row by row.
 */
#include <immintrin.h>

#include "qgemm_internal.h"

#define AI static inline __attribute__((always_inline))

typedef struct kctx {
    const spqr_packed *W;
    const spqr_qg_job *job;
    int64_t tile;
    float *cbuf;  /* [SPQR_QG_CH][16] decoded codes of the current chunk    */
    float *sbuf;  /* [groups of chunk][2][16] scale, zero                   */
    float *state; /* [nt][16]: y accumulators of the tile's rows            */
    float *s2f;   /* [ngroups][4] float stats2 of the tile's row block      */
    float *tstats; /* [ngroups][2][16] scale, zero of the tile (fused path) */
    float *olbuf;  /* [max_tile_outliers] outlier products                  */
    const char **pf; /* lines of the next tile's statistics and outliers ...    */
    int64_t npf;     /* ... to prefetch while this tile streams its codes      */
} kctx;

/* ---- code decoding ----------------------------------------------------------- */

AI __m512 code_to_f32(__m512i v, const int B, __m512 tlo, __m512 thi, __m512i mask) {
    if (B <= 4) return _mm512_permutexvar_ps(v, tlo);
    if (B == 5) return _mm512_permutex2var_ps(tlo, v, thi);
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, mask));
}

/* The permute tables code_to_f32 uses: codes 0..15 (B <= 4, indices taken
 * mod 2^B) in tlo, 16..31 in thi (B = 5). */
AI void code_tables(const int B, __m512 *tlo, __m512 *thi) {
    *thi = _mm512_setzero_ps();
    if (B <= 4) {
        const int m = (1 << B) - 1;
        *tlo = _mm512_setr_ps(0 & m, 1 & m, 2 & m, 3 & m, 4 & m, 5 & m, 6 & m, 7 & m, 8 & m, 9 & m, 10 & m, 11 & m,
                              12 & m, 13 & m, 14 & m, 15 & m);
    } else {
        *tlo = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        *thi = _mm512_setr_ps(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    }
}

/* Decode one block of 32 columns (B words of 16 lanes at wp) into out[32][16]. */
AI void dec_block(const uint32_t *wp, float *out, const int B) {
    __m512 tlo, thi;
    code_tables(B, &tlo, &thi);
    const __m512i mask = _mm512_set1_epi32((1 << B) - 1);
    __m512i w[9];
#pragma GCC unroll 9
    for (int i = 0; i < 9; i++) w[i] = i < B ? _mm512_loadu_si512(wp + 16 * i) : _mm512_setzero_si512();
#pragma GCC unroll 32
    for (int k = 0; k < 32; k++) {
        const int p = k * B, wi = p >> 5, s = p & 31;
        __m512i v = s ? _mm512_srli_epi32(w[wi], s) : w[wi];
        if (s + B > 32) v = _mm512_or_si512(v, _mm512_slli_epi32(w[wi + 1], 32 - s));
        _mm512_store_ps(out + 16 * k, code_to_f32(v, B, tlo, thi, mask));
    }
}

static void dec_chunk(const kctx *c, int64_t c0, int64_t c1) { spqr_qg_dec_chunk(c->W, c->tile, c0, c1, c->cbuf, dec_block); }

/* ---- statistics ------------------------------------------------------------------ */

static void dec_stats(const kctx *c, int64_t g0, int64_t g1) {
    const spqr_packed *W = c->W;
    const int64_t NG = W->ngroups, t = c->tile;
    if (W->kbeta2 == 0) {
        for (int64_t g = g0; g <= g1; g++) {
            const uint16_t *e = W->kstats + ((t * NG + g) * 2) * 16;
            float *o = c->sbuf + (g - g0) * 32;
            _mm512_store_ps(o, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)e)));
            _mm512_store_ps(o + 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(e + 16))));
        }
        return;
    }
    const int sb = W->sbits, SZ = W->sbits + W->zbits;
    const uint32_t *sw = W->stat_codes + t * W->stat_words * 16;
    const __m512i smask = _mm512_set1_epi32((1 << W->sbits) - 1), zmask = _mm512_set1_epi32((1 << W->zbits) - 1);
    const __m128i sbc = _mm_cvtsi32_si128(sb);
    const bool tile_rb = W->kbeta2 % 16 == 0; /* one row block per tile */
    const int64_t rb_t = t * 16 / W->kbeta2;
    for (int64_t g = g0; g <= g1; g++) {
        const int64_t p = g * SZ, w = p >> 5;
        const int s = (int)(p & 31);
        __m512i v = _mm512_srl_epi32(_mm512_loadu_si512(sw + w * 16), _mm_cvtsi32_si128(s));
        if (s + SZ > 32)
            v = _mm512_or_si512(v, _mm512_sll_epi32(_mm512_loadu_si512(sw + (w + 1) * 16), _mm_cvtsi32_si128(32 - s)));
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_and_si512(v, smask));
        const __m512 zc = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srl_epi32(v, sbc), zmask));
        __m512 s2s, s2z, z2s, z2z;
        if (tile_rb) {
            const uint16_t *e = W->kstats2 + (rb_t * NG + g) * 4;
            const __m128 q = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)e));
            s2s = _mm512_broadcastss_ps(q);
            s2z = _mm512_broadcastss_ps(_mm_shuffle_ps(q, q, 0x55));
            z2s = _mm512_broadcastss_ps(_mm_shuffle_ps(q, q, 0xAA));
            z2z = _mm512_broadcastss_ps(_mm_shuffle_ps(q, q, 0xFF));
        } else {
            float a[4][16] __attribute__((aligned(64)));
            for (int l = 0; l < 16; l++) {
                int64_t r = t * 16 + l;
                if (r >= W->rows) r = W->rows - 1;
                const uint16_t *e = W->kstats2 + ((r / W->kbeta2) * NG + g) * 4;
                const __m128 q = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)e));
                float f[4];
                _mm_storeu_ps(f, q);
                for (int i = 0; i < 4; i++) a[i][l] = f[i];
            }
            s2s = _mm512_load_ps(a[0]);
            s2z = _mm512_load_ps(a[1]);
            z2s = _mm512_load_ps(a[2]);
            z2z = _mm512_load_ps(a[3]);
        }
        float *o = c->sbuf + (g - g0) * 32;
        _mm512_store_ps(o, _mm512_mul_ps(s2s, _mm512_sub_ps(sc, s2z)));
        _mm512_store_ps(o + 16, _mm512_mul_ps(z2s, _mm512_sub_ps(zc, z2z)));
    }
}

/* ---- token kernel -------------------------------------------------------------- */

/* Dequantize the decoded chunk in place: w = scale * (code - zero), the
 * qlayer.h formula without the outliers (added separately). */
static void dequant_chunk(const kctx *c, int64_t c0, int64_t c1, int64_t g0) {
    const int64_t C = c->W->cols, beta1 = c->W->beta1;
    int64_t g = c0 / beta1;
    int64_t gend = (g + 1) * beta1 < C ? (g + 1) * beta1 : C;
    for (int64_t j = c0; j < c1;) {
        const int64_t e = gend < c1 ? gend : c1;
        const __m512 sc = _mm512_load_ps(c->sbuf + (g - g0) * 32), zr = _mm512_load_ps(c->sbuf + (g - g0) * 32 + 16);
        for (float *p = c->cbuf + (j - c0) * 16, *pe = c->cbuf + (e - c0) * 16; p < pe; p += 16)
            _mm512_store_ps(p, _mm512_mul_ps(sc, _mm512_sub_ps(_mm512_load_ps(p), zr)));
        if (e == gend) {
            g++;
            gend = gend + beta1 < C ? gend + beta1 : C;
        }
        j = e;
    }
}

/* y_t += sum over the chunk's columns of w_col * x_t[col] for tokens
 * [tt, tt + NT) (NT compile-time, 1..16): one weight load feeds NT FMAs. */
AI void gemm_tokens(const kctx *c, int64_t c0, int64_t c1, int tt, const int NT) {
    enum { MAXT = 16 };
    const int P = NT >= 4 ? 1 : NT == 1 ? 4 : 2; /* independent chains per token */
    __m512 acc[MAXT][4];
#pragma GCC unroll 16
    for (int t = 0; t < NT; t++) {
        acc[t][0] = _mm512_load_ps(c->state + (tt + t) * 16);
#pragma GCC unroll 4
        for (int q = 1; q < P; q++) acc[t][q] = _mm512_setzero_ps();
    }
    const int64_t n = c1 - c0, nt = c->job->nt;
    const float *xc = c->job->xp + c0 * nt + tt; /* x of column c0 + k, token tt + t: xc[k * nt + t] */
    const float *cb = c->cbuf;
    int64_t k = 0;
    for (; k + P <= n; k += P) {
#pragma GCC unroll 4
        for (int q = 0; q < P; q++) {
            const __m512 w = _mm512_load_ps(cb + (k + q) * 16);
            const float *xk = xc + (k + q) * nt;
#pragma GCC unroll 16
            for (int t = 0; t < NT; t++) acc[t][q] = _mm512_fmadd_ps(w, _mm512_set1_ps(xk[t]), acc[t][q]);
        }
    }
    for (; k < n; k++) {
        const __m512 w = _mm512_load_ps(cb + k * 16);
        const float *xk = xc + k * nt;
#pragma GCC unroll 16
        for (int t = 0; t < NT; t++) acc[t][0] = _mm512_fmadd_ps(w, _mm512_set1_ps(xk[t]), acc[t][0]);
    }
#pragma GCC unroll 16
    for (int t = 0; t < NT; t++) {
        __m512 v = acc[t][0];
        if (P >= 2) v = _mm512_add_ps(v, acc[t][1]);
        if (P == 4) v = _mm512_add_ps(v, _mm512_add_ps(acc[t][2], acc[t][3]));
        _mm512_store_ps(c->state + (tt + t) * 16, v);
    }
}

static void run_chunk(const kctx *c, int64_t c0, int64_t c1) {
    const int nt = c->job->nt;
    for (int tt = 0; tt < nt; tt += 16) {
        switch (nt - tt < 16 ? nt - tt : 16) {
        case 1: gemm_tokens(c, c0, c1, tt, 1); break;
        case 2: gemm_tokens(c, c0, c1, tt, 2); break;
        case 3: gemm_tokens(c, c0, c1, tt, 3); break;
        case 4: gemm_tokens(c, c0, c1, tt, 4); break;
        case 5: gemm_tokens(c, c0, c1, tt, 5); break;
        case 6: gemm_tokens(c, c0, c1, tt, 6); break;
        case 7: gemm_tokens(c, c0, c1, tt, 7); break;
        case 8: gemm_tokens(c, c0, c1, tt, 8); break;
        case 9: gemm_tokens(c, c0, c1, tt, 9); break;
        case 10: gemm_tokens(c, c0, c1, tt, 10); break;
        case 11: gemm_tokens(c, c0, c1, tt, 11); break;
        case 12: gemm_tokens(c, c0, c1, tt, 12); break;
        case 13: gemm_tokens(c, c0, c1, tt, 13); break;
        case 14: gemm_tokens(c, c0, c1, tt, 14); break;
        case 15: gemm_tokens(c, c0, c1, tt, 15); break;
        default: gemm_tokens(c, c0, c1, tt, 16); break;
        }
    }
}

/* ---- fused single-token path ------------------------------------------------------ */

/* Decoded statistics of group g for the 16 rows of the tile (s2f filled
 * when bilevel with beta2 % 16 == 0). */
AI void group_stats(const kctx *c, const uint32_t *sw, int64_t g, __m512 tab, __m512 *scale, __m512 *zero) {
    const spqr_packed *W = c->W;
    if (W->kbeta2 == 0) {
        const uint16_t *e = W->kstats + ((c->tile * W->ngroups + g) * 2) * 16;
        *scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)e));
        *zero = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(e + 16)));
        return;
    }
    const int SZ = W->sbits + W->zbits;
    const int64_t p = g * SZ, w = p >> 5;
    const int s = (int)(p & 31);
    __m512i v = _mm512_srl_epi32(_mm512_loadu_si512(sw + w * 16), _mm_cvtsi32_si128(s));
    if (s + SZ > 32)
        v = _mm512_or_si512(v, _mm512_sll_epi32(_mm512_loadu_si512(sw + (w + 1) * 16), _mm_cvtsi32_si128(32 - s)));
    const __m512i vz = _mm512_srl_epi32(v, _mm_cvtsi32_si128(W->sbits));
    __m512 sc, zc;
    /* small codes: a permute from the table 0..15 (the high index bits are
     * masked by a table of period 2^bits); else and + convert */
    if (W->sbits <= 4 && W->sbits == W->zbits) {
        sc = _mm512_permutexvar_ps(v, tab);
        zc = _mm512_permutexvar_ps(vz, tab);
    } else {
        sc = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32((1 << W->sbits) - 1)));
        zc = _mm512_cvtepi32_ps(_mm512_and_si512(vz, _mm512_set1_epi32((1 << W->zbits) - 1)));
    }
    const float *f = c->s2f + g * 4;
    /* s2f holds (s2_scale, s2_scale * s2_zero, z2_scale, z2_scale * z2_zero) */
    *scale = _mm512_fmsub_ps(sc, _mm512_set1_ps(f[0]), _mm512_set1_ps(f[1]));
    *zero = _mm512_fmsub_ps(zc, _mm512_set1_ps(f[2]), _mm512_set1_ps(f[3]));
}

/* Finish group g for NT tokens: y_t += scale * (dot_t - zero * sum_g x_t),
 * with the tile's statistics precomputed by tile_stats. */
AI void finish_group(const kctx *c, int64_t g, int tt, const int NT, const int P, __m512 *y, __m512 (*d)[2]) {
    const __m512 sc = _mm512_load_ps(c->tstats + g * 32), zr = _mm512_load_ps(c->tstats + g * 32 + 16);
    const int64_t NG = c->W->ngroups;
    const float *xs = c->job->xs + (size_t)tt * (size_t)NG + g;
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
        const __m512 dt = P == 2 ? _mm512_add_ps(d[t][0], d[t][1]) : d[t][0];
        y[t] = _mm512_fmadd_ps(sc, _mm512_fnmadd_ps(zr, _mm512_set1_ps(xs[t * NG]), dt), y[t]);
        d[t][0] = d[t][1] = _mm512_setzero_ps();
    }
}

/* scale and zero of every group for the tile's 16 rows: tstats[g][2][16]. */
static void tile_stats(const kctx *c) {
    const spqr_packed *W = c->W;
    const uint32_t *sw = W->kbeta2 > 0 ? W->stat_codes + c->tile * W->stat_words * 16 : NULL;
    const int m = W->sbits >= 1 && W->sbits <= 4 ? (1 << W->sbits) - 1 : 15;
    const __m512 stab = _mm512_setr_ps(0 & m, 1 & m, 2 & m, 3 & m, 4 & m, 5 & m, 6 & m, 7 & m, 8 & m, 9 & m, 10 & m,
                                       11 & m, 12 & m, 13 & m, 14 & m, 15 & m);
    for (int64_t g = 0; g < W->ngroups; g++) {
        __m512 sc, zr;
        group_stats(c, sw, g, stab, &sc, &zr);
        _mm512_store_ps(c->tstats + g * 32, sc);
        _mm512_store_ps(c->tstats + g * 32 + 16, zr);
    }
}

/* Tokens [tt, tt + NT) (NT = 1, 2, 4 or 8) over whole 32-column blocks
 * [0, nblk) of the tile (nblk ends at a group end), decoding each column
 * straight into the FMAs. GL = group length 8 or 16 (group ends at fixed
 * positions of a block), or 0 (beta1 a multiple of 32: groups end at block
 * ends, counted at run time). */
AI void fused_tokens(const kctx *c, int64_t nblk, int tt, const int B, const int GL, const int NTA) {
    const int NT = NTA ? NTA : 1; /* NTA == 0: the job's only token (x with unit stride) */
    const spqr_packed *W = c->W;
    const int P = NT <= 2 ? 2 : 1; /* FMA chains per token */
    const uint32_t *tw = W->codes + c->tile * W->code_words * 16;
    const int64_t nt = NTA ? c->job->nt : 1;
    const float *x = c->job->xp + tt;
    __m512 tlo, thi;
    code_tables(B, &tlo, &thi);
    const __m512i mask = _mm512_set1_epi32((1 << B) - 1);
    __m512 y[8], d[8][2];
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) y[t] = d[t][0] = d[t][1] = _mm512_setzero_ps();
    int64_t left = W->beta1; /* GL == 0: columns left in the current group */
    for (int64_t m = 0; m < nblk; m++) {
        const uint32_t *wp = tw + m * B * 16;
#pragma GCC unroll 8
        for (int i = 0; i < B; i++) _mm_prefetch((const char *)(wp + (32 * B + i) * 16), _MM_HINT_T1);
        if (2 * m + 1 < c->npf) {
            _mm_prefetch(c->pf[2 * m], _MM_HINT_T1);
            _mm_prefetch(c->pf[2 * m + 1], _MM_HINT_T1);
        }
        __m512i w[9];
#pragma GCC unroll 9
        for (int i = 0; i < 9; i++) w[i] = i < B ? _mm512_loadu_si512(wp + 16 * i) : _mm512_setzero_si512();
        const float *xb = x + m * 32 * nt;
#pragma GCC unroll 32
        for (int k = 0; k < 32; k++) {
            const int p = k * B, wi = p >> 5, s = p & 31;
            __m512i v = s ? _mm512_srli_epi32(w[wi], s) : w[wi];
            if (s + B > 32) v = _mm512_or_si512(v, _mm512_slli_epi32(w[wi + 1], 32 - s));
            const __m512 cv = code_to_f32(v, B, tlo, thi, mask);
            const float *xk = xb + k * nt;
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) d[t][k % P] = _mm512_fmadd_ps(cv, _mm512_set1_ps(xk[t]), d[t][k % P]);
            if (GL && (k + 1) % GL == 0)
                finish_group(c, m * (32 / (GL ? GL : 32)) + k / (GL ? GL : 32), tt, NT, P, y, d);
        }
        if (!GL) {
            left -= 32;
            if (left == 0) {
                finish_group(c, (m * 32) / W->beta1, tt, NT, P, y, d);
                left = W->beta1;
            }
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) _mm512_store_ps(c->state + (tt + t) * 16, y[t]);
}

#define FUSED_GL(B, NT)                                                                                             \
    switch (W->beta1) {                                                                                             \
    case 16: fused_tokens(c, nblk, tt, B, 16, NT); break;                                                           \
    default: fused_tokens(c, nblk, tt, B, 0, NT); break;                                                            \
    }
#define FUSED_B(NT)                                                                                                 \
    switch (W->wbits) {                                                                                             \
    case 2: FUSED_GL(2, NT); break;                                                                                 \
    case 3: FUSED_GL(3, NT); break;                                                                                 \
    case 4: FUSED_GL(4, NT); break;                                                                                 \
    case 5: FUSED_GL(5, NT); break;                                                                                 \
    case 6: FUSED_GL(6, NT); break;                                                                                 \
    case 7: FUSED_GL(7, NT); break;                                                                                 \
    default: FUSED_GL(8, NT); break;                                                                                \
    }

/* Whether the fused path applies (then it covers whole groups in whole blocks). */
static bool fused_ok(const spqr_packed *W) {
    return (W->kbeta2 == 0 || W->kbeta2 % 16 == 0) && (W->beta1 == 16 || W->beta1 % 32 == 0);
}

#define PF_MAX 1024

static void add_lines(kctx *c, const void *p, size_t bytes, int64_t max) {
    if (!p || bytes == 0) return;
    const char *a = (const char *)((uintptr_t)p & ~(uintptr_t)63), *e = (const char *)p + bytes;
    for (; a < e && c->npf < max; a += 64) c->pf[c->npf++] = a;
}

/* The cache lines the next tile needs besides its codes (statistics and
 * outliers, read in bursts at the tile's start and end), so the fused loop
 * can prefetch them while it streams this tile's codes. */
static void next_tile_lines(kctx *c, int64_t max) {
    const spqr_packed *W = c->W;
    const int64_t t = c->tile + 1, NG = W->ngroups;
    c->npf = 0;
    if (max > PF_MAX) max = PF_MAX;
    if (t >= W->ntiles) return;
    if (W->kbeta2 > 0) {
        add_lines(c, W->stat_codes + t * W->stat_words * 16, (size_t)W->stat_words * 64, max);
        const int64_t rb = t * 16 / W->kbeta2;
        if (rb != c->tile * 16 / W->kbeta2) add_lines(c, W->kstats2 + rb * NG * 4, (size_t)NG * 8, max);
    } else {
        add_lines(c, W->kstats + t * NG * 32, (size_t)NG * 64, max);
    }
    const int64_t r0 = t * 16, r1 = r0 + 16 < W->rows ? r0 + 16 : W->rows;
    const int64_t k0 = W->ol_row_ptr[r0], k1 = W->ol_row_ptr[r1];
    if (k1 > k0) {
        const size_t isz = W->wide ? 4 : 2;
        add_lines(c, (const char *)W->ol_col + k0 * isz, (size_t)(k1 - k0) * isz, max);
        add_lines(c, W->ol_val + k0, (size_t)(k1 - k0) * 2, max);
    }
}

/* All tokens of the job over blocks [0, nblk), in passes of 8/4/2/1 tokens
 * (the tile's codes stay in L2 between passes). */
static void run_fused(const kctx *c, int64_t nblk) {
    const spqr_packed *W = c->W;
    if (W->kbeta2 > 0) { /* float copy of the tile's row block of stats2 */
        const uint16_t *e = W->kstats2 + (c->tile * 16 / W->kbeta2) * W->ngroups * 4;
        const int64_t n = (int64_t)W->ngroups * 4;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
            _mm512_store_ps(c->s2f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(e + i))));
        for (; i < n; i++) c->s2f[i] = _cvtsh_ss(e[i]);
        /* (a, b) -> (a, a * b): scale = s2_scale * code - s2_scale * s2_zero by one fmsub */
        for (i = 0; i + 16 <= n; i += 16) {
            const __m512 v = _mm512_load_ps(c->s2f + i);
            _mm512_store_ps(c->s2f + i, _mm512_mask_mul_ps(v, (__mmask16)0xAAAA, v, _mm512_moveldup_ps(v)));
        }
        for (; i < n; i += 2) c->s2f[i + 1] = c->s2f[i] * c->s2f[i + 1];
    }
    tile_stats(c);
    next_tile_lines((kctx *)c, 2 * nblk);
    const int nt = c->job->nt;
    if (nt == 1) {
        const int tt = 0;
        FUSED_B(0);
        return;
    }
    for (int tt = 0; tt < nt; ((kctx *)c)->npf = 0) {
        const int r = nt - tt;
        if (r >= 8) {
            FUSED_B(8);
            tt += 8;
        } else if (r >= 4) {
            FUSED_B(4);
            tt += 4;
        } else if (r >= 2) {
            FUSED_B(2);
            tt += 2;
        } else {
            FUSED_B(1);
            tt += 1;
        }
    }
}

/* ---- outliers ----------------------------------------------------------------- */

static void outliers(const kctx *c) {
    const spqr_packed *W = c->W;
    const int64_t R = W->rows;
    const int nt = c->job->nt;
    const float *xp = c->job->xp;
    float *Y = c->job->Y;
    if (nt == 1) {
        /* all products of the tile in one flat pass (16 at a time: gather x,
         * convert the values), then per row a masked sum of its products */
        const int64_t r0 = c->tile * 16, r1 = r0 + 16 < R ? r0 + 16 : R;
        const int64_t K0 = W->ol_row_ptr[r0], K1 = W->ol_row_ptr[r1];
        if (K0 == K1) return;
        float *prod = c->olbuf;
        for (int64_t k = K0; k < K1; k += 16) {
            const __mmask16 m = K1 - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K1 - k)) - 1u);
            __m512i idx;
            if (W->wide) idx = _mm512_maskz_loadu_epi32(m, (const uint32_t *)W->ol_col + k);
            else idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)W->ol_col + k));
            const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, W->ol_val + k));
            _mm512_mask_storeu_ps(prod + (k - K0), m,
                                  _mm512_mul_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, xp, 4)));
        }
        for (int64_t r = r0; r < r1; r++) {
            const int64_t k0 = W->ol_row_ptr[r] - K0, k1 = W->ol_row_ptr[r + 1] - K0;
            if (k0 == k1) continue;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t k = k0; k < k1; k += 16) {
                const __mmask16 m = k1 - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k1 - k)) - 1u);
                acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, prod + k));
            }
            Y[r] += _mm512_reduce_add_ps(acc);
        }
        return;
    }
    /* several tokens: x of one column is contiguous over tokens (xp[j * nt + t]),
     * so each outlier is one broadcast value times a vector of 16 tokens */
    for (int64_t r = c->tile * 16; r < R && r < c->tile * 16 + 16; r++) {
        const int64_t k0 = W->ol_row_ptr[r], k1 = W->ol_row_ptr[r + 1];
        if (k0 == k1) continue;
        for (int t0 = 0; t0 < nt; t0 += 16) {
            const __mmask16 m = nt - t0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nt - t0)) - 1u);
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            int64_t k = k0;
            for (; k + 1 < k1; k += 2) {
                const int64_t j0 = W->wide ? ((const uint32_t *)W->ol_col)[k] : ((const uint16_t *)W->ol_col)[k];
                const int64_t j1 = W->wide ? ((const uint32_t *)W->ol_col)[k + 1] : ((const uint16_t *)W->ol_col)[k + 1];
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(W->ol_val[k])), _mm512_maskz_loadu_ps(m, xp + j0 * nt + t0), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(W->ol_val[k + 1])),
                                     _mm512_maskz_loadu_ps(m, xp + j1 * nt + t0), a1);
            }
            if (k < k1) {
                const int64_t j0 = W->wide ? ((const uint32_t *)W->ol_col)[k] : ((const uint16_t *)W->ol_col)[k];
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(W->ol_val[k])), _mm512_maskz_loadu_ps(m, xp + j0 * nt + t0), a0);
            }
            float tmp[16] __attribute__((aligned(64)));
            _mm512_store_ps(tmp, _mm512_add_ps(a0, a1));
            for (int t = t0; t < nt && t < t0 + 16; t++) Y[(size_t)t * (size_t)R + (size_t)r] += tmp[t - t0];
        }
    }
}

/* ---- tile driver ------------------------------------------------------------------ */

void spqr_qg_tile_avx512(const spqr_qg_job *job, int64_t tile, void *scratch) {
    const spqr_packed *W = job->W;
    const int64_t C = W->cols, R = W->rows, beta1 = W->beta1;
    spqr_qg_bufs b;
    spqr_qg_carve(W, scratch, &b);
    kctx c;
    c.W = W;
    c.job = job;
    c.tile = tile;
    c.cbuf = b.cbuf;
    c.sbuf = b.sbuf;
    c.state = b.state;
    c.s2f = b.s2f;
    c.tstats = b.tstats;
    c.olbuf = b.olbuf;
    const char *pf[PF_MAX];
    c.pf = pf;
    c.npf = 0;
    memset(c.state, 0, (size_t)job->nt * 16 * sizeof(float));

    int64_t start = 0;
    if (fused_ok(W)) {
        const int64_t nblk = spqr_qg_fused_blocks(W);
        if (nblk > 0) run_fused(&c, nblk);
        start = nblk * 32;
    }
    for (int64_t c0 = start; c0 < C; c0 += SPQR_QG_CH) {
        const int64_t c1 = c0 + SPQR_QG_CH < C ? c0 + SPQR_QG_CH : C;
        dec_chunk(&c, c0, c1);
        const int64_t g0 = c0 / beta1, g1 = (c1 - 1) / beta1;
        dec_stats(&c, g0, g1);
        dequant_chunk(&c, c0, c1, g0);
        run_chunk(&c, c0, c1);
    }
    const int64_t r0 = tile * 16;
    const __mmask16 m = R - r0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (R - r0)) - 1u);
    for (int t = 0; t < job->nt; t++)
        _mm512_mask_storeu_ps(job->Y + (size_t)t * (size_t)R + (size_t)r0, m, _mm512_load_ps(c.state + t * 16));
    if (W->n_outliers > 0) outliers(&c);
}

