/* cluster_assign.c - nearest-codeword search for the clustering module.
 *
 * Candidates come from the expansion ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2
 * (||x||^2 dropped: it does not change the arg-min) evaluated in float, by
 * one of two engines (cluster_internal.h):
 *
 *  - SGEMM: per tile of 128 points and 512 codewords, cblas_sgemm writes
 *    -2 X C^T (a 256 KiB tile that stays in L2), then a scan adds ||c||^2
 *    and keeps the running arg-min (AVX-512, AVX2 or scalar). OpenBLAS built
 *    for OpenMP runs single-threaded inside our parallel region, which is
 *    what we want: we parallelise over tiles of points. Measured on 2 Zen 5
 *    cores (d = 4, N = 262144, k = 4096): parallelising over tiles with
 *    single-threaded sgemm beat one multithreaded sgemm per 4096-point tile
 *    1.6 s vs 3.1 s with a scalar scan; a SIMD scan then halves the time
 *    again (0.62 s): with d = 4..8 the sgemm is write-bound and the scan of
 *    the tile costs as much as the product.
 *
 *  - FUSED: the codebook is stored transposed in blocks of 16 (AVX-512) or
 *    8 (AVX2) codewords, [block][dim][lane], with ||c||^2 per lane (+inf in
 *    the padding). For 8 points at a time the kernel accumulates
 *    ||c||^2 - 2 x.c for one block in registers with d FMAs per point, then
 *    compares and keeps the per-lane minimum and its block: no distance tile
 *    ever goes to memory. Codeword blocks are visited in chunks of <= 256 KiB
 *    so the chunk stays in L2 for the 256 points of a tile.
 *
 * Measured (bench_cluster, 2 Zen 5 cores shared with other jobs, best of 3,
 * GFLOP/s counted as 2 N k d): N = 1M, d = 4, k = 4096: FUSED 0.15-0.17 s
 * (~210 GFLOP/s), SGEMM 0.93-1.04 s (33-37 GFLOP/s); N = 4.2M, d = 4,
 * k = 10000: 1.1 s vs 10.6 s; N = 2.1M, d = 8, k = 10000: 2.2 s vs 12.2 s.
 * So AUTO uses FUSED wherever AVX2 exists.
 *
 * Ties: both engines return the lowest index among equal float minima.
 * Near ties can be mis-ordered by float rounding (|error| ~ 1e-7 of
 * ||x||^2 + ||c||^2), so the pass recomputes the chosen codeword's distance
 * exactly in double, and with keep_prev compares it with the previous one.
 *
 * Memory: per thread one 256 KiB tile (SGEMM) plus the packed codebook
 * (k*(d+1) floats) and one double per tile of 256 points for the ordered
 * reduction of the objective (N/32 bytes).
 */
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/cpu.h"
#include "cluster_internal.h"
#include "../../kernels/cpu/blas_fixed.h"

#define SG_ROWS 128  /* points per sgemm tile   */
#define SG_COLS 512  /* codewords per sgemm tile */
#define FUSED_P 8    /* points per fused group  */
#define FUSED_CHUNK_BYTES (256 * 1024)

typedef enum impl { IMPL_SGEMM_REF, IMPL_SGEMM_AVX2, IMPL_SGEMM_AVX512, IMPL_FUSED_AVX2, IMPL_FUSED_AVX512 } impl;

static cl_engine g_engine = CL_ENGINE_AUTO;

void spqr_cluster_engine_force(cl_engine e) { g_engine = e; }

static impl pick_impl(void) {
    spqr_cpu_kind kind = spqr_cpu_kind_active();
    if (kind == SPQR_CPU_REF) return IMPL_SGEMM_REF;
    if (g_engine == CL_ENGINE_SGEMM) return kind == SPQR_CPU_AVX512 ? IMPL_SGEMM_AVX512 : IMPL_SGEMM_AVX2;
    return kind == SPQR_CPU_AVX512 ? IMPL_FUSED_AVX512 : IMPL_FUSED_AVX2;
}

