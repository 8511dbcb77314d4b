/* qgemm_avx2.c - AVX2/FMA/F16C tile kernel for packed SpQR layers.
 * Same algorithm as qgemm_avx512.c (see there), each
 * 16-row tile split into two 8-lane halves, codes converted by and + convert;
 * the fused path is used for single tokens only (16 ymm registers). */
#include <immintrin.h>

#include "qgemm_internal.h"

#define AI static inline __attribute__((always_inline))

typedef struct kctx {
    const spqr_packed *W;
    const spqr_qg_job *job;
    int64_t tile;
    float *cbuf;  /* [SPQR_QG_CH][16] decoded codes of the current chunk */
    float *sbuf;  /* [groups of chunk][2][16] scale, zero                */
    float *state; /* [nt][16]: y accumulators of the tile's rows         */
    float *s2f;   /* [ngroups][4] float stats2 of the tile's row block   */
} kctx;

/* ---- code decoding ------------------------------------------------------------- */

AI void dec_block(const uint32_t *wp, float *out, const int B) {
    const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
    __m256i w[9][2];
#pragma GCC unroll 9
    for (int i = 0; i < 9; i++) {
        w[i][0] = i < B ? _mm256_loadu_si256((const __m256i *)(wp + 16 * i)) : _mm256_setzero_si256();
        w[i][1] = i < B ? _mm256_loadu_si256((const __m256i *)(wp + 16 * i + 8)) : _mm256_setzero_si256();
    }
#pragma GCC unroll 32
    for (int k = 0; k < 32; k++) {
        const int p = k * B, wi = p >> 5, s = p & 31;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i v = s ? _mm256_srli_epi32(w[wi][h], s) : w[wi][h];
            if (s + B > 32) v = _mm256_or_si256(v, _mm256_slli_epi32(w[wi + 1][h], 32 - s));
            if (s + B < 32 || s + B > 32) v = _mm256_and_si256(v, mask);
            _mm256_store_ps(out + 16 * k + 8 * h, _mm256_cvtepi32_ps(v));
        }
    }
}

static void dec_chunk(const kctx *c, int64_t c0, int64_t c1) { spqr_qg_dec_chunk(c->W, c->tile, c0, c1, c->cbuf, dec_block); }

/* ---- statistics ---------------------------------------------------------------- */

