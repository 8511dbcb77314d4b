/* ccgemm_avx512.c - AVX-512 (F/BW/VL/DQ) ClusComp kernels: index decoding
 * (16 or 32 fields per step, 32- or 16-bit offsets) and the fused codebook
 * products: one token (vw-wide accumulators), one or two tokens packed (the
 * entries of 16 / vw blocks in one zmm, d = 4 and 8) and several tokens
 * (pt tokens x vw lanes per register); see ccgemm_internal.h. */
#include <immintrin.h>

#include "ccgemm_internal.h"

#define AI static inline __attribute__((always_inline))

/* ---- index decoding ------------------------------------------------------------------
 * out[k] = field (f0 + k) * mul for k < count, rounded up to the step (16 or
 * 32 fields; out has room). Fields of 8 and 16 bits are bytes and words;
 * others are cut from a 64-byte window loaded at the byte of the step's
 * first field (the stream's slack covers the last step): a step spans a
 * whole number of bytes, so every step has the same bit phase and the lanes'
 * selectors and shifts are computed once. */

AI __m512i scale(__m512i v, uint32_t mul) {
    if ((mul & (mul - 1)) == 0) return _mm512_sll_epi32(v, _mm_cvtsi32_si128(__builtin_ctz(mul)));
    return _mm512_mullo_epi32(v, _mm512_set1_epi32((int)mul));
}

static void decode(const uint8_t *s, int64_t f0, int64_t count, int ibits, uint32_t mul, uint32_t *out) {
    const uint64_t p0 = (uint64_t)f0 * (uint64_t)ibits;
    const uint8_t *base = s + (p0 >> 3);
    if (ibits == 8 || ibits == 16) {
        for (int64_t i = 0; i < count; i += 16) {
            const __m512i v = ibits == 8 ? _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)base))
                                         : _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)base));
            _mm512_store_si512((void *)(out + i), scale(v, mul));
            base += 2 * ibits;
        }
    } else if (ibits < 16) { /* 32 fields of 16-bit lanes per step */
        static const uint16_t k32[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                         16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
        const __m512i q = _mm512_add_epi16(_mm512_mullo_epi16(_mm512_loadu_si512(k32), _mm512_set1_epi16((short)ibits)),
                                           _mm512_set1_epi16((short)(p0 & 7)));
        const __m512i wlo = _mm512_srli_epi16(q, 4), whi = _mm512_add_epi16(wlo, _mm512_set1_epi16(1));
        const __m512i shr = _mm512_and_si512(q, _mm512_set1_epi16(15));
        const __m512i shl = _mm512_sub_epi16(_mm512_set1_epi16(16), shr); /* 16: sllv gives 0 */
        const __m512i mask = _mm512_set1_epi16((short)((1u << ibits) - 1u));
        for (int64_t i = 0; i < count; i += 32, base += 4 * ibits) {
            const __m512i w = _mm512_loadu_si512((const void *)base);
            const __m512i lo = _mm512_permutexvar_epi16(wlo, w), hi = _mm512_permutexvar_epi16(whi, w);
            const __m512i v = _mm512_and_si512(_mm512_or_si512(_mm512_srlv_epi16(lo, shr), _mm512_sllv_epi16(hi, shl)), mask);
            _mm512_store_si512((void *)(out + i), scale(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), mul));
            _mm512_store_si512((void *)(out + i + 16), scale(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), mul));
        }
    } else { /* 16 fields of 32-bit lanes per step */
        const __m512i q = _mm512_add_epi32(
            _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                               _mm512_set1_epi32(ibits)),
            _mm512_set1_epi32((int)(p0 & 7)));
        const __m512i wlo = _mm512_srli_epi32(q, 5), whi = _mm512_add_epi32(wlo, _mm512_set1_epi32(1));
        const __m512i shr = _mm512_and_si512(q, _mm512_set1_epi32(31));
        const __m512i shl = _mm512_sub_epi32(_mm512_set1_epi32(32), shr); /* 32: sllv gives 0 */
        const __m512i mask = _mm512_set1_epi32((int)((1u << ibits) - 1u));
        for (int64_t i = 0; i < count; i += 16, base += 2 * ibits) {
            const __m512i w = _mm512_loadu_si512((const void *)base);
            const __m512i lo = _mm512_permutexvar_epi32(wlo, w), hi = _mm512_permutexvar_epi32(whi, w);
            const __m512i v = _mm512_or_si512(_mm512_srlv_epi32(lo, shr), _mm512_sllv_epi32(hi, shl));
            _mm512_store_si512((void *)(out + i), scale(_mm512_and_si512(v, mask), mul));
        }
    }
}