const char *spqr_cluster_engine_name(void) {
    switch (pick_impl()) {
    case IMPL_SGEMM_REF: return "sgemm+scalar";
    case IMPL_SGEMM_AVX2: return "sgemm+avx2";
    case IMPL_SGEMM_AVX512: return "sgemm+avx512";
    case IMPL_FUSED_AVX2: return "fused-avx2";
    case IMPL_FUSED_AVX512: return "fused-avx512";
    }
    return "?";
}

/* ---- the codebook prepared for search ------------------------------------- */

typedef struct search {
    impl im;
    int k, d;
    const float *C;
    float *cn;     /* SGEMM: ||c||^2 [k]                                    */
    int lanes;     /* FUSED: 16 or 8                                        */
    int nblk;      /* FUSED: blocks of `lanes` codewords                     */
    int blk_chunk; /* FUSED: blocks per L2 chunk                            */
    float *Ct;     /* FUSED: [nblk][d][lanes]                               */
    float *cnb;    /* FUSED: [nblk*lanes], +inf in the padding              */
} search;

static void search_free(search *s) {
    free(s->cn);
    free(s->Ct);
    free(s->cnb);
}

static float norm2f(const float *c, int d) {
    double s = 0;
    for (int t = 0; t < d; t++) s += (double)c[t] * c[t];
    return (float)s;
}

static spqr_status search_init(search *s, const float *C, int k, int d) {
    memset(s, 0, sizeof *s);
    s->im = pick_impl();
    s->k = k;
    s->d = d;
    s->C = C;
    if (s->im == IMPL_FUSED_AVX2 || s->im == IMPL_FUSED_AVX512) {
        const int L = s->im == IMPL_FUSED_AVX512 ? 16 : 8;
        s->lanes = L;
        s->nblk = (k + L - 1) / L;
        size_t per_blk = (size_t)d * L * sizeof(float);
        s->blk_chunk = (int)(FUSED_CHUNK_BYTES / per_blk);
        if (s->blk_chunk < 1) s->blk_chunk = 1;
        s->Ct = spqr_aligned_alloc((size_t)s->nblk * per_blk);
        s->cnb = spqr_aligned_alloc((size_t)s->nblk * L * sizeof(float));
        if (!s->Ct || !s->cnb) {
            search_free(s);
            return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (codebook of %d x %d)", k, d);
        }
        for (int b = 0; b < s->nblk; b++)
            for (int l = 0; l < L; l++) {
                int j = b * L + l;
                float *dst = s->Ct + (size_t)b * d * L + l;
                if (j < k) {
                    for (int t = 0; t < d; t++) dst[(size_t)t * L] = C[(size_t)j * d + t];
                    s->cnb[j] = norm2f(C + (size_t)j * d, d);
                } else {
                    for (int t = 0; t < d; t++) dst[(size_t)t * L] = 0.0f;
                    s->cnb[j] = INFINITY;
                }
            }
    } else {
        s->cn = spqr_malloc_array((size_t)k, sizeof(float));
        if (!s->cn) return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (codebook of %d x %d)", k, d);
        for (int j = 0; j < k; j++) s->cn[j] = norm2f(C + (size_t)j * d, d);
    }
    return SPQR_OK;
}

/* ---- arg-min scans of an sgemm tile row: v[j] = r[j] + cn[j] ----------------- */

static void scan_scalar(const float *r, const float *cn, int n, uint32_t j0, float *best, uint32_t *bi) {
    float b = *best;
    int bj = -1;
    for (int j = 0; j < n; j++) {
        float v = r[j] + cn[j];
        if (v < b) {
            b = v;
            bj = j;
        }
    }
    if (bj >= 0) {
        *best = b;
        *bi = j0 + (uint32_t)bj;
    }
}

/* Merge per-lane (value, index) minima: lowest index among equal values;
 * update the running best only when strictly smaller. */
static inline void merge_lanes(const float *vv, const int32_t *ii, int L, float *best, uint32_t *bi) {
    float b = INFINITY;
    int32_t bj = -1;
    for (int l = 0; l < L; l++)
        if (ii[l] >= 0 && (vv[l] < b || (vv[l] == b && ii[l] < bj))) {
            b = vv[l];
            bj = ii[l];
        }
    if (bj >= 0 && b < *best) {
        *best = b;
        *bi = (uint32_t)bj;
    }
}

