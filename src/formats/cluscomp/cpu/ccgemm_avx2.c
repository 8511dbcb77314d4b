/* ccgemm_avx2.c - AVX2+FMA ClusComp kernels: index decoding 8 fields at a
 * time and the fused codebook products (ccgemm_internal.h). Registers hold
 * 8 lanes: entries of up to 8 components (wider ones run as 8-wide slices). */
#include <immintrin.h>

#include "ccgemm_internal.h"

#define AI static inline __attribute__((always_inline))

/* ---- index decoding ------------------------------------------------------------------
 * out[k] = field (f0 + k) * mul for k < count, rounded up to 8 (out has
 * room). Fields of 8 and 16 bits are bytes and words; others are cut from a
 * 32-byte window loaded at the byte of the step's first field (the stream's
 * slack covers the last step): 8 fields span ibits bytes, so every step has
 * the same bit phase and the lanes' selectors and shifts are computed once. */

AI __m256i scale(__m256i v, uint32_t mul) {
    if ((mul & (mul - 1)) == 0) return _mm256_sll_epi32(v, _mm_cvtsi32_si128(__builtin_ctz(mul)));
    return _mm256_mullo_epi32(v, _mm256_set1_epi32((int)mul));
}

static void decode(const uint8_t *s, int64_t f0, int64_t count, int ibits, uint32_t mul, uint32_t *out) {
    const uint64_t p0 = (uint64_t)f0 * (uint64_t)ibits;
    const uint8_t *base = s + (p0 >> 3);
    if (ibits == 8 || ibits == 16) {
        for (int64_t i = 0; i < count; i += 8, base += ibits) {
            const __m256i v = ibits == 8 ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)base))
                                         : _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)base));
            _mm256_store_si256((__m256i *)(void *)(out + i), scale(v, mul));
        }
        return;
    }
    const __m256i q = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                          _mm256_set1_epi32(ibits)),
                                       _mm256_set1_epi32((int)(p0 & 7)));
    const __m256i wlo = _mm256_srli_epi32(q, 5), whi = _mm256_add_epi32(wlo, _mm256_set1_epi32(1));
    const __m256i shr = _mm256_and_si256(q, _mm256_set1_epi32(31));
    const __m256i shl = _mm256_sub_epi32(_mm256_set1_epi32(32), shr); /* 32: sllv gives 0 */
    const __m256i mask = _mm256_set1_epi32((int)((1u << ibits) - 1u));
    for (int64_t i = 0; i < count; i += 8, base += ibits) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)base);
        const __m256i lo = _mm256_permutevar8x32_epi32(w, wlo), hi = _mm256_permutevar8x32_epi32(w, whi);
        const __m256i v = _mm256_or_si256(_mm256_srlv_epi32(lo, shr), _mm256_sllv_epi32(hi, shl));
        _mm256_store_si256((__m256i *)(void *)(out + i), scale(_mm256_and_si256(v, mask), mul));
    }
}

/* ---- one token: acc[g] (vw lanes) += x[j] * entry(b_g, j) -------------------------
 * Offsets are read in pairs (one 64-bit load); the fp16 codebook (cb16) is
 * preferred (half the cache footprint of cb32). */

AI __m128 e4(const float *cb, const uint16_t *h, uint64_t o, const int F16) {
    return F16 ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(const void *)(h + o))) : _mm_loadu_ps(cb + o);
}
AI __m256 e8(const float *cb, const uint16_t *h, uint64_t o, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + o))) : _mm256_loadu_ps(cb + o);
}