/* Narrow offsets (field * mul < 65536, fields of at most 15 bits or 8):
 * out16[k] for k < count rounded up to 32. */
static void decode_narrow(const uint8_t *s, int64_t f0, int64_t count, int ibits, uint32_t mul, uint16_t *out) {
    const uint64_t p0 = (uint64_t)f0 * (uint64_t)ibits;
    const uint8_t *base = s + (p0 >> 3);
    const int pow2 = (mul & (mul - 1)) == 0;
    const __m128i sh = _mm_cvtsi32_si128(__builtin_ctz(mul));
    const __m512i m = _mm512_set1_epi16((short)mul);
    if (ibits == 8) {
        for (int64_t i = 0; i < count; i += 32, base += 32) {
            const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)base));
            _mm512_store_si512((void *)(out + i), pow2 ? _mm512_sll_epi16(v, sh) : _mm512_mullo_epi16(v, m));
        }
        return;
    }
    static const uint16_t k32[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                     16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
    const __m512i q = _mm512_add_epi16(_mm512_mullo_epi16(_mm512_loadu_si512(k32), _mm512_set1_epi16((short)ibits)),
                                       _mm512_set1_epi16((short)(p0 & 7)));
    const __m512i wlo = _mm512_srli_epi16(q, 4), whi = _mm512_add_epi16(wlo, _mm512_set1_epi16(1));
    const __m512i shr = _mm512_and_si512(q, _mm512_set1_epi16(15));
    const __m512i shl = _mm512_sub_epi16(_mm512_set1_epi16(16), shr); /* 16: sllv gives 0 */
    const __m512i mask = _mm512_set1_epi16((short)((1u << ibits) - 1u));
    for (int64_t i = 0; i < count; i += 32, base += 4 * ibits) {
        const __m512i w = _mm512_loadu_si512((const void *)base);
        const __m512i lo = _mm512_permutexvar_epi16(wlo, w), hi = _mm512_permutexvar_epi16(whi, w);
        const __m512i v = _mm512_and_si512(_mm512_or_si512(_mm512_srlv_epi16(lo, shr), _mm512_sllv_epi16(hi, shl)), mask);
        _mm512_store_si512((void *)(out + i), pow2 ? _mm512_sll_epi16(v, sh) : _mm512_mullo_epi16(v, m));
    }
}

/* ---- one token: acc[g] (vw lanes) += x[j] * entry(b_g, j) -------------------------
 * Loads bound these loops: offsets are read in pairs (one 64-bit load), and
 * the fp16 codebook (cb16) is preferred (cvtph2ps folds the load; half the
 * cache footprint). Two accumulator sets keep 16 FMA chains in flight. */

AI __m128 e4(const float *cb, const uint16_t *h, uint64_t o, const int F16) {
    return F16 ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(const void *)(h + o))) : _mm_loadu_ps(cb + o);
}
AI __m256 e8(const float *cb, const uint16_t *h, uint64_t o, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + o))) : _mm256_loadu_ps(cb + o);
}
AI __m512 e16(const float *cb, const uint16_t *h, uint64_t o, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(h + o))) : _mm512_loadu_ps(cb + o);
}

#define K1_BODY(VT, ZERO, SET1, FMA, ADD, STORE, ENT)                                                          \
    VT a[SPQR_CC_GMAX], c[SPQR_CC_GMAX];                                                                     \
    for (int g = 0; g < G; g++) a[g] = c[g] = ZERO();                                                        \
    int64_t j = 0;                                                                                            \
    for (; j + 2 <= nj; j += 2) {                                                                             \
        const VT x0 = SET1(x[j]), x1 = SET1(x[j + 1]);                                                        \
        for (int g = 0; g < G; g++) {                                                                         \
            uint64_t p;                                                                                       \
            memcpy(&p, off + g * SPQR_CC_LDO + j, 8);                                                         \
            a[g] = FMA(x0, ENT(cb, h, (uint32_t)p, F16), a[g]);                                                    \
            c[g] = FMA(x1, ENT(cb, h, p >> 32, F16), c[g]);                                                        \
        }                                                                                                     \
    }                                                                                                         \
    if (j < nj) {                                                                                             \
        const VT x0 = SET1(x[j]);                                                                             \
        for (int g = 0; g < G; g++) a[g] = FMA(x0, ENT(cb, h, off[g * SPQR_CC_LDO + j], F16), a[g]);               \
    }                                                                                                         \
    for (int g = 0; g < G; g++) STORE(out + g * 16, ADD(a[g], c[g]));

