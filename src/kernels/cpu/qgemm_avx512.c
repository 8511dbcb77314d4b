/* qgemm_avx512.c - AVX-512 tile kernel for packed SpQR layers and dense
 * matrix-vector products.
 *
 * One 16-row tile is one zmm lane set. Per chunk of SPQR_QG_CH columns:
 *  1. decode the chunk's codes into floats (cbuf[col][16 rows]): one 32-col
 *     block is B words per lane; column k of a block is the word
 *     (k*B)/32 shifted right by (k*B)%32 (OR-ed with the next word when the
 *     code straddles), turned into a float by a permute from a 16/32-entry
 *     table (B <= 5; the table ignores the higher index bits) or by
 *     and + convert (B >= 6). B is a compile-time constant per instance, so
 *     all shifts are immediates;
 *  2. decode the first-level statistics (scale, zero per row) of the groups
 *     the chunk touches;
 *  3. for blocks of up to 8 tokens: dot_t += code_col * x_t[col] over each
 *     group, and at the group end y_t += scale * (dot_t - zero * sum_g x_t),
 *     all 16 rows at once.
 * The decode is shared by all tokens of the pass, so batches are FMA-bound.
 */
#include <immintrin.h>

#include "kernels_internal.h"

#define AI static inline __attribute__((always_inline))

typedef struct kctx {
    const spqr_packed *W;
    const spqr_qg_job *job;
    int64_t tile;
    float *cbuf;  /* [SPQR_QG_CH][16] decoded codes of the current chunk    */
    float *sbuf;  /* [groups of chunk][2][16] scale, zero                   */
    float *state; /* [nt][16]: y accumulators of the tile's rows            */
    float *s2f;   /* [ngroups][4] float stats2 of the tile's row block      */
} kctx;

/* ---- code decoding ----------------------------------------------------------- */

AI __m512 code_to_f32(__m512i v, const int B, __m512 tlo, __m512 thi, __m512i mask) {
    if (B <= 4) return _mm512_permutexvar_ps(v, tlo);
    if (B == 5) return _mm512_permutex2var_ps(tlo, v, thi);
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, mask));
}