static void dec_stats(const kctx *c, int64_t g0, int64_t g1) {
    const spqr_packed *W = c->W;
    const int64_t NG = W->ngroups, t = c->tile;
    if (W->kbeta2 == 0) {
        for (int64_t g = g0; g <= g1; g++) {
            const uint16_t *e = W->kstats + ((t * NG + g) * 2) * 16;
            float *o = c->sbuf + (g - g0) * 32;
            for (int i = 0; i < 4; i++)
                _mm256_store_ps(o + 8 * i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(e + 8 * i))));
        }
        return;
    }
    const int sb = W->sbits, SZ = W->sbits + W->zbits;
    const uint32_t *sw = W->stat_codes + t * W->stat_words * 16;
    const __m256i smask = _mm256_set1_epi32((1 << W->sbits) - 1), zmask = _mm256_set1_epi32((1 << W->zbits) - 1);
    const __m128i sbc = _mm_cvtsi32_si128(sb);
    const bool tile_rb = W->kbeta2 % 16 == 0;
    const int64_t rb_t = t * 16 / W->kbeta2;
    for (int64_t g = g0; g <= g1; g++) {
        const int64_t p = g * SZ, w = p >> 5;
        const int s = (int)(p & 31);
        const __m128i sc_lo = _mm_cvtsi32_si128(s), sc_hi = _mm_cvtsi32_si128(32 - s);
        __m256 s2s, s2z, z2s, z2z;
        float a[4][16] __attribute__((aligned(32)));
        if (tile_rb) {
            const uint16_t *e = W->kstats2 + (rb_t * NG + g) * 4;
            const __m128 q = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)e));
            s2s = _mm256_broadcastss_ps(q);
            s2z = _mm256_broadcastss_ps(_mm_shuffle_ps(q, q, 0x55));
            z2s = _mm256_broadcastss_ps(_mm_shuffle_ps(q, q, 0xAA));
            z2z = _mm256_broadcastss_ps(_mm_shuffle_ps(q, q, 0xFF));
        } else {
            for (int l = 0; l < 16; l++) {
                int64_t r = t * 16 + l;
                if (r >= W->rows) r = W->rows - 1;
                const uint16_t *e = W->kstats2 + ((r / W->kbeta2) * NG + g) * 4;
                const __m128 q = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)e));
                float f[4];
                _mm_storeu_ps(f, q);
                for (int i = 0; i < 4; i++) a[i][l] = f[i];
            }
            s2s = s2z = z2s = z2z = _mm256_setzero_ps();
        }
        float *o = c->sbuf + (g - g0) * 32;
        for (int h = 0; h < 2; h++) {
            __m256i v = _mm256_srl_epi32(_mm256_loadu_si256((const __m256i *)(sw + w * 16 + 8 * h)), sc_lo);
            if (s + SZ > 32)
                v = _mm256_or_si256(v, _mm256_sll_epi32(_mm256_loadu_si256((const __m256i *)(sw + (w + 1) * 16 + 8 * h)),
                                                        sc_hi));
            const __m256 sc = _mm256_cvtepi32_ps(_mm256_and_si256(v, smask));
            const __m256 zc = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, sbc), zmask));
            if (!tile_rb) {
                s2s = _mm256_load_ps(a[0] + 8 * h);
                s2z = _mm256_load_ps(a[1] + 8 * h);
                z2s = _mm256_load_ps(a[2] + 8 * h);
                z2z = _mm256_load_ps(a[3] + 8 * h);
            }
            _mm256_store_ps(o + 8 * h, _mm256_mul_ps(s2s, _mm256_sub_ps(sc, s2z)));
            _mm256_store_ps(o + 16 + 8 * h, _mm256_mul_ps(z2s, _mm256_sub_ps(zc, z2z)));
        }
    }
}

/* ---- token kernel --------------------------------------------------------------- */

/* w = scale * (code - zero) in place over the chunk (no outliers). */
static void dequant_chunk(const kctx *c, int64_t c0, int64_t c1, int64_t g0) {
    const int64_t C = c->W->cols, beta1 = c->W->beta1;
    int64_t g = c0 / beta1;
    int64_t gend = (g + 1) * beta1 < C ? (g + 1) * beta1 : C;
    for (int64_t j = c0; j < c1;) {
        const int64_t e = gend < c1 ? gend : c1;
        const float *sp = c->sbuf + (g - g0) * 32;
        const __m256 s0 = _mm256_load_ps(sp), s1 = _mm256_load_ps(sp + 8);
        const __m256 z0 = _mm256_load_ps(sp + 16), z1 = _mm256_load_ps(sp + 24);
        for (float *p = c->cbuf + (j - c0) * 16, *pe = c->cbuf + (e - c0) * 16; p < pe; p += 16) {
            _mm256_store_ps(p, _mm256_mul_ps(s0, _mm256_sub_ps(_mm256_load_ps(p), z0)));
            _mm256_store_ps(p + 8, _mm256_mul_ps(s1, _mm256_sub_ps(_mm256_load_ps(p + 8), z1)));
        }
        if (e == gend) {
            g++;
            gend = gend + beta1 < C ? gend + beta1 : C;
        }
        j = e;
    }
}

