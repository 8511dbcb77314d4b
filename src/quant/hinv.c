/* hinv.c - the inverse-Hessian Cholesky factor GPTQ works with.
 *
 * GPTQ needs U, the upper Cholesky factor of A^-1 (A^-1 = U^T U). Instead of
 * factoring A, inverting, and factoring the inverse (3 cubic steps), we use
 * the order reversal J (J x reverses x): with J A J = L L^T (lower Cholesky
 * of the reversed matrix), A^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is
 * upper triangular with a positive diagonal, hence THE upper Cholesky factor
 * of A^-1. Two cubic steps (Cholesky, triangular inverse), mathematically
 * identical. Reversing a row-major n x n matrix in both indices is reversing
 * its buffer.
 *
 * Both steps are blocked by hand (LAPACK's right-looking Cholesky and its
 * last-to-first triangular inverse, as in dpotrf / dtrtri) so that every
 * tile is computed by one single-threaded BLAS call and the tiles are spread
 * over the threads: the result is the same on any thread count, which a
 * threaded LAPACK does not give (docs/ALGORITHM.md, reproducibility).
 * spqr_chol_inverse_upper_ref is the same computation through LAPACK. */
#include "gptq_driver.h"

#include <cblas.h>
#include <lapacke.h>
#include <omp.h>

static void reverse(double *a, size_t n) {
    for (size_t i = 0, k = n - 1; i < k; i++, k--) {
        double t = a[i];
        a[i] = a[k];
        a[k] = t;
    }
}

static void zero_strict_lower(double *A, int n) {
    for (int i = 1; i < n; i++) memset(A + (size_t)i * n, 0, (size_t)i * sizeof *A);
}

spqr_status spqr_chol_inverse_upper_ref(double *A, int n) {
    if (n <= 0) return SPQR_ERR_INVALID_ARG;
    const size_t nn = (size_t)n * (size_t)n;
    reverse(A, nn);
    /* column-major upper factor U_c of the buffer = row-major lower L */
    lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, A, n);
    if (info != 0) return info > 0 ? SPQR_ERR_NUMERIC : SPQR_ERR_INTERNAL;
    /* U_c^-1 (column-major upper) = L^-1 (row-major lower) */
    info = LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'U', 'N', n, A, n);
    if (info != 0) return info > 0 ? SPQR_ERR_NUMERIC : SPQR_ERR_INTERNAL;
    reverse(A, nn);
    zero_strict_lower(A, n);
    return SPQR_OK;
}

/* Block size: a function of n only. */
static int block_of(int n) { return n < 512 ? 64 : n < 2048 ? 128 : 256; }

/* In place: the lower triangle of the row-major symmetric A becomes its
 * lower Cholesky factor L, then L^-1. P: n * block_of(n) doubles of
 * scratch. Returns 0, or 1 when A is not positive definite, 2 on a LAPACK
 * argument error. */
static int chol_then_inverse(double *A, int n, double *P, int nth) {
    const int nb = block_of(n);
    const size_t N = (size_t)n;
    int fail = 0;
#pragma omp parallel num_threads(nth)
    {
        omp_set_num_threads(1); /* single-threaded BLAS in every tile (see blas_fixed.c) */
        /* right-looking Cholesky: factor the diagonal block, solve the panel
         * below it, update the trailing lower triangle */
        for (int k0 = 0; k0 < n; k0 += nb) {
            const int kb = n - k0 < nb ? n - k0 : nb, r0 = k0 + kb;
            double *Akk = A + (size_t)k0 * N + k0;
#pragma omp single
            {
                if (!fail) {
                    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', kb, Akk, n);
                    if (info) fail = info > 0 ? 1 : 2;
                }
            } /* implied barrier: every thread sees fail */
            if (fail || r0 >= n) continue;
            const int nrt = (n - r0 + nb - 1) / nb;
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < nrt; t++) {
                const int i0 = r0 + t * nb, mi = n - i0 < nb ? n - i0 : nb;
                cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, mi, kb, 1.0, Akk, n,
                            A + (size_t)i0 * N + k0, n);
            }
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < nrt * nrt; t++) {
                const int bi = t / nrt, bj = t % nrt;
                if (bj > bi) continue;
                const int i0 = r0 + bi * nb, j0 = r0 + bj * nb;
                const int mi = n - i0 < nb ? n - i0 : nb, nj = n - j0 < nb ? n - j0 : nb;
                if (bi == bj)
                    cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, mi, kb, -1.0, A + (size_t)i0 * N + k0, n, 1.0,
                                A + (size_t)i0 * N + i0, n);
                else
                    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mi, nj, kb, -1.0, A + (size_t)i0 * N + k0, n,
                                A + (size_t)j0 * N + k0, n, 1.0, A + (size_t)i0 * N + j0, n);
            }
        }
        /* triangular inverse, block columns last to first: with the trailing
         * block T = L22^-1 done, L21 <- -T L21 L11^-1, then L11 <- L11^-1.
         * T L21 is formed per row tile from a copy P of L21 (row tile i needs
         * the rows of L21 above it too). */
        for (int j0 = fail ? -1 : (n - 1) / nb * nb; j0 >= 0; j0 -= nb) {
            const int jb = n - j0 < nb ? n - j0 : nb, r0 = j0 + jb, m = n - r0;
            if (m > 0) {
#pragma omp for schedule(static)
                for (int a = 0; a < m; a++) memcpy(P + (size_t)a * jb, A + (size_t)(r0 + a) * N + j0, jb * sizeof *P);
                const int nrt = (m + nb - 1) / nb;
#pragma omp for schedule(dynamic, 1)
                for (int t = 0; t < nrt; t++) {
                    const int a0 = t * nb, i0 = r0 + a0, mi = m - a0 < nb ? m - a0 : nb;
                    double *out = A + (size_t)i0 * N + j0; /* holds P's rows a0.. */
                    cblas_dtrmm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, mi, jb, 1.0,
                                A + (size_t)i0 * N + i0, n, out, n);
                    if (a0 > 0)
                        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mi, jb, a0, 1.0,
                                    A + (size_t)i0 * N + r0, n, P, jb, 1.0, out, n);
                    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, mi, jb, -1.0,
                                A + (size_t)j0 * N + j0, n, out, n);
                }
            }
#pragma omp single
            {
                if (!fail) {
                    lapack_int info = LAPACKE_dtrtri(LAPACK_ROW_MAJOR, 'L', 'N', jb, A + (size_t)j0 * N + j0, n);
                    if (info) fail = info > 0 ? 1 : 2;
                }
            }
        }
    }
    return fail;
}

spqr_status spqr_chol_inverse_upper(double *A, int n) {
    if (n <= 0) return SPQR_ERR_INVALID_ARG;
    double *P = malloc((size_t)n * (size_t)block_of(n) * sizeof *P);
    if (!P) return spqr_fail(SPQR_ERR_NOMEM, "out of memory (inverse Hessian scratch, %d x %d)", n, block_of(n));
    const int nt = (n + block_of(n) - 1) / block_of(n);
    int nth = spqr_num_threads();
    if (nth > nt * nt) nth = nt * nt;
    if (omp_in_parallel() || n < 256) nth = 1; /* a thread team costs more than it saves on small n */
    const size_t nn = (size_t)n * (size_t)n;
    reverse(A, nn);
    int fail = chol_then_inverse(A, n, P, nth);
    free(P);
    if (fail) return fail == 1 ? SPQR_ERR_NUMERIC : SPQR_ERR_INTERNAL;
    reverse(A, nn);
    zero_strict_lower(A, n);
    return SPQR_OK;
}
