/* blas_fixed.h - BLAS products whose every output element is computed the
 * same way on any number of threads.
 *
 * A threaded BLAS splits a product among its threads by the thread count,
 * and the split changes the order of the floating-point sums (measured with
 * OpenBLAS 0.3: sgemm, ssyrk and dpotrf give different bits on 1 and 2
 * threads). These wrappers cut the output into tiles whose sizes depend on
 * the problem's shape only, compute each tile with one single-threaded BLAS
 * call, and spread the tiles over spqr_num_threads() threads. The sum over
 * the inner dimension is never split. The result is therefore identical on
 * any thread count (and equal to plain BLAS up to rounding).
 *
 * Row-major throughout, like the rest of spqr. Called inside an active
 * OpenMP parallel region, they run their tiles on the calling thread. */
#ifndef SPQR_BLAS_FIXED_H
#define SPQR_BLAS_FIXED_H

#include <stdbool.h>

/* C[M x N] = alpha * op(A) op(B) + beta * C, op(X) = X or X^T as in cblas_sgemm
 * (ta/tb: transpose A / B; A is M x K (or K x M), B is K x N (or N x K)). */
void spqr_sgemm_fixed(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc);
void spqr_dgemm_fixed(bool ta, bool tb, int M, int N, int K, double alpha, const double *A, int lda,
                      const double *B, int ldb, double beta, double *C, int ldc);

/* Upper triangle of C[N x N] = alpha * A^T A + beta * C, A is K x N (the
 * cblas ?syrk(RowMajor, Upper, Trans) case). The strict lower triangle of C
 * is not touched. */
void spqr_ssyrk_fixed(int N, int K, float alpha, const float *A, int lda, float beta, float *C, int ldc);
void spqr_dsyrk_fixed(int N, int K, double alpha, const double *A, int lda, double beta, double *C, int ldc);

/* C[M x N] = alpha * B A + beta * C, A symmetric N x N with its upper
 * triangle stored (cblas_ssymm(RowMajor, Right, Upper)); by row tiles. */
void spqr_ssymm_right_upper_fixed(int M, int N, float alpha, const float *A, int lda, const float *B, int ldb,
                                  float beta, float *C, int ldc);

/* The tile sizes used for an M x N output (exposed for the tests). */
void spqr_fixed_tiles(int M, int N, int *tm, int *tn);

#endif