/* y_t += sum_k w_k * x_t[k] over the chunk, tokens [tt, tt + NT), NT <= 6. */
AI void gemm_tokens(const kctx *c, int64_t c0, int64_t c1, int tt, const int NT) {
    enum { MAXT = 6 };
    const int P = NT >= 3 ? 1 : NT == 1 ? 4 : 2;
    __m256 acc[MAXT][4][2];
#pragma GCC unroll 6
    for (int t = 0; t < NT; t++) {
        acc[t][0][0] = _mm256_load_ps(c->state + (tt + t) * 16);
        acc[t][0][1] = _mm256_load_ps(c->state + (tt + t) * 16 + 8);
#pragma GCC unroll 4
        for (int q = 1; q < P; q++) acc[t][q][0] = acc[t][q][1] = _mm256_setzero_ps();
    }
    const int64_t n = c1 - c0, nt = c->job->nt;
    const float *xc = c->job->xp + c0 * nt + tt;
    const float *cb = c->cbuf;
    int64_t k = 0;
    for (; k + P <= n; k += P) {
#pragma GCC unroll 4
        for (int q = 0; q < P; q++) {
            const __m256 w0 = _mm256_load_ps(cb + (k + q) * 16), w1 = _mm256_load_ps(cb + (k + q) * 16 + 8);
            const float *xk = xc + (k + q) * nt;
#pragma GCC unroll 6
            for (int t = 0; t < NT; t++) {
                const __m256 xv = _mm256_broadcast_ss(xk + t);
                acc[t][q][0] = _mm256_fmadd_ps(w0, xv, acc[t][q][0]);
                acc[t][q][1] = _mm256_fmadd_ps(w1, xv, acc[t][q][1]);
            }
        }
    }
    for (; k < n; k++) {
        const __m256 w0 = _mm256_load_ps(cb + k * 16), w1 = _mm256_load_ps(cb + k * 16 + 8);
        const float *xk = xc + k * nt;
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m256 xv = _mm256_broadcast_ss(xk + t);
            acc[t][0][0] = _mm256_fmadd_ps(w0, xv, acc[t][0][0]);
            acc[t][0][1] = _mm256_fmadd_ps(w1, xv, acc[t][0][1]);
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < NT; t++) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256 v = acc[t][0][h];
            if (P >= 2) v = _mm256_add_ps(v, acc[t][1][h]);
            if (P == 4) v = _mm256_add_ps(v, _mm256_add_ps(acc[t][2][h], acc[t][3][h]));
            _mm256_store_ps(c->state + (tt + t) * 16 + 8 * h, v);
        }
    }
}

static void run_chunk(const kctx *c, int64_t c0, int64_t c1) {
    const int nt = c->job->nt;
    for (int tt = 0; tt < nt; tt += 6) {
        switch (nt - tt < 6 ? nt - tt : 6) {
        case 1: gemm_tokens(c, c0, c1, tt, 1); break;
        case 2: gemm_tokens(c, c0, c1, tt, 2); break;
        case 3: gemm_tokens(c, c0, c1, tt, 3); break;
        case 4: gemm_tokens(c, c0, c1, tt, 4); break;
        case 5: gemm_tokens(c, c0, c1, tt, 5); break;
        default: gemm_tokens(c, c0, c1, tt, 6); break;
        }
    }
}

/* ---- fused single-token path ----------------------------------------------------- */

