/* test_blas_fixed.c - the fixed-tile BLAS wrappers (kernels/cpu/blas_fixed.h):
 * every transpose case, ragged shapes around the tile sizes and shapes large
 * enough for a threaded BLAS to split them; each result equals plain BLAS
 * within float rounding (|d| <= 1e-5 * sum |a||b| per element, double 1e-13)
 * and has the same bits on 1, 2 and 3 threads. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/blas_fixed.h"
#include "testutil.h"

static void check_sgemm(bool ta, bool tb, int M, int N, int K) {
    const int lda = ta ? M + 3 : K + 1, ldb = tb ? K + 2 : N + 5, ldc = N + 7; /* padded leading dimensions */
    float *A = tu_rand_vec((size_t)(ta ? K : M) * lda), *B = tu_rand_vec((size_t)(tb ? N : K) * ldb);
    float *C0 = tu_rand_vec((size_t)M * ldc), *R = malloc((size_t)M * ldc * sizeof *R);
    float *absA = malloc((size_t)(ta ? K : M) * lda * sizeof *absA), *absB = malloc((size_t)(tb ? N : K) * ldb * 4);
    for (size_t i = 0; i < (size_t)(ta ? K : M) * lda; i++) absA[i] = fabsf(A[i]);
    for (size_t i = 0; i < (size_t)(tb ? N : K) * ldb; i++) absB[i] = fabsf(B[i]);
    float *E = calloc((size_t)M * ldc, sizeof *E);
    memcpy(R, C0, (size_t)M * ldc * sizeof *R);
    const CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 0.75f, A, lda, B, ldb, 0.5f, R, ldc);
    cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 1.0f, absA, lda, absB, ldb, 0.0f, E, ldc);
    float *C[3];
    for (int t = 0; t < 3; t++) {
        C[t] = malloc((size_t)M * ldc * sizeof *C[t]);
        memcpy(C[t], C0, (size_t)M * ldc * sizeof *C0);
        spqr_set_num_threads(t + 1);
        spqr_sgemm_fixed(ta, tb, M, N, K, 0.75f, A, lda, B, ldb, 0.5f, C[t], ldc);
    }
    spqr_set_num_threads(0);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            size_t k = (size_t)i * ldc + j;
            if (j >= N) { /* padding untouched */
                assert_true(C[0][k] == C0[k]);
                continue;
            }
            assert_true(fabsf(C[0][k] - R[k]) <= 1e-5f * (E[k] + fabsf(C0[k])) + 1e-30f);
        }
    assert_memory_equal(C[0], C[1], (size_t)M * ldc * sizeof *C0);
    assert_memory_equal(C[0], C[2], (size_t)M * ldc * sizeof *C0);
    for (int t = 0; t < 3; t++) free(C[t]);
    free(A), free(B), free(C0), free(R), free(absA), free(absB), free(E);
}

static void test_sgemm(void **state) {
    (void)state;
    tu_seed(1);
    const int shapes[][3] = {{1, 1, 1}, {7, 33, 5}, {33, 31, 64}, {65, 257, 19}, {300, 700, 257}, {512, 1408, 512}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int c = 0; c < 4; c++) check_sgemm(c & 1, c & 2, shapes[s][0], shapes[s][1], shapes[s][2]);
    /* K = 0: C = beta C */
    float c[4] = {1, 2, 3, 4}, a[1] = {0}, b[1] = {0};
    spqr_sgemm_fixed(false, true, 2, 2, 0, 1.0f, a, 1, b, 1, 0.5f, c, 2);
    assert_true(c[0] == 0.5f && c[3] == 2.0f);
}

static void test_dgemm(void **state) {
    (void)state;
    tu_seed(2);
    const int M = 131, N = 77, K = 301;
    double *A = malloc(sizeof(double) * K * M), *B = malloc(sizeof(double) * K * N), *R = calloc((size_t)M * N, 8),
           *C1 = calloc((size_t)M * N, 8), *C2 = calloc((size_t)M * N, 8);
    for (int i = 0; i < K * M; i++) A[i] = tu_rand_normal();
    for (int i = 0; i < K * N; i++) B[i] = tu_rand_normal();
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 1.0, A, M, B, N, 0.0, R, N);
    spqr_set_num_threads(1);
    spqr_dgemm_fixed(true, false, M, N, K, 1.0, A, M, B, N, 0.0, C1, N);
    spqr_set_num_threads(2);
    spqr_dgemm_fixed(true, false, M, N, K, 1.0, A, M, B, N, 0.0, C2, N);
    spqr_set_num_threads(0);
    for (int i = 0; i < M * N; i++) assert_true(fabs(C1[i] - R[i]) <= 1e-13 * K * 4);
    assert_memory_equal(C1, C2, sizeof(double) * M * N);
    free(A), free(B), free(R), free(C1), free(C2);
}