AI void k1(const float *cb, const uint16_t *h, const uint32_t *off, int64_t nj, const float *x, float *out,
           const int G, const int VW, const int F16) {
    if (VW == 4) {
        K1_BODY(__m128, _mm_setzero_ps, _mm_set1_ps, _mm_fmadd_ps, _mm_add_ps, _mm_storeu_ps, e4)
    } else if (VW == 8) {
        K1_BODY(__m256, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, e8)
    } else {
        K1_BODY(__m512, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, e16)
    }
}

/* The same for d = 16 with narrow offsets, four per 64-bit load (fp16
 * codebook); d = 4 and 8 run packed (below). */
#define K1N_BODY(VT, ZERO, SET1, FMA, ADD, STORE, ENT)                                                         \
    VT a[SPQR_CC_GMAX], c[SPQR_CC_GMAX];                                                                     \
    for (int g = 0; g < G; g++) a[g] = c[g] = ZERO();                                                        \
    int64_t j = 0;                                                                                            \
    for (; j + 4 <= nj; j += 4) {                                                                             \
        const VT x0 = SET1(x[j]), x1 = SET1(x[j + 1]), x2 = SET1(x[j + 2]), x3 = SET1(x[j + 3]);              \
        for (int g = 0; g < G; g++) {                                                                         \
            uint64_t p;                                                                                       \
            memcpy(&p, off + g * 2 * SPQR_CC_LDO + j, 8);                                                     \
            a[g] = FMA(x0, ENT(NULL, h, (uint16_t)p, 1), a[g]);                                               \
            c[g] = FMA(x1, ENT(NULL, h, (uint16_t)(p >> 16), 1), c[g]);                                       \
            a[g] = FMA(x2, ENT(NULL, h, (uint16_t)(p >> 32), 1), a[g]);                                       \
            c[g] = FMA(x3, ENT(NULL, h, p >> 48, 1), c[g]);                                                   \
        }                                                                                                     \
    }                                                                                                         \
    for (; j < nj; j++) {                                                                                     \
        const VT x0 = SET1(x[j]);                                                                             \
        for (int g = 0; g < G; g++) a[g] = FMA(x0, ENT(NULL, h, off[g * 2 * SPQR_CC_LDO + j], 1), a[g]);      \
    }                                                                                                         \
    for (int g = 0; g < G; g++) STORE(out + g * 16, ADD(a[g], c[g]));

AI void k1n(const uint16_t *h, const uint16_t *off, int64_t nj, const float *x, float *out, const int G) {
    K1N_BODY(__m512, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, e16)
}

/* Eight blocks of d = 4 or 8 with the fp16 codebook: the entries of one
 * column for 16 / vw consecutive blocks share a zmm (one conversion and one
 * FMA per 16 lanes; the result lanes are those blocks' rows in order).
 * Offsets are narrow (four per 64-bit load) or wide (two per load). */
AI __m512 pack_entries(const uint16_t *h, const uint64_t *o, const int VW) {
    if (VW == 4) {
        __m128i e = _mm_loadl_epi64((const __m128i *)(const void *)(h + o[0]));
        e = _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(e), (const double *)(const void *)(h + o[1])));
        __m128i f = _mm_loadl_epi64((const __m128i *)(const void *)(h + o[2]));
        f = _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(f), (const double *)(const void *)(h + o[3])));
        return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(e), f, 1));
    }
    const __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(h + o[0]));
    const __m128i f = _mm_loadu_si128((const __m128i *)(const void *)(h + o[1]));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(e), f, 1));
}