AI void group_stats(const kctx *c, const uint32_t *sw, int64_t g, __m256 *scale, __m256 *zero) {
    const spqr_packed *W = c->W;
    if (W->kbeta2 == 0) {
        const uint16_t *e = W->kstats + ((c->tile * W->ngroups + g) * 2) * 16;
        for (int h = 0; h < 2; h++) {
            scale[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(e + 8 * h)));
            zero[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(e + 16 + 8 * h)));
        }
        return;
    }
    const int SZ = W->sbits + W->zbits;
    const int64_t p = g * SZ, w = p >> 5;
    const int s = (int)(p & 31);
    const __m128i cl = _mm_cvtsi32_si128(s), ch = _mm_cvtsi32_si128(32 - s), cs = _mm_cvtsi32_si128(W->sbits);
    const __m256i sm = _mm256_set1_epi32((1 << W->sbits) - 1), zm = _mm256_set1_epi32((1 << W->zbits) - 1);
    const float *f = c->s2f + g * 4;
    const __m256 s2s = _mm256_broadcast_ss(f), s2z = _mm256_broadcast_ss(f + 1);
    const __m256 z2s = _mm256_broadcast_ss(f + 2), z2z = _mm256_broadcast_ss(f + 3);
    for (int h = 0; h < 2; h++) {
        __m256i v = _mm256_srl_epi32(_mm256_loadu_si256((const __m256i *)(sw + w * 16 + 8 * h)), cl);
        if (s + SZ > 32)
            v = _mm256_or_si256(v, _mm256_sll_epi32(_mm256_loadu_si256((const __m256i *)(sw + (w + 1) * 16 + 8 * h)), ch));
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_and_si256(v, sm));
        const __m256 zc = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, cs), zm));
        scale[h] = _mm256_mul_ps(s2s, _mm256_sub_ps(sc, s2z));
        zero[h] = _mm256_mul_ps(z2s, _mm256_sub_ps(zc, z2z));
    }
}

/* Group g ends: y += scale * (sum of code * x - zero * sum of x) for both
 * 8-row halves, and the two partial code sums restart. */
AI void finish_group(const kctx *c, const uint32_t *sw, int64_t g, const float *xs, __m256 y[2], __m256 d[2][2]) {
    __m256 sc[2], zr[2];
    group_stats(c, sw, g, sc, zr);
    const __m256 xg = _mm256_broadcast_ss(xs + g);
    for (int h = 0; h < 2; h++) {
        y[h] = _mm256_fmadd_ps(sc[h], _mm256_fnmadd_ps(zr[h], xg, _mm256_add_ps(d[0][h], d[1][h])), y[h]);
        d[0][h] = d[1][h] = _mm256_setzero_ps();
    }
}

/* One token over whole 32-column blocks [0, nblk) that end at a group end;
 * GL as in qgemm_avx512.c. */
AI void nt1_fused(const kctx *c, int64_t nblk, const int B, const int GL) {
    const spqr_packed *W = c->W;
    const uint32_t *tw = W->codes + c->tile * W->code_words * 16;
    const uint32_t *sw = W->kbeta2 > 0 ? W->stat_codes + c->tile * W->stat_words * 16 : NULL;
    const float *x = c->job->xp, *xs = c->job->xs;
    const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
    __m256 y[2], d[2][2];
    for (int h = 0; h < 2; h++) y[h] = d[0][h] = d[1][h] = _mm256_setzero_ps();
    int64_t left = W->beta1;
    for (int64_t m = 0; m < nblk; m++) {
        const uint32_t *wp = tw + m * B * 16;
#pragma GCC unroll 8
        for (int i = 0; i < B; i++) _mm_prefetch((const char *)(wp + (32 * B + i) * 16), _MM_HINT_T1);
        __m256i w[9][2];
#pragma GCC unroll 9
        for (int i = 0; i < 9; i++) {
            w[i][0] = i < B ? _mm256_loadu_si256((const __m256i *)(wp + 16 * i)) : _mm256_setzero_si256();
            w[i][1] = i < B ? _mm256_loadu_si256((const __m256i *)(wp + 16 * i + 8)) : _mm256_setzero_si256();
        }
        const float *xb = x + m * 32;
#pragma GCC unroll 32
        for (int k = 0; k < 32; k++) {
            const int p = k * B, wi = p >> 5, s = p & 31;
            const __m256 xv = _mm256_broadcast_ss(xb + k);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256i v = s ? _mm256_srli_epi32(w[wi][h], s) : w[wi][h];
                if (s + B > 32) v = _mm256_or_si256(v, _mm256_slli_epi32(w[wi + 1][h], 32 - s));
                if (s + B != 32) v = _mm256_and_si256(v, mask);
                d[k & 1][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), xv, d[k & 1][h]);
            }
            if (GL && (k + 1) % GL == 0) finish_group(c, sw, m * (32 / (GL ? GL : 32)) + k / (GL ? GL : 32), xs, y, d);
        }
        if (!GL) {
            left -= 32;
            if (left == 0) {
                finish_group(c, sw, (m * 32) / W->beta1, xs, y, d);
                left = W->beta1;
            }
        }
    }
    _mm256_store_ps(c->state, y[0]);
    _mm256_store_ps(c->state + 8, y[1]);
}

