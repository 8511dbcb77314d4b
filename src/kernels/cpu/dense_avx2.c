/* dense_avx2.c - AVX2/FMA/F16C dense matrix-vector rows (f32, f16, bf16 weights). */
#include <immintrin.h>

#include "cpu.h"

#define AI static inline __attribute__((always_inline))

AI __m256 load_w8(spqr_dtype dt, const void *row, int64_t c) {
    if (dt == SPQR_DT_F32) return _mm256_loadu_ps((const float *)row + c);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + c));
    if (dt == SPQR_DT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI float w_at(spqr_dtype dt, const void *row, int64_t c) {
    if (dt == SPQR_DT_F32) return ((const float *)row)[c];
    const uint16_t h = ((const uint16_t *)row)[c];
    return dt == SPQR_DT_F16 ? _cvtsh_ss(h) : spqr_bf16_to_f32(h);
}

AI void gemv_rows_dt(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x, float *y) {
    const size_t es = dt == SPQR_DT_F32 ? 4 : 2;
    const char *base = W;
    const int64_t cv = cols & ~(int64_t)15;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const void *w[4];
        for (int i = 0; i < 4; i++) w[i] = base + (size_t)(r + i) * cols * es;
        __m256 a[4][2];
        for (int i = 0; i < 4; i++) a[i][0] = a[i][1] = _mm256_setzero_ps();
        for (int64_t c = 0; c < cv; c += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                a[i][0] = _mm256_fmadd_ps(load_w8(dt, w[i], c), x0, a[i][0]);
                a[i][1] = _mm256_fmadd_ps(load_w8(dt, w[i], c + 8), x1, a[i][1]);
            }
        }
        for (int i = 0; i < 4; i++) {
            float s = hsum8(_mm256_add_ps(a[i][0], a[i][1]));
            for (int64_t c = cv; c < cols; c++) s += w_at(dt, w[i], c) * x[c];
            y[r + i] = s;
        }
    }
    for (; r < r1; r++) {
        const void *w0 = base + (size_t)r * cols * es;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int64_t c = 0; c < cv; c += 16) {
            a0 = _mm256_fmadd_ps(load_w8(dt, w0, c), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(load_w8(dt, w0, c + 8), _mm256_loadu_ps(x + c + 8), a1);
        }
        float s = hsum8(_mm256_add_ps(a0, a1));
        for (int64_t c = cv; c < cols; c++) s += w_at(dt, w0, c) * x[c];
        y[r] = s;
    }
}

void spqr_gemv_rows_avx2(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x,
                         float *y) {
    if (dt == SPQR_DT_F32) gemv_rows_dt(SPQR_DT_F32, W, r0, r1, cols, x, y);
    else if (dt == SPQR_DT_F16) gemv_rows_dt(SPQR_DT_F16, W, r0, r1, cols, x, y);
    else gemv_rows_dt(SPQR_DT_BF16, W, r0, r1, cols, x, y);
}
