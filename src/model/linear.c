/* linear.c - y = W x for dense (f32/bf16/f16, in place in the mapped file)
 * and packed quantized weights. Dense bf16/f16 weights are widened to f32 in
 * row chunks and multiplied with OpenBLAS sgemm. */
#include <cblas.h>
#include <stdlib.h>

#include "../kernels/cpu/kernels.h"
#include "model.h"

#define CHUNK_BYTES ((size_t)32 << 20)

static void add_bias(const spqr_linear *l, float *Y, int T) {
    if (!l->bias) return;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < l->rows; r++) Y[(size_t)t * l->rows + r] += l->bias[r];
}

spqr_status spqr_linear_forward(const spqr_linear *l, const float *X, int T, float *Y) {
    const int rows = l->rows, cols = l->cols;
    if (l->kind == SPQR_LIN_PACKED) {
        spqr_status st = spqr_qgemm(l->pk, X, T, Y);
        if (!st) add_bias(l, Y, T);
        return st;
    }
    if (T == 1) {
        spqr_dense_gemv(l->w.dt, l->w.data, rows, cols, X, Y);
        add_bias(l, Y, T);
        return SPQR_OK;
    }
    if (l->w.dt == SPQR_DT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, rows, cols, 1.0f, X, cols, l->w.data, cols, 0.0f, Y,
                    rows);
        add_bias(l, Y, T);
        return SPQR_OK;
    }
    size_t es = spqr_dtype_size(l->w.dt);
    size_t chunk = CHUNK_BYTES / ((size_t)cols * sizeof(float));
    if (chunk < 64) chunk = 64;
    if (chunk > (size_t)rows) chunk = (size_t)rows;
    float *buf = spqr_malloc_array(chunk, (size_t)cols * sizeof(float));
    if (!buf) return spqr_fail(SPQR_ERR_NOMEM, "out of memory (linear %dx%d)", rows, cols);
    for (size_t r0 = 0; r0 < (size_t)rows; r0 += chunk) {
        size_t nr = (size_t)rows - r0 < chunk ? (size_t)rows - r0 : chunk;
        const char *src = (const char *)l->w.data + r0 * (size_t)cols * es;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
        for (size_t r = 0; r < nr; r++)
            spqr_to_f32(src + r * (size_t)cols * es, l->w.dt, (size_t)cols, buf + r * (size_t)cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)nr, cols, 1.0f, X, cols, buf, cols, 0.0f,
                    Y + r0, rows);
    }
    free(buf);
    add_bias(l, Y, T);
    return SPQR_OK;
}
