/* blas_fixed.c - thread-count independent BLAS products (see blas_fixed.h). */
#include "blas_fixed.h"

#include <cblas.h>
#include <omp.h>
#include <stddef.h>

#include "../../util/common.h"

/* ceil(n / parts) rounded up to a multiple of 16, within [lo, hi] */
static int tile_of(int n, int parts, int lo, int hi) {
    int t = (n + parts - 1) / parts;
    t = (t + 15) / 16 * 16;
    return t < lo ? lo : t > hi ? hi : t;
}

/* About 8 x 8 tiles for large outputs, never thinner than 32 (a function of
 * the shape only). */
void spqr_fixed_tiles(int M, int N, int *tm, int *tn) {
    *tm = tile_of(M, 8, 32, 512);
    *tn = tile_of(N, 8, 32, 256);
}

/* Products below this many multiply-adds run their tiles on the calling
 * thread: a parallel region costs more than it saves there (and a spinning
 * thread team is slow on a busy machine). */
#define SMALL_MACS (1 << 21)

/* Threads for a tile loop of `macs` multiply-adds: none extra inside an
 * active parallel region or for a small product. */
static int loop_threads(long ntiles, double macs) {
    if (omp_in_parallel() || ntiles < 2 || macs < SMALL_MACS) return 1;
    int t = spqr_num_threads();
    return t > ntiles ? (int)ntiles : t;
}

/* Inside each tile loop the BLAS must run on one thread: in an active
 * region OpenBLAS (OpenMP build) does so by itself; a one-thread region is
 * inactive, so the task's own thread count is set to 1 there (it ends with
 * the region). */
#define ONE_BLAS_THREAD() omp_set_num_threads(1)

#define GEMM_FIXED(NAME, T, BLAS)                                                                                    \
    void NAME(bool ta, bool tb, int M, int N, int K, T alpha, const T *A, int lda, const T *B, int ldb, T beta,     \
              T *C, int ldc) {                                                                                      \
        if (M <= 0 || N <= 0) return;                                                                               \
        int tm, tn;                                                                                                 \
        spqr_fixed_tiles(M, N, &tm, &tn);                                                                           \
        const long nm = (M + tm - 1) / tm, nn = (N + tn - 1) / tn, nt = nm * nn;                                    \
        const int nth = loop_threads(nt, (double)M * N * K);                                                        \
        _Pragma("omp parallel num_threads(nth)") {                                                                  \
            ONE_BLAS_THREAD();                                                                                      \
            _Pragma("omp for schedule(dynamic, 1)") for (long t = 0; t < nt; t++) {                                 \
                const int i0 = (int)(t / nn) * tm, j0 = (int)(t % nn) * tn;                                         \
                const int mi = M - i0 < tm ? M - i0 : tm, nj = N - j0 < tn ? N - j0 : tn;                           \
                const T *a = ta ? A + i0 : A + (size_t)i0 * (size_t)lda;                                            \
                const T *b = tb ? B + (size_t)j0 * (size_t)ldb : B + j0;                                            \
                BLAS(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, mi, nj, K,     \
                     alpha, a, lda, b, ldb, beta, C + (size_t)i0 * (size_t)ldc + j0, ldc);                          \
            }                                                                                                       \
        }                                                                                                           \
    }

GEMM_FIXED(spqr_sgemm_fixed, float, cblas_sgemm)
GEMM_FIXED(spqr_dgemm_fixed, double, cblas_dgemm)

/* Upper triangle by square tiles: ?syrk on the diagonal tiles, ?gemm above. */
#define SYRK_FIXED(NAME, T, SYRK, GEMM)                                                                              \
    void NAME(int N, int K, T alpha, const T *A, int lda, T beta, T *C, int ldc) {                                  \
        if (N <= 0) return;                                                                                         \
        int ts, unused;                                                                                             \
        spqr_fixed_tiles(N, N, &unused, &ts);                                                                       \
        const long nb = (N + ts - 1) / ts, nt = nb * nb;                                                            \
        const int nth = loop_threads(nb * (nb + 1) / 2, 0.5 * N * N * K);                                           \
        _Pragma("omp parallel num_threads(nth)") {                                                                  \
            ONE_BLAS_THREAD();                                                                                      \
            _Pragma("omp for schedule(dynamic, 1)") for (long t = 0; t < nt; t++) {                                 \
                const long bi = t / nb, bj = t % nb;                                                                \
                if (bj < bi) continue;                                                                              \
                const int i0 = (int)bi * ts, j0 = (int)bj * ts;                                                     \
                const int mi = N - i0 < ts ? N - i0 : ts, nj = N - j0 < ts ? N - j0 : ts;                           \
                T *c = C + (size_t)i0 * (size_t)ldc + j0;                                                           \
                if (bi == bj)                                                                                       \
                    SYRK(CblasRowMajor, CblasUpper, CblasTrans, mi, K, alpha, A + i0, lda, beta, c, ldc);           \
                else                                                                                                \
                    GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, mi, nj, K, alpha, A + i0, lda, A + j0, lda, beta, \
                         c, ldc);                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }

SYRK_FIXED(spqr_ssyrk_fixed, float, cblas_ssyrk, cblas_sgemm)
SYRK_FIXED(spqr_dsyrk_fixed, double, cblas_dsyrk, cblas_dgemm)

/* C = alpha B A + beta C with A symmetric (upper triangle stored), by row
 * tiles of B and C. */
void spqr_ssymm_right_upper_fixed(int M, int N, float alpha, const float *A, int lda, const float *B, int ldb,
                                  float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    const int tm = tile_of(M, 16, 16, 256);
    const long nt = (M + tm - 1) / tm;
    const int nth = loop_threads(nt, (double)M * N * N);
#pragma omp parallel num_threads(nth)
    {
        ONE_BLAS_THREAD();
#pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < nt; t++) {
            const int i0 = (int)t * tm, mi = M - i0 < tm ? M - i0 : tm;
            cblas_ssymm(CblasRowMajor, CblasRight, CblasUpper, mi, N, alpha, A, lda, B + (size_t)i0 * (size_t)ldb, ldb,
                        beta, C + (size_t)i0 * (size_t)ldc, ldc);
        }
    }
}