#define K1_BODY(VT, ZERO, SET1, FMA, STORE, ENT)                                                               \
    VT a[SPQR_CC_GMAX];                                                                                       \
    for (int g = 0; g < G; g++) a[g] = ZERO();                                                                \
    int64_t j = 0;                                                                                            \
    for (; j + 2 <= nj; j += 2) {                                                                             \
        const VT x0 = SET1(x[j]), x1 = SET1(x[j + 1]);                                                        \
        for (int g = 0; g < G; g++) {                                                                         \
            uint64_t p;                                                                                       \
            memcpy(&p, off + g * SPQR_CC_LDO + j, 8);                                                         \
            a[g] = FMA(x0, ENT(cb, h, (uint32_t)p, F16), a[g]);                                               \
            a[g] = FMA(x1, ENT(cb, h, p >> 32, F16), a[g]);                                                   \
        }                                                                                                     \
    }                                                                                                         \
    if (j < nj) {                                                                                             \
        const VT x0 = SET1(x[j]);                                                                             \
        for (int g = 0; g < G; g++) a[g] = FMA(x0, ENT(cb, h, off[g * SPQR_CC_LDO + j], F16), a[g]);          \
    }                                                                                                         \
    for (int g = 0; g < G; g++) STORE(out + g * 16, a[g]);

AI void k1(const float *cb, const uint16_t *h, const uint32_t *off, int64_t nj, const float *x, float *out,
           const int G, const int VW, const int F16) {
    if (VW == 4) {
        K1_BODY(__m128, _mm_setzero_ps, _mm_set1_ps, _mm_fmadd_ps, _mm_storeu_ps, e4)
    } else {
        K1_BODY(__m256, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps, e8)
    }
}

/* ---- several tokens: acc[g][q] (8 lanes = PT tokens x VW) ------------------------- */

AI void kt(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out, const int G, const int NQ,
           const int VW) {
    const float *cb = J->cb;
    __m256 a[SPQR_CC_GMAX][4];
    for (int g = 0; g < G; g++)
        for (int q = 0; q < NQ; q++) a[g][q] = _mm256_setzero_ps();
    if (VW == 8) { /* one token per register: broadcast x from the token rows */
        const float *xr[4];
        const int64_t C = J->L->cols;
        for (int q = 0; q < NQ; q++) xr[q] = J->X + (size_t)(q < J->nt ? q : J->nt - 1) * (size_t)C + j0;
        for (int64_t j = 0; j < nj; j++) {
            __m256 xv[4];
            for (int q = 0; q < NQ; q++) xv[q] = _mm256_set1_ps(xr[q][j]);
            for (int g = 0; g < G; g++) {
                const __m256 c = _mm256_loadu_ps(cb + off[g * SPQR_CC_LDO + j]);
                for (int q = 0; q < NQ; q++) a[g][q] = _mm256_fmadd_ps(c, xv[q], a[g][q]);
            }
        }
    } else { /* two tokens per register */
        const float *xq = J->xq + (size_t)j0 * NQ * 8;
        for (int64_t j = 0; j < nj; j++) {
            __m256 xv[4];
            for (int q = 0; q < NQ; q++) xv[q] = _mm256_load_ps(xq + (j * NQ + q) * 8);
            for (int g = 0; g < G; g++) {
                const __m256 c = _mm256_broadcast_ps((const __m128 *)(const void *)(cb + off[g * SPQR_CC_LDO + j]));
                for (int q = 0; q < NQ; q++) a[g][q] = _mm256_fmadd_ps(c, xv[q], a[g][q]);
            }
        }
    }
    for (int g = 0; g < G; g++)
        for (int q = 0; q < NQ; q++) {
            float *o = out + (g * NQ + q) * 16;
            _mm256_store_ps(o, _mm256_add_ps(_mm256_load_ps(o), a[g][q]));
        }
}

/* Blocks per group for nq token registers (G * nq accumulators + nq x). */
static int group_size(int nq) { return nq == 1 ? 8 : nq == 2 ? 4 : 2; }

#define K1(G, VW)                                                                                        \
    static void k1_##G##_##VW(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out) { \
        if (J->cb16) k1(J->cb, J->cb16, off, nj, J->X + j0, out, G, VW, 1);                                 \
        else k1(J->cb, NULL, off, nj, J->X + j0, out, G, VW, 0);                                           \
    }
#define KT(G, NQ, VW)                                                                                         \
    static void kt_##G##_##NQ##_##VW(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out) { \
        kt(J, off, j0, nj, out, G, NQ, VW);                                                                   \
    }