AI void kpack(const spqr_cc_job *J, const uint32_t *offw, int64_t j0, int64_t nj, float *out, const int VW,
              const int NARROW, const int NT) {
    const int NB = 16 / VW, NZ = 8 / NB, CPL = NARROW ? 4 : 2; /* blocks per zmm, zmm per column */
    const uint16_t *h = J->cb16;
    const float *x[2];
    for (int t = 0; t < NT; t++)
        x[t] = J->X + (size_t)(t < J->nt ? t : J->nt - 1) * (size_t)J->L->cols + j0;
    /* one token: two accumulator sets (alternate columns) for enough FMA chains */
    const int NS = NT == 1 ? 2 : 1;
    __m512 a[2][4][2];
    for (int u = 0; u < NS; u++)
        for (int z = 0; z < NZ; z++)
            for (int t = 0; t < NT; t++) a[u][z][t] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + CPL <= nj; j += CPL) {
        uint64_t p[8];
        for (int g = 0; g < 8; g++) {
            if (NARROW) memcpy(&p[g], (const uint16_t *)(const void *)offw + g * 2 * SPQR_CC_LDO + j, 8);
            else memcpy(&p[g], offw + g * SPQR_CC_LDO + j, 8);
        }
        for (int k = 0; k < CPL; k++) {
            __m512 xv[2];
            for (int t = 0; t < NT; t++) xv[t] = _mm512_set1_ps(x[t][j + k]);
            for (int z = 0; z < NZ; z++) {
                uint64_t o[4];
                for (int i = 0; i < NB; i++)
                    o[i] = NARROW ? (uint16_t)(p[z * NB + i] >> (16 * k)) : (uint32_t)(p[z * NB + i] >> (32 * k));
                const __m512 e = pack_entries(h, o, VW);
                for (int t = 0; t < NT; t++) a[k & (NS - 1)][z][t] = _mm512_fmadd_ps(xv[t], e, a[k & (NS - 1)][z][t]);
            }
        }
    }
    for (; j < nj; j++) {
        __m512 xv[2];
        for (int t = 0; t < NT; t++) xv[t] = _mm512_set1_ps(x[t][j]);
        for (int z = 0; z < NZ; z++) {
            uint64_t o[4];
            for (int i = 0; i < NB; i++)
                o[i] = NARROW ? ((const uint16_t *)(const void *)offw)[(z * NB + i) * 2 * SPQR_CC_LDO + j]
                              : offw[(z * NB + i) * SPQR_CC_LDO + j];
            const __m512 e = pack_entries(h, o, VW);
            for (int t = 0; t < NT; t++) a[0][z][t] = _mm512_fmadd_ps(xv[t], e, a[0][z][t]);
        }
    }
    /* lanes of zmm z, token t: blocks z*NB .. z*NB + NB - 1, vw rows each;
     * out is [8 blocks][NT tokens][16] */
    float tmp[16] __attribute__((aligned(64)));
    for (int z = 0; z < NZ; z++)
        for (int t = 0; t < NT; t++) {
            _mm512_store_ps(tmp, NS == 2 ? _mm512_add_ps(a[0][z][t], a[NS - 1][z][t]) : a[0][z][t]);
            for (int i = 0; i < NB; i++) {
                float *o = out + ((z * NB + i) * NT + t) * 16;
                if (VW == 4) _mm_storeu_ps(o, _mm_load_ps(tmp + 4 * i));
                else _mm256_storeu_ps(o, _mm256_load_ps(tmp + 8 * i));
            }
        }
}

#define KP(VW, NARROW, NT)                                                                                   \
    static void kp_##VW##_##NARROW##_##NT(const spqr_cc_job *J, const uint32_t *o, int64_t j0, int64_t nj, \
                                          float *out) {                                                     \
        kpack(J, o, j0, nj, out, VW, NARROW, NT);                                                          \
    }
KP(4, 0, 1) KP(4, 0, 2) KP(4, 1, 1) KP(4, 1, 2) KP(8, 0, 1) KP(8, 0, 2) KP(8, 1, 1) KP(8, 1, 2)

/* ---- several tokens: acc[g][q] (16 lanes = PT tokens x VW) ----------------------- */

