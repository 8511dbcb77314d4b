/* hinv.c - the inverse-Hessian Cholesky factor GPTQ works with.
 *
 * GPTQ needs U, the upper Cholesky factor of A^-1 (A^-1 = U^T U). Instead of
 * factoring A, inverting, and factoring the inverse (3 cubic steps), we use
 * the order reversal J (J x reverses x): with J A J = L L^T (lower Cholesky
 * of the reversed matrix), A^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is
 * upper triangular with a positive diagonal, hence THE upper Cholesky factor
 * of A^-1. Two cubic steps (dpotrf + dtrtri), mathematically identical.
 *
 * Reversing a row-major n x n matrix in both indices is reversing its
 * buffer. A row-major symmetric buffer read as column-major is the same
 * matrix, and a column-major upper factor read as row-major is its transpose
 * (lower), so LAPACK's column-major routines work on the buffer in place. */
#include "gptq_driver.h"

#include <lapacke.h>

static void reverse(double *a, size_t n) {
    for (size_t i = 0, k = n - 1; i < k; i++, k--) {
        double t = a[i];
        a[i] = a[k];
        a[k] = t;
    }
}

spqr_status spqr_chol_inverse_upper(double *A, int n) {
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
    for (int i = 1; i < n; i++) memset(A + (size_t)i * n, 0, (size_t)i * sizeof *A);
    return SPQR_OK;
}
