/* host emulation of the two cuBLAS calls: column-major, naive loops in double */
#pragma once
typedef int cublasStatus_t;
typedef void *cublasHandle_t;
typedef enum { CUBLAS_OP_N, CUBLAS_OP_T } cublasOperation_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_DEFAULT_MATH = 0 };
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = (void *)1; return 0; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t) { return 0; }
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t, int) { return 0; }
static inline cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
    int n, int k, const float *alpha, const float *A, int lda, long long sA, const float *B, int ldb, long long sB,
    const float *beta, float *C, int ldc, long long sC, int batch) {
    if (m <= 0 || n <= 0 || k <= 0 || batch <= 0) return 7;
    if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m) return 7; /* INVALID_VALUE */
    for (int b = 0; b < batch; b++) {
        const float *Ab = A + b * sA, *Bb = B + b * sB;
        float *Cb = C + b * sC;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                double s = 0;
                for (int l = 0; l < k; l++) {
                    double a = ta == CUBLAS_OP_N ? Ab[i + (long)l * lda] : Ab[l + (long)i * lda];
                    double bb = tb == CUBLAS_OP_N ? Bb[l + (long)j * ldb] : Bb[j + (long)l * ldb];
                    s += a * bb;
                }
                float *c = &Cb[i + (long)j * ldc];
                *c = (float)(*alpha * s + (*beta != 0.0f ? *beta * *c : 0.0f));
            }
    }
    return 0;
}
static inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
    int k, const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta, float *C, int ldc) {
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