K1(8, 4) K1(1, 4) K1(8, 8) K1(1, 8)
KT(8, 1, 4) KT(1, 1, 4) KT(4, 2, 4) KT(1, 2, 4) KT(2, 4, 4) KT(1, 4, 4)
KT(8, 1, 8) KT(1, 1, 8) KT(4, 2, 8) KT(1, 2, 8) KT(2, 4, 8) KT(1, 4, 8)

typedef void (*kern_fn)(const spqr_cc_job *, const uint32_t *, int64_t, int64_t, float *);

static const kern_fn k_kt[2][3][2] = {
    {{kt_1_1_4, kt_8_1_4}, {kt_1_2_4, kt_4_2_4}, {kt_1_4_4, kt_2_4_4}},
    {{kt_1_1_8, kt_8_1_8}, {kt_1_2_8, kt_4_2_8}, {kt_1_4_8, kt_2_4_8}},
};
static const kern_fn k_k1[2][2] = {{k1_1_4, k1_8_4}, {k1_1_8, k1_8_8}};

/* One token: g blocks from b over columns [j0, j0 + nj), Y updated. */
static void group1(const spqr_cc_job *J, int64_t b, int g, kern_fn fn, int64_t j0, int64_t nj, uint32_t *offbuf,
                   float *acc) {
    const spqr_cc_layer *L = J->L;
    spqr_cc_prefetch_next(J, b, g, j0, nj);
    for (int k = 0; k < g; k++)
        decode(L->idx, (b + k) * L->cols + j0, nj, L->ibits, (uint32_t)L->d, offbuf + k * SPQR_CC_LDO);
    fn(J, offbuf, j0, nj, acc);
    for (int k = 0; k < g; k++) spqr_cc_store(J, b + k, acc + k * 16, j0 == 0);
}

/* Several tokens: g blocks from b over columns [j0, j0 + nj), added to acc. */
static void groupt(const spqr_cc_job *J, int64_t b, int g, kern_fn fn, int64_t j0, int64_t nj, uint32_t *offbuf,
                   float *acc) {
    const spqr_cc_layer *L = J->L;
    spqr_cc_prefetch_next(J, b, g, j0, nj);
    for (int k = 0; k < g; k++)
        decode(L->idx, (b + k) * L->cols + j0, nj, L->ibits, (uint32_t)L->d, offbuf + k * SPQR_CC_LDO);
    fn(J, offbuf, j0, nj, acc);
}

void spqr_cc_run_avx2(const spqr_cc_job *J, int64_t b0, int64_t b1, uint32_t *offbuf, float *accbuf) {
    const int vi = J->vw == 4 ? 0 : 1;
    const int qi = J->nq == 1 ? 0 : J->nq == 2 ? 1 : 2;
    const int64_t C = J->L->cols;
    if (J->nt == 1) {
        float acc[SPQR_CC_GMAX * 16] __attribute__((aligned(64)));
        int64_t b = b0;
        const int64_t cw = SPQR_CC_CW1;
        for (; b + 8 <= b1; b += 8)
            for (int64_t j0 = 0; j0 < C; j0 += cw) group1(J, b, 8, k_k1[vi][1], j0, C - j0 < cw ? C - j0 : cw, offbuf, acc);
        for (; b < b1; b++)
            for (int64_t j0 = 0; j0 < C; j0 += cw) group1(J, b, 1, k_k1[vi][0], j0, C - j0 < cw ? C - j0 : cw, offbuf, acc);
        return;
    }
    const int G = group_size(J->nq), per = J->nq * 16;
    const kern_fn full = k_kt[vi][qi][1], one = k_kt[vi][qi][0];
    memset(accbuf, 0, (size_t)(b1 - b0) * (size_t)per * sizeof(float));
    for (int64_t j0 = 0; j0 < C; j0 += J->cw) {
        const int64_t nj = C - j0 < J->cw ? C - j0 : J->cw;
        int64_t b = b0;
        for (; b + G <= b1; b += G) groupt(J, b, G, full, j0, nj, offbuf, accbuf + (b - b0) * per);
        for (; b < b1; b++) groupt(J, b, 1, one, j0, nj, offbuf, accbuf + (b - b0) * per);
    }
    for (int64_t b = b0; b < b1; b++) spqr_cc_store(J, b, accbuf + (b - b0) * per, 1);
}