#define FUSED_GL(B)                                                                                                 \
    switch (W->beta1) {                                                                                             \
    case 16: nt1_fused(c, nblk, B, 16); break;                                                                      \
    case 32: nt1_fused(c, nblk, B, 32); break;                                                                      \
    default: nt1_fused(c, nblk, B, 0); break;                                                                       \
    }

static bool fused_ok(const spqr_packed *W) {
    return (W->kbeta2 == 0 || W->kbeta2 % 16 == 0) && (W->beta1 == 16 || W->beta1 % 32 == 0);
}

static void run_fused(const kctx *c, int64_t nblk) {
    const spqr_packed *W = c->W;
    if (W->kbeta2 > 0) {
        const uint16_t *e = W->kstats2 + (c->tile * 16 / W->kbeta2) * W->ngroups * 4;
        const int64_t n = (int64_t)W->ngroups * 4;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_store_ps(c->s2f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(e + i))));
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

/* ---- outliers ------------------------------------------------------------------ */

static void outliers(const kctx *c) {
    const spqr_packed *W = c->W;
    const int64_t R = W->rows;
    const int nt = c->job->nt;
    const float *xp = c->job->xp;
    for (int64_t r = c->tile * 16; r < R && r < c->tile * 16 + 16; r++) {
        const int64_t k0 = W->ol_row_ptr[r], k1 = W->ol_row_ptr[r + 1];
        for (int t = 0; t < nt; t++) {
            float a0 = 0.0f, a1 = 0.0f;
            int64_t k = k0;
            for (; k + 1 < k1; k += 2) {
                const int64_t j0 = W->wide ? ((const uint32_t *)W->ol_col)[k] : ((const uint16_t *)W->ol_col)[k];
                const int64_t j1 = W->wide ? ((const uint32_t *)W->ol_col)[k + 1] : ((const uint16_t *)W->ol_col)[k + 1];
                a0 += _cvtsh_ss(W->ol_val[k]) * xp[j0 * nt + t];
                a1 += _cvtsh_ss(W->ol_val[k + 1]) * xp[j1 * nt + t];
            }
            if (k < k1) {
                const int64_t j0 = W->wide ? ((const uint32_t *)W->ol_col)[k] : ((const uint16_t *)W->ol_col)[k];
                a0 += _cvtsh_ss(W->ol_val[k]) * xp[j0 * nt + t];
            }
            c->job->Y[(size_t)t * (size_t)R + (size_t)r] += a0 + a1;
        }
    }
}

/* ---- tile driver ------------------------------------------------------------------- */

void spqr_qg_tile_avx2(const spqr_qg_job *job, int64_t tile, void *scratch) {
    const spqr_packed *W = job->W;
    const int64_t C = W->cols, R = W->rows, beta1 = W->beta1;
    spqr_qg_bufs b;
    spqr_qg_carve(W, scratch, &b);
    kctx c = {W, job, tile, b.cbuf, b.sbuf, b.state, b.s2f};
    memset(c.state, 0, (size_t)job->nt * 16 * sizeof(float));

    int64_t start = 0;
    if (job->nt == 1 && fused_ok(W)) {
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
    const int64_t nr = R - r0 < 16 ? R - r0 : 16;
    for (int t = 0; t < job->nt; t++)
        memcpy(job->Y + (size_t)t * (size_t)R + (size_t)r0, c.state + t * 16, (size_t)nr * sizeof(float));
    if (W->n_outliers > 0) outliers(&c);
}

