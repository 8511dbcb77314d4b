#include <omp.h>
/* dense.c - y = W x for dense f32/f16/bf16 weights: scalar reference and the
 * dispatch to the SIMD variants. */
#include "cpu.h"

static void gemv_rows_ref(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x,
                          float *y) {
    for (int64_t r = r0; r < r1; r++) {
        double acc = 0.0;
        if (dt == SPQR_DT_F32) {
            const float *w = (const float *)W + r * cols;
            for (int64_t c = 0; c < cols; c++) acc += (double)w[c] * x[c];
        } else if (dt == SPQR_DT_BF16) {
            const uint16_t *w = (const uint16_t *)W + r * cols;
            for (int64_t c = 0; c < cols; c++) acc += (double)spqr_bf16_to_f32(w[c]) * x[c];
        } else {
            const uint16_t *w = (const uint16_t *)W + r * cols;
            for (int64_t c = 0; c < cols; c++) acc += (double)spqr_f16_to_f32(w[c]) * x[c];
        }
        y[r] = (float)acc;
    }
}

static spqr_status check_args(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y) {
    if (dt != SPQR_DT_F32 && dt != SPQR_DT_F16 && dt != SPQR_DT_BF16)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_dense_gemv: unsupported dtype %s", spqr_dtype_name(dt));
    if (rows < 0 || cols < 0 || (rows > 0 && (!y || (cols > 0 && (!W || !x)))))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_dense_gemv: bad arguments");
    return SPQR_OK;
}

spqr_status spqr_dense_gemv_ref(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y) {
    spqr_status st = check_args(dt, W, rows, cols, x, y);
    if (st || rows == 0) return st;
    gemv_rows_ref(dt, W, 0, rows, cols, x, y);
    return SPQR_OK;
}

spqr_status spqr_dense_gemv(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y) {
    spqr_status st = check_args(dt, W, rows, cols, x, y);
    if (st || rows == 0) return st;
    const spqr_cpu_kind kind = spqr_cpu_kind_active();
    const int64_t RB = 16; /* rows per work item */
    const int64_t nblk = ((int64_t)rows + RB - 1) / RB;
    int nth = spqr_num_threads();
    if (nth > nblk) nth = (int)nblk;
    if ((int64_t)rows * cols < 65536) nth = 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t r0 = b * RB, r1 = r0 + RB < rows ? r0 + RB : rows;
        if (kind == SPQR_CPU_AVX512) spqr_gemv_rows_avx512(dt, W, r0, r1, cols, x, y);
        else if (kind == SPQR_CPU_AVX2) spqr_gemv_rows_avx2(dt, W, r0, r1, cols, x, y);
        else gemv_rows_ref(dt, W, r0, r1, cols, x, y);
    }
    return SPQR_OK;
}