__attribute__((target("avx2,fma"))) static void scan_avx2(const float *r, const float *cn, int n, uint32_t j0,
                                                          float *best, uint32_t *bi) {
    __m256 mv = _mm256_set1_ps(INFINITY);
    __m256i mi = _mm256_set1_epi32(-1);
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)j0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i inc = _mm256_set1_epi32(8);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(cn + j));
        __m256 lt = _mm256_cmp_ps(v, mv, _CMP_LT_OQ);
        mv = _mm256_blendv_ps(mv, v, lt);
        mi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(mi), _mm256_castsi256_ps(idx), lt));
        idx = _mm256_add_epi32(idx, inc);
    }
    float vv[8];
    int32_t ii[8];
    _mm256_storeu_ps(vv, mv);
    _mm256_storeu_si256((__m256i *)ii, mi);
    merge_lanes(vv, ii, 8, best, bi);
    if (j < n) scan_scalar(r + j, cn + j, n - j, j0 + (uint32_t)j, best, bi);
}

__attribute__((target("avx512f,fma"))) static void scan_avx512(const float *r, const float *cn, int n, uint32_t j0,
                                                               float *best, uint32_t *bi) {
    __m512 mv = _mm512_set1_ps(INFINITY);
    __m512i mi = _mm512_set1_epi32(-1);
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)j0),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512i inc = _mm512_set1_epi32(16);
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 v = _mm512_add_ps(_mm512_loadu_ps(r + j), _mm512_loadu_ps(cn + j));
        __mmask16 lt = _mm512_cmp_ps_mask(v, mv, _CMP_LT_OQ);
        mv = _mm512_mask_mov_ps(mv, lt, v);
        mi = _mm512_mask_mov_epi32(mi, lt, idx);
        idx = _mm512_add_epi32(idx, inc);
    }
    float vv[16];
    int32_t ii[16];
    _mm512_storeu_ps(vv, mv);
    _mm512_storeu_si512(ii, mi);
    merge_lanes(vv, ii, 16, best, bi);
    if (j < n) scan_scalar(r + j, cn + j, n - j, j0 + (uint32_t)j, best, bi);
}

/* SGEMM engine on m <= CL_TILE points; buf holds SG_ROWS*SG_COLS floats. */
static void tile_sgemm(const search *s, const float *X, int m, float *bestv, uint32_t *besti, float *buf) {
    const int d = s->d, k = s->k;
    for (int s0 = 0; s0 < m; s0 += SG_ROWS) {
        int ms = m - s0 < SG_ROWS ? m - s0 : SG_ROWS;
        for (int i = 0; i < ms; i++) {
            bestv[s0 + i] = INFINITY;
            besti[s0 + i] = 0;
        }
        for (int j0 = 0; j0 < k; j0 += SG_COLS) {
            int n = k - j0 < SG_COLS ? k - j0 : SG_COLS;
            spqr_sgemm_fixed(false, true, ms, n, d, -2.0f, X + (size_t)s0 * d, d,
                        s->C + (size_t)j0 * d, d, 0.0f, buf, n);
            for (int i = 0; i < ms; i++) {
                const float *r = buf + (size_t)i * n;
                switch (s->im) {
                case IMPL_SGEMM_AVX512: scan_avx512(r, s->cn + j0, n, (uint32_t)j0, bestv + s0 + i, besti + s0 + i); break;
                case IMPL_SGEMM_AVX2: scan_avx2(r, s->cn + j0, n, (uint32_t)j0, bestv + s0 + i, besti + s0 + i); break;
                default: scan_scalar(r, s->cn + j0, n, (uint32_t)j0, bestv + s0 + i, besti + s0 + i); break;
                }
            }
        }
    }
}

/* ---- fused kernels ------------------------------------------------------------ */