static void test_syrk(void **state) {
    (void)state;
    tu_seed(3);
    const int sizes[][2] = {{1, 3}, {40, 9}, {257, 300}, {700, 512}};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        const int N = sizes[s][0], K = sizes[s][1], ld = N + 3;
        float *A = tu_rand_vec((size_t)K * ld), *R = malloc(sizeof(float) * N * ld), *C1 = malloc(sizeof(float) * N * ld),
              *C2 = malloc(sizeof(float) * N * ld);
        for (int i = 0; i < N * ld; i++) R[i] = C1[i] = C2[i] = (float)i; /* lower triangle must stay */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, N, K, 1.0f, A, ld, 1.0f, R, ld);
        spqr_set_num_threads(1);
        spqr_ssyrk_fixed(N, K, 1.0f, A, ld, 1.0f, C1, ld);
        spqr_set_num_threads(2);
        spqr_ssyrk_fixed(N, K, 1.0f, A, ld, 1.0f, C2, ld);
        spqr_set_num_threads(0);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < ld; j++) {
                const size_t k = (size_t)i * ld + j;
                if (j < i || j >= N) assert_true(C1[k] == (float)k);
                else assert_true(fabsf(C1[k] - R[k]) <= 1e-5f * (float)(K + fabsf(R[k])));
            }
        assert_memory_equal(C1, C2, sizeof(float) * N * ld);
        double *Ad = malloc(sizeof(double) * K * ld), *D1 = calloc((size_t)N * ld, 8), *D2 = calloc((size_t)N * ld, 8),
               *Rd = calloc((size_t)N * ld, 8);
        for (int i = 0; i < K * ld; i++) Ad[i] = A[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, N, K, 1.0, Ad, ld, 0.0, Rd, ld);
        spqr_set_num_threads(1);
        spqr_dsyrk_fixed(N, K, 1.0, Ad, ld, 0.0, D1, ld);
        spqr_set_num_threads(2);
        spqr_dsyrk_fixed(N, K, 1.0, Ad, ld, 0.0, D2, ld);
        spqr_set_num_threads(0);
        for (int i = 0; i < N * ld; i++) assert_true(fabs(D1[i] - Rd[i]) <= 1e-12 * K);
        assert_memory_equal(D1, D2, sizeof(double) * N * ld);
        free(A), free(R), free(C1), free(C2), free(Ad), free(D1), free(D2), free(Rd);
    }
}

static void test_symm(void **state) {
    (void)state;
    tu_seed(4);
    const int M = 301, N = 70;
    float *S = tu_rand_vec((size_t)N * N), *B = tu_rand_vec((size_t)M * N), *R = calloc((size_t)M * N, 4),
          *C1 = calloc((size_t)M * N, 4), *C2 = calloc((size_t)M * N, 4);
    cblas_ssymm(CblasRowMajor, CblasRight, CblasUpper, M, N, 1.0f, S, N, B, N, 0.0f, R, N);
    spqr_set_num_threads(1);
    spqr_ssymm_right_upper_fixed(M, N, 1.0f, S, N, B, N, 0.0f, C1, N);
    spqr_set_num_threads(2);
    spqr_ssymm_right_upper_fixed(M, N, 1.0f, S, N, B, N, 0.0f, C2, N);
    spqr_set_num_threads(0);
    for (int i = 0; i < M * N; i++) assert_true(fabsf(C1[i] - R[i]) <= 1e-5f * N);
    assert_memory_equal(C1, C2, sizeof(float) * M * N);
    free(S), free(B), free(R), free(C1), free(C2);
}

static void test_tiles_depend_on_shape_only(void **state) {
    (void)state;
    int a, b, c, d;
    spqr_fixed_tiles(2048, 11008, &a, &b);
    spqr_set_num_threads(1);
    spqr_fixed_tiles(2048, 11008, &c, &d);
    spqr_set_num_threads(0);
    assert_int_equal(a, c);
    assert_int_equal(b, d);
    assert_int_equal(a, 256); /* 2048 / 8 */
    assert_int_equal(b, 256); /* capped */
    spqr_fixed_tiles(5, 5, &a, &b);
    assert_int_equal(a, 32);
    assert_int_equal(b, 32);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgemm), cmocka_unit_test(test_dgemm), cmocka_unit_test(test_syrk),
        cmocka_unit_test(test_symm),  cmocka_unit_test(test_tiles_depend_on_shape_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