AI void kt(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out, const int G, const int NQ,
           const int VW) {
    const int PT = 16 / VW;
    const float *cb = J->cb;
    __m512 a[SPQR_CC_GMAX][8];
    for (int g = 0; g < G; g++)
        for (int q = 0; q < NQ; q++) a[g][q] = _mm512_setzero_ps();
    if (PT == 1) { /* VW == 16: broadcast x from the token rows */
        const float *xr[8];
        const int64_t C = J->L->cols;
        for (int q = 0; q < NQ; q++) xr[q] = J->X + (size_t)(q < J->nt ? q : J->nt - 1) * (size_t)C + j0;
        for (int64_t j = 0; j < nj; j++) {
            __m512 xv[8];
            for (int q = 0; q < NQ; q++) xv[q] = _mm512_set1_ps(xr[q][j]);
            for (int g = 0; g < G; g++) {
                const __m512 c = _mm512_loadu_ps(cb + off[g * SPQR_CC_LDO + j]);
                for (int q = 0; q < NQ; q++) a[g][q] = _mm512_fmadd_ps(c, xv[q], a[g][q]);
            }
        }
    } else {
        const float *xq = J->xq + (size_t)j0 * NQ * 16;
        for (int64_t j = 0; j < nj; j++) {
            __m512 xv[8];
            for (int q = 0; q < NQ; q++) xv[q] = _mm512_load_ps(xq + (j * NQ + q) * 16);
            for (int g = 0; g < G; g++) {
                const float *e = cb + off[g * SPQR_CC_LDO + j];
                const __m512 c = VW == 4 ? _mm512_broadcast_f32x4(_mm_loadu_ps(e))
                                         : _mm512_broadcast_f32x8(_mm256_loadu_ps(e));
                for (int q = 0; q < NQ; q++) a[g][q] = _mm512_fmadd_ps(c, xv[q], a[g][q]);
            }
        }
    }
    for (int g = 0; g < G; g++)
        for (int q = 0; q < NQ; q++) {
            float *o = out + (g * NQ + q) * 16;
            _mm512_store_ps(o, _mm512_add_ps(_mm512_load_ps(o), a[g][q]));
        }
}

/* Blocks per group for nq token registers (G * nq accumulators + nq x). */
static int group_size(int nq) { return nq <= 2 ? 8 : nq == 4 ? 4 : 2; }

#define K1(G, VW)                                                                                        \
    static void k1_##G##_##VW(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out) { \
        if (J->cb16) k1(J->cb, J->cb16, off, nj, J->X + j0, out, G, VW, 1);                                    \
        else k1(J->cb, NULL, off, nj, J->X + j0, out, G, VW, 0);                                              \
    }
#define KT(G, NQ, VW)                                                                                         \
    static void kt_##G##_##NQ##_##VW(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out) { \
        kt(J, off, j0, nj, out, G, NQ, VW);                                                                   \
    }
#define K1N(G)                                                                                                    \
    static void k1n_##G##_16(const spqr_cc_job *J, const uint32_t *off, int64_t j0, int64_t nj, float *out) {       \
        k1n(J->cb16, (const uint16_t *)(const void *)off, nj, J->X + j0, out, G);                                 \
    }
K1(8, 4) K1(1, 4) K1(8, 8) K1(1, 8) K1(8, 16) K1(1, 16)
K1N(8) K1N(1)
KT(8, 1, 4) KT(1, 1, 4) KT(8, 2, 4) KT(1, 2, 4) KT(4, 4, 4) KT(1, 4, 4) KT(2, 8, 4) KT(1, 8, 4)
KT(8, 1, 8) KT(1, 1, 8) KT(8, 2, 8) KT(1, 2, 8) KT(4, 4, 8) KT(1, 4, 8) KT(2, 8, 8) KT(1, 8, 8)
KT(8, 1, 16) KT(1, 1, 16) KT(8, 2, 16) KT(1, 2, 16) KT(4, 4, 16) KT(1, 4, 16) KT(2, 8, 16) KT(1, 8, 16)

typedef void (*kern_fn)(const spqr_cc_job *, const uint32_t *, int64_t, int64_t, float *);