/* Blocks [b0, b1) against m points; updates bestv/besti (strictly smaller). */
__attribute__((target("avx512f,fma"))) static void fused_avx512(const search *s, const float *X, int m, int b0,
                                                                int b1, float *bestv, uint32_t *besti) {
    const int d = s->d;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    float xs[FUSED_P][CL_MAX_D];
    for (int g = 0; g < m; g += FUSED_P) {
        int np = m - g < FUSED_P ? m - g : FUSED_P;
        for (int p = 0; p < FUSED_P; p++) {
            const float *x = X + (size_t)(g + (p < np ? p : 0)) * d;
            for (int t = 0; t < d; t++) xs[p][t] = -2.0f * x[t];
        }
        __m512 mv[FUSED_P];
        __m512i mi[FUSED_P];
        for (int p = 0; p < FUSED_P; p++) {
            mv[p] = _mm512_set1_ps(INFINITY);
            mi[p] = _mm512_set1_epi32(-1);
        }
        for (int b = b0; b < b1; b++) {
            const float *cb = s->Ct + (size_t)b * d * 16;
            __m512 cn = _mm512_load_ps(s->cnb + (size_t)b * 16);
            __m512 acc[FUSED_P];
            for (int p = 0; p < FUSED_P; p++) acc[p] = cn;
            for (int t = 0; t < d; t++) {
                __m512 c = _mm512_load_ps(cb + (size_t)t * 16);
                for (int p = 0; p < FUSED_P; p++) acc[p] = _mm512_fmadd_ps(c, _mm512_set1_ps(xs[p][t]), acc[p]);
            }
            __m512i bi = _mm512_add_epi32(_mm512_set1_epi32(b * 16), iota);
            for (int p = 0; p < FUSED_P; p++) {
                __mmask16 lt = _mm512_cmp_ps_mask(acc[p], mv[p], _CMP_LT_OQ);
                mv[p] = _mm512_mask_mov_ps(mv[p], lt, acc[p]);
                mi[p] = _mm512_mask_mov_epi32(mi[p], lt, bi);
            }
        }
        for (int p = 0; p < np; p++) { /* lowest index among the lanes at the minimum */
            const float v = _mm512_reduce_min_ps(mv[p]);
            if (v < bestv[g + p]) {
                const __mmask16 at = _mm512_cmp_ps_mask(mv[p], _mm512_set1_ps(v), _CMP_EQ_OQ);
                bestv[g + p] = v;
                besti[g + p] = (uint32_t)_mm512_mask_reduce_min_epi32(at, mi[p]);
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void fused_avx2(const search *s, const float *X, int m, int b0, int b1,
                                                           float *bestv, uint32_t *besti) {
    const int d = s->d;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    float xs[FUSED_P][CL_MAX_D];
    for (int g = 0; g < m; g += FUSED_P) {
        int np = m - g < FUSED_P ? m - g : FUSED_P;
        for (int p = 0; p < FUSED_P; p++) {
            const float *x = X + (size_t)(g + (p < np ? p : 0)) * d;
            for (int t = 0; t < d; t++) xs[p][t] = -2.0f * x[t];
        }
        __m256 mv[FUSED_P];
        __m256i mi[FUSED_P];
        for (int p = 0; p < FUSED_P; p++) {
            mv[p] = _mm256_set1_ps(INFINITY);
            mi[p] = _mm256_set1_epi32(-1);
        }
        for (int b = b0; b < b1; b++) {
            const float *cb = s->Ct + (size_t)b * d * 8;
            __m256 cn = _mm256_load_ps(s->cnb + (size_t)b * 8);
            __m256 acc[FUSED_P];
            for (int p = 0; p < FUSED_P; p++) acc[p] = cn;
            for (int t = 0; t < d; t++) {
                __m256 c = _mm256_load_ps(cb + (size_t)t * 8);
                for (int p = 0; p < FUSED_P; p++) acc[p] = _mm256_fmadd_ps(c, _mm256_broadcast_ss(&xs[p][t]), acc[p]);
            }
            __m256i bi = _mm256_add_epi32(_mm256_set1_epi32(b * 8), iota);
            for (int p = 0; p < FUSED_P; p++) {
                __m256 lt = _mm256_cmp_ps(acc[p], mv[p], _CMP_LT_OQ);
                mv[p] = _mm256_blendv_ps(mv[p], acc[p], lt);
                mi[p] = _mm256_castps_si256(
                    _mm256_blendv_ps(_mm256_castsi256_ps(mi[p]), _mm256_castsi256_ps(bi), lt));
            }
        }
        for (int p = 0; p < np; p++) { /* lowest index among the lanes at the minimum */
            __m256 m1 = _mm256_min_ps(mv[p], _mm256_permute2f128_ps(mv[p], mv[p], 1));
            m1 = _mm256_min_ps(m1, _mm256_shuffle_ps(m1, m1, _MM_SHUFFLE(1, 0, 3, 2)));
            m1 = _mm256_min_ps(m1, _mm256_shuffle_ps(m1, m1, _MM_SHUFFLE(2, 3, 0, 1)));
            const float v = _mm256_cvtss_f32(m1);
            if (v < bestv[g + p]) {
                unsigned at = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(mv[p], _mm256_set1_ps(v), _CMP_EQ_OQ));
                int32_t ii[8];
                _mm256_storeu_si256((__m256i *)ii, mi[p]);
                int32_t b = INT32_MAX;
                for (; at; at &= at - 1) {
                    const int32_t x = ii[__builtin_ctz(at)];
                    b = x < b ? x : b;
                }
                bestv[g + p] = v;
                besti[g + p] = (uint32_t)b;
            }
        }
    }
}

static void tile_fused(const search *s, const float *X, int m, float *bestv, uint32_t *besti) {
    for (int i = 0; i < m; i++) {
        bestv[i] = INFINITY;
        besti[i] = 0;
    }
    for (int b0 = 0; b0 < s->nblk; b0 += s->blk_chunk) {
        int b1 = b0 + s->blk_chunk < s->nblk ? b0 + s->blk_chunk : s->nblk;
        if (s->im == IMPL_FUSED_AVX512)
            fused_avx512(s, X, m, b0, b1, bestv, besti);
        else
            fused_avx2(s, X, m, b0, b1, bestv, besti);
    }
}

/* ---- the pass --------------------------------------------------------------------- */

spqr_status cl_assign_pass(const float *X, int64_t N, int d, const float *C, int k, const float *w, int keep_prev,
                           uint32_t *assign, cl_pass *res) {
    search s;
    spqr_status st = search_init(&s, C, k, d);
    if (st != SPQR_OK) return st;
    const int64_t ntiles = (N + CL_TILE - 1) / CL_TILE;
    double *tsse = spqr_malloc_array((size_t)ntiles, sizeof(double));
    if (!tsse) {
        search_free(&s);
        return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (%lld points)", (long long)N);
    }
    const int fused = s.im == IMPL_FUSED_AVX2 || s.im == IMPL_FUSED_AVX512;
    int nth = spqr_num_threads();
    if ((int64_t)nth > ntiles) nth = (int)ntiles;
    int64_t changed = 0;
    int nomem = 0;
#pragma omp parallel num_threads(nth) reduction(+ : changed)
    {
        float *buf = fused ? NULL : spqr_aligned_alloc((size_t)SG_ROWS * SG_COLS * sizeof(float));
        float bestv[CL_TILE];
        uint32_t besti[CL_TILE];
        if (!fused && !buf) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int64_t ti = 0; ti < ntiles; ti++) {
            if (!fused && !buf) continue;
            const int64_t i0 = ti * CL_TILE;
            const int m = (int)(N - i0 < CL_TILE ? N - i0 : CL_TILE);
            const float *Xt = X + (size_t)i0 * d;
            if (fused)
                tile_fused(&s, Xt, m, bestv, besti);
            else
                tile_sgemm(&s, Xt, m, bestv, besti, buf);
            double sse = 0;
            for (int i = 0; i < m; i++) {
                const float *x = Xt + (size_t)i * d;
                uint32_t j = besti[i];
                double dj = cl_dist2(x, C + (size_t)j * d, d);
                if (keep_prev) {
                    uint32_t p = assign[i0 + i];
                    if (p != j) {
                        double dp = cl_dist2(x, C + (size_t)p * d, d);
                        if (dj < dp)
                            changed++;
                        else {
                            j = p;
                            dj = dp;
                        }
                    }
                }
                assign[i0 + i] = j;
                sse += (w ? (double)w[i0 + i] : 1.0) * dj;
            }
            tsse[ti] = sse;
        }
        free(buf);
    }
    search_free(&s);
    if (nomem) {
        free(tsse);
        return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (distance tiles)");
    }
    double sse = 0;
    for (int64_t ti = 0; ti < ntiles; ti++) sse += tsse[ti];
    free(tsse);
    if (res) {
        res->changed = changed;
        res->sse = sse;
    }
    return SPQR_OK;
}