/* Decode one block of 32 columns (B words of 16 lanes at wp) into out[32][16]. */
AI void dec_block(const uint32_t *wp, float *out, const int B) {
    __m512 tlo, thi = _mm512_setzero_ps();
    if (B <= 4) {
        const int m = (1 << B) - 1;
        tlo = _mm512_setr_ps(0 & m, 1 & m, 2 & m, 3 & m, 4 & m, 5 & m, 6 & m, 7 & m, 8 & m, 9 & m, 10 & m, 11 & m,
                             12 & m, 13 & m, 14 & m, 15 & m);
    } else {
        tlo = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        thi = _mm512_setr_ps(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    }
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

AI void dec_chunk_b(const kctx *c, int64_t c0, int64_t c1, const int B) {
    const spqr_packed *W = c->W;
    const uint32_t *tw = W->codes + c->tile * W->code_words * 16;
    for (int64_t j = c0; j < c1; j += 32) {
        const int64_t w0 = (j >> 5) * B; /* first word of this block */
        float *out = c->cbuf + (j - c0) * 16;
        if (w0 + B <= W->code_words) {
            dec_block(tw + w0 * 16, out, B);
        } else { /* last, partial block: copy the words that exist */
            uint32_t tmp[8 * 16] __attribute__((aligned(64)));
            memset(tmp, 0, sizeof tmp);
            memcpy(tmp, tw + w0 * 16, (size_t)(W->code_words - w0) * 16 * sizeof(uint32_t));
            dec_block(tmp, out, B);
        }
    }
}

static void dec_chunk(const kctx *c, int64_t c0, int64_t c1) {
    switch (c->W->wbits) {
    case 2: dec_chunk_b(c, c0, c1, 2); break;
    case 3: dec_chunk_b(c, c0, c1, 3); break;
    case 4: dec_chunk_b(c, c0, c1, 4); break;
    case 5: dec_chunk_b(c, c0, c1, 5); break;
    case 6: dec_chunk_b(c, c0, c1, 6); break;
    case 7: dec_chunk_b(c, c0, c1, 7); break;
    default: dec_chunk_b(c, c0, c1, 8); break;
    }
}

/* ---- statistics ------------------------------------------------------------------ */

static void dec_stats(const kctx *c, int64_t g0, int64_t g1) {
    const spqr_packed *W = c->W;
    const int64_t G = W->ngroups, t = c->tile;
    if (W->beta2 == 0) {
        for (int64_t g = g0; g <= g1; g++) {
            const uint16_t *e = W->stats + ((t * G + g) * 2) * 16;
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
    const bool tile_rb = W->beta2 % 16 == 0; /* one row block per tile */
    const int64_t rb_t = t * 16 / W->beta2;
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
            const uint16_t *e = W->stats2 + (rb_t * G + g) * 4;
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
                const uint16_t *e = W->stats2 + ((r / W->beta2) * G + g) * 4;
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
 * quant/qlayer.h formula without the outliers (added separately). */
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
    if (W->beta2 == 0) {
        const uint16_t *e = W->stats + ((c->tile * W->ngroups + g) * 2) * 16;
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
    *scale = _mm512_mul_ps(_mm512_set1_ps(f[0]), _mm512_sub_ps(sc, _mm512_set1_ps(f[1])));
    *zero = _mm512_mul_ps(_mm512_set1_ps(f[2]), _mm512_sub_ps(zc, _mm512_set1_ps(f[3])));
}

/* One token, full 32-column blocks [0, nblk) of the tile, decoding straight
 * into the FMAs. GL = group length if it divides 32 (8, 16, 32), else 0
 * (beta1 a multiple of 32: groups end at block ends, counted at run time). */
AI void nt1_fused(const kctx *c, int64_t nblk, const int B, const int GL) {
    const spqr_packed *W = c->W;
    const uint32_t *tw = W->codes + c->tile * W->code_words * 16;
    const uint32_t *sw = W->beta2 > 0 ? W->stat_codes + c->tile * W->stat_words * 16 : NULL;
    const float *x = c->job->xp, *xs = c->job->xs;
    __m512 tlo, thi = _mm512_setzero_ps();
    if (B <= 4) {
        const int m = (1 << B) - 1;
        tlo = _mm512_setr_ps(0 & m, 1 & m, 2 & m, 3 & m, 4 & m, 5 & m, 6 & m, 7 & m, 8 & m, 9 & m, 10 & m, 11 & m,
                             12 & m, 13 & m, 14 & m, 15 & m);
    } else {
        tlo = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        thi = _mm512_setr_ps(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    }
    __m512 stab; /* table for statistic codes (period 2^sbits) */
    {
        const int m = W->sbits >= 1 && W->sbits <= 4 ? (1 << W->sbits) - 1 : 15;
        stab = _mm512_setr_ps(0 & m, 1 & m, 2 & m, 3 & m, 4 & m, 5 & m, 6 & m, 7 & m, 8 & m, 9 & m, 10 & m, 11 & m,
                              12 & m, 13 & m, 14 & m, 15 & m);
    }
    const __m512i mask = _mm512_set1_epi32((1 << B) - 1);
    __m512 y = _mm512_setzero_ps(), d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();
    int64_t left = W->beta1; /* GL == 0: columns left in the current group */
    for (int64_t m = 0; m < nblk; m++) {
        const uint32_t *wp = tw + m * B * 16;
#pragma GCC unroll 8
        for (int i = 0; i < B; i++) _mm_prefetch((const char *)(wp + (8 * B + i) * 16), _MM_HINT_T0);
        __m512i w[9];
#pragma GCC unroll 9
        for (int i = 0; i < 9; i++) w[i] = i < B ? _mm512_loadu_si512(wp + 16 * i) : _mm512_setzero_si512();
        const float *xb = x + m * 32;
#pragma GCC unroll 32
        for (int k = 0; k < 32; k++) {
            const int p = k * B, wi = p >> 5, s = p & 31;
            __m512i v = s ? _mm512_srli_epi32(w[wi], s) : w[wi];
            if (s + B > 32) v = _mm512_or_si512(v, _mm512_slli_epi32(w[wi + 1], 32 - s));
            const __m512 cv = code_to_f32(v, B, tlo, thi, mask);
            if (k & 1) d1 = _mm512_fmadd_ps(cv, _mm512_set1_ps(xb[k]), d1);
            else d0 = _mm512_fmadd_ps(cv, _mm512_set1_ps(xb[k]), d0);
            if (GL && (k + 1) % GL == 0) {
                const int64_t g = m * (32 / (GL ? GL : 32)) + k / (GL ? GL : 32);
                __m512 sc, zr;
                group_stats(c, sw, g, stab, &sc, &zr);
                y = _mm512_fmadd_ps(sc, _mm512_fnmadd_ps(zr, _mm512_set1_ps(xs[g]), _mm512_add_ps(d0, d1)), y);
                d0 = d1 = _mm512_setzero_ps();
            }
        }
        if (!GL) {
            left -= 32;
            if (left == 0) {
                const int64_t g = (m * 32) / W->beta1;
                __m512 sc, zr;
                group_stats(c, sw, g, stab, &sc, &zr);
                y = _mm512_fmadd_ps(sc, _mm512_fnmadd_ps(zr, _mm512_set1_ps(xs[g]), _mm512_add_ps(d0, d1)), y);
                d0 = d1 = _mm512_setzero_ps();
                left = W->beta1;
            }
        }
    }
    _mm512_store_ps(c->state, y); /* nblk ends at a group end: d0 = d1 = 0 */
}

#define FUSED_GL(B)                                                                                                 \
    switch (W->beta1) {                                                                                             \
    case 8: nt1_fused(c, nblk, B, 8); break;                                                                        \
    case 16: nt1_fused(c, nblk, B, 16); break;                                                                      \
    case 32: nt1_fused(c, nblk, B, 32); break;                                                                      \
    default: nt1_fused(c, nblk, B, 0); break;                                                                       \
    }

/* Whether the fused path applies; nblk full blocks are then processed. */
static bool fused_ok(const spqr_packed *W) {
    return (W->beta2 == 0 || W->beta2 % 16 == 0) && (W->beta1 == 8 || W->beta1 == 16 || W->beta1 % 32 == 0);
}

static void run_fused(const kctx *c, int64_t nblk) {
    const spqr_packed *W = c->W;
    if (W->beta2 > 0) { /* float copy of the tile's row block of stats2 */
        const uint16_t *e = W->stats2 + (c->tile * 16 / W->beta2) * W->ngroups * 4;
        const int64_t n = (int64_t)W->ngroups * 4;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
            _mm512_store_ps(c->s2f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(e + i))));
        for (; i < n; i++) c->s2f[i] = _cvtsh_ss(e[i]);
    }
    switch (W->wbits) {
    case 2: FUSED_GL(2); break;
    case 3: FUSED_GL(3); break;
    case 4: FUSED_GL(4); break;
    case 5: FUSED_GL(5); break;
    case 6: FUSED_GL(6); break;
    case 7: FUSED_GL(7); break;
    default: FUSED_GL(8); break;
    }
}

/* ---- outliers ----------------------------------------------------------------- */

static void outliers(const kctx *c) {
    const spqr_packed *W = c->W;
    const int64_t R = W->rows;
    const int nt = c->job->nt;
    const __m512i vnt = _mm512_set1_epi32(nt);
    if ((int64_t)W->cols * nt > INT32_MAX) { /* gather indices would overflow */
        for (int64_t r = c->tile * 16; r < R && r < c->tile * 16 + 16; r++)
            for (int64_t k = W->ol_row_ptr[r]; k < W->ol_row_ptr[r + 1]; k++) {
                const int64_t j = W->wide ? ((const uint32_t *)W->ol_col)[k] : ((const uint16_t *)W->ol_col)[k];
                const float v = _cvtsh_ss(W->ol_val[k]);
                for (int t = 0; t < nt; t++) c->job->Y[(size_t)t * (size_t)R + (size_t)r] += v * c->job->xp[j * nt + t];
            }
        return;
    }
    for (int l = 0; l < 16; l++) {
        const int64_t r = c->tile * 16 + l;
        if (r >= R) break;
        const int64_t k0 = W->ol_row_ptr[r], k1 = W->ol_row_ptr[r + 1];
        for (int64_t k = k0; k < k1; k += 16) {
            const __mmask16 m = k1 - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k1 - k)) - 1u);
            __m512i idx;
            if (W->wide) idx = _mm512_maskz_loadu_epi32(m, (const uint32_t *)W->ol_col + k);
            else idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)W->ol_col + k));
            if (nt > 1) idx = _mm512_mullo_epi32(idx, vnt); /* x of column j, token t: xp[j * nt + t] */
            const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, W->ol_val + k));
            for (int t = 0; t < nt; t++) {
                const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, c->job->xp + t, 4);
                c->job->Y[(size_t)t * (size_t)R + (size_t)r] += _mm512_reduce_add_ps(_mm512_mul_ps(v, xv));
            }
        }
    }
}

