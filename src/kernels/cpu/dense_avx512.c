/* dense_avx512.c - AVX-512 dense matrix-vector rows (f32, f16, bf16 weights). */
#include <immintrin.h>

#include "cpu.h"

#define AI static inline __attribute__((always_inline))

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