/* [vw index][nq index][full group?] for several tokens */
static const kern_fn k_kt[3][4][2] = {
    {{kt_1_1_4, kt_8_1_4}, {kt_1_2_4, kt_8_2_4}, {kt_1_4_4, kt_4_4_4}, {kt_1_8_4, kt_2_8_4}},
    {{kt_1_1_8, kt_8_1_8}, {kt_1_2_8, kt_8_2_8}, {kt_1_4_8, kt_4_4_8}, {kt_1_8_8, kt_2_8_8}},
    {{kt_1_1_16, kt_8_1_16}, {kt_1_2_16, kt_8_2_16}, {kt_1_4_16, kt_4_4_16}, {kt_1_8_16, kt_2_8_16}},
};
static const kern_fn k_k1[3][2] = {{k1_1_4, k1_8_4}, {k1_1_8, k1_8_8}, {k1_1_16, k1_8_16}};
/* narrow offsets, d = 16 (d = 4 and 8 run packed) */
static const kern_fn k_k1n16[2] = {k1n_1_16, k1n_8_16};
/* packed groups of eight blocks: [vw 4/8][narrow][1, 2 tokens] */
static const kern_fn k_kpack[2][2][2] = {
    {{kp_4_0_1, kp_4_0_2}, {kp_4_1_1, kp_4_1_2}},
    {{kp_8_0_1, kp_8_0_2}, {kp_8_1_1, kp_8_1_2}},
};

/* One token, or one or two packed: g blocks from b over columns [j0, j0 + nj)
 * with a kernel of gk >= g blocks (the offsets of the missing blocks are
 * zero: entry 0, computed and dropped), Y updated. */
static void group1(const spqr_cc_job *J, int64_t b, int g, int gk, kern_fn fn, int64_t j0, int64_t nj,
                   uint32_t *offbuf, float *acc) {
    const spqr_cc_layer *L = J->L;
    spqr_cc_prefetch_next(J, b, g, j0, nj);
    if (J->narrow)
        for (int k = 0; k < g; k++)
            decode_narrow(L->idx, (b + k) * L->cols + j0, nj, L->ibits, (uint32_t)L->d,
                          (uint16_t *)(void *)(offbuf + k * SPQR_CC_LDO));
    else
        for (int k = 0; k < g; k++)
            decode(L->idx, (b + k) * L->cols + j0, nj, L->ibits, (uint32_t)L->d, offbuf + k * SPQR_CC_LDO);
    for (int k = g; k < gk; k++) memset(offbuf + k * SPQR_CC_LDO, 0, SPQR_CC_LDO * sizeof(uint32_t));
    fn(J, offbuf, j0, nj, acc);
    for (int k = 0; k < g; k++) spqr_cc_store(J, b + k, acc + k * J->nq * 16, j0 == 0);
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

void spqr_cc_run_avx512(const spqr_cc_job *J, int64_t b0, int64_t b1, uint32_t *offbuf, float *accbuf) {
    const int vi = J->vw == 4 ? 0 : J->vw == 8 ? 1 : 2;
    const int qi = J->nq == 1 ? 0 : J->nq == 2 ? 1 : J->nq == 4 ? 2 : 3;
    const int64_t C = J->L->cols;
    if (J->packed || J->nt == 1) {
        float acc[SPQR_CC_GMAX * 4 * 16] __attribute__((aligned(64)));
        const int64_t cw = SPQR_CC_CW1;
        if (J->packed) {
            const kern_fn fn = k_kpack[vi][J->narrow][qi];
            for (int64_t b = b0; b < b1; b += 8) {
                const int g = b1 - b < 8 ? (int)(b1 - b) : 8;
                for (int64_t j0 = 0; j0 < C; j0 += cw) group1(J, b, g, 8, fn, j0, C - j0 < cw ? C - j0 : cw, offbuf, acc);
            }
            return;
        }
        const kern_fn *k = J->narrow ? k_k1n16 : k_k1[vi]; /* narrow unpacked: vw 16 */
        int64_t b = b0;
        for (; b + 8 <= b1; b += 8)
            for (int64_t j0 = 0; j0 < C; j0 += cw) group1(J, b, 8, 8, k[1], j0, C - j0 < cw ? C - j0 : cw, offbuf, acc);
        for (; b < b1; b++)
            for (int64_t j0 = 0; j0 < C; j0 += cw) group1(J, b, 1, 1, k[0], j0, C - j0 < cw ? C - j0 : cw, offbuf, acc);
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