/* ---- tile driver ------------------------------------------------------------------ */

void spqr_qg_tile_avx512(const spqr_qg_job *job, int64_t tile, void *scratch) {
    const spqr_packed *W = job->W;
    const int64_t C = W->cols, R = W->rows, beta1 = W->beta1;
    char *s = scratch;
    kctx c;
    c.W = W;
    c.job = job;
    c.tile = tile;
    c.cbuf = (float *)s;
    s += (size_t)SPQR_QG_CH * 16 * sizeof(float);
    c.sbuf = (float *)s;
    s += (((size_t)spqr_qg_chunk_groups(W) * 32 * sizeof(float)) + 63) & ~(size_t)63;
    c.state = (float *)s;
    s += (size_t)SPQR_QG_TB * 32 * sizeof(float);
    c.s2f = (float *)s;
    memset(c.state, 0, (size_t)job->nt * 16 * sizeof(float));

    int64_t start = 0;
    if (job->nt == 1 && fused_ok(W)) {
        /* whole groups within whole 32-column blocks */
        int64_t nblk = C / 32;
        if (W->beta1 % 32 == 0) nblk = (C / W->beta1) * (W->beta1 / 32);
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

/* ---- dense matrix-vector --------------------------------------------------------- */

AI __m512 load_w(spqr_dtype dt, const void *row, int64_t c, __mmask16 m) {
    if (dt == SPQR_DT_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + c);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c);
    if (dt == SPQR_DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI __m512 load_w_full(spqr_dtype dt, const void *row, int64_t c) {
    if (dt == SPQR_DT_F32) return _mm512_loadu_ps((const float *)row + c);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c));
    if (dt == SPQR_DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI void gemv_rows_dt(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x, float *y) {
    const size_t es = dt == SPQR_DT_F32 ? 4 : 2;
    const char *base = W;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const void *w0 = base + (size_t)r * cols * es, *w1 = base + (size_t)(r + 1) * cols * es;
        const void *w2 = base + (size_t)(r + 2) * cols * es, *w3 = base + (size_t)(r + 3) * cols * es;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int64_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
            a0 = _mm512_fmadd_ps(load_w_full(dt, w0, c), x0, a0);
            a1 = _mm512_fmadd_ps(load_w_full(dt, w1, c), x0, a1);
            a2 = _mm512_fmadd_ps(load_w_full(dt, w2, c), x0, a2);
            a3 = _mm512_fmadd_ps(load_w_full(dt, w3, c), x0, a3);
            b0 = _mm512_fmadd_ps(load_w_full(dt, w0, c + 16), x1, b0);
            b1 = _mm512_fmadd_ps(load_w_full(dt, w1, c + 16), x1, b1);
            b2 = _mm512_fmadd_ps(load_w_full(dt, w2, c + 16), x1, b2);
            b3 = _mm512_fmadd_ps(load_w_full(dt, w3, c + 16), x1, b3);
        }
        for (; c < cols; c += 16) {
            const __mmask16 m = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1u);
            const __m512 x0 = _mm512_maskz_loadu_ps(m, x + c);
            a0 = _mm512_fmadd_ps(load_w(dt, w0, c, m), x0, a0);
            a1 = _mm512_fmadd_ps(load_w(dt, w1, c, m), x0, a1);
            a2 = _mm512_fmadd_ps(load_w(dt, w2, c, m), x0, a2);
            a3 = _mm512_fmadd_ps(load_w(dt, w3, c, m), x0, a3);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
        y[r + 1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
        y[r + 2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
        y[r + 3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
    }
    for (; r < r1; r++) {
        const void *w0 = base + (size_t)r * cols * es;
        __m512 a0 = _mm512_setzero_ps();
        for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 m = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1u);
            a0 = _mm512_fmadd_ps(load_w(dt, w0, c, m), _mm512_maskz_loadu_ps(m, x + c), a0);
        }
        y[r] = _mm512_reduce_add_ps(a0);
    }
}

void spqr_gemv_rows_avx512(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x,
                           float *y) {
    if (dt == SPQR_DT_F32) gemv_rows_dt(SPQR_DT_F32, W, r0, r1, cols, x, y);
    else if (dt == SPQR_DT_F16) gemv_rows_dt(SPQR_DT_F16, W, r0, r1, cols, x, y);
    else gemv_rows_dt(SPQR_DT_BF16, W, r0, r1, cols, x, y);
}
