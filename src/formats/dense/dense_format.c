/* dense_format.c - the trivial "dense" format: an unquantized f32/f16/bf16
 * weight, usually in place in a mapped file. One section, "weight"
 * [rows][cols] in its stored dtype. Products: batch 1 through the SIMD
 * matrix-vector kernels, larger batches widened to f32 in row chunks and
 * multiplied with OpenBLAS sgemm. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../format/qformat.h"
#include "../../kernels/cpu/cpu.h"
#include "../../kernels/cpu/blas_fixed.h"

#define CHUNK_BYTES ((size_t)32 << 20)

static bool float_like(spqr_dtype dt) { return dt == SPQR_DT_F32 || dt == SPQR_DT_F16 || dt == SPQR_DT_BF16; }

static int d_sections(const void *payload, spqr_qsection *out, int max) {
    const spqr_dense *d = payload;
    if (max < 1) return -1;
    out[0] = (spqr_qsection){"weight", d->dt, d->data, (size_t)d->rows * (size_t)d->cols * spqr_dtype_size(d->dt)};
    return 1;
}

static spqr_status d_write_geometry(const void *payload, cJSON *layer) {
    const spqr_dense *d = payload;
    if (!cJSON_AddStringToObject(layer, "dtype", spqr_dtype_name(d->dt)))
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    return SPQR_OK;
}

static spqr_status d_open(const cJSON *layer, int rows, int cols, spqr_qsection_find_fn find, void *ctx,
                          void **payload) {
    (void)layer;
    spqr_qsection s;
    spqr_status st = find(ctx, "weight", &s);
    if (st) return st;
    size_t n;
    if (!float_like(s.dtype)) return spqr_fail(SPQR_ERR_FORMAT, "dense weight has dtype %s", spqr_dtype_name(s.dtype));
    if (!spqr_mul_size((size_t)rows, (size_t)cols, &n) || !spqr_mul_size(n, spqr_dtype_size(s.dtype), &n) ||
        n != s.bytes)
        return spqr_fail(SPQR_ERR_FORMAT, "dense weight has %zu bytes, %d x %d of %s need another size", s.bytes, rows,
                         cols, spqr_dtype_name(s.dtype));
    spqr_dense *d = malloc(sizeof *d);
    if (!d) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    *d = (spqr_dense){s.data, s.dtype, rows, cols};
    *payload = d;
    return SPQR_OK;
}

static void d_free(void *payload) { free(payload); }

static size_t d_bytes(const void *payload) {
    const spqr_dense *d = payload;
    return (size_t)d->rows * (size_t)d->cols * spqr_dtype_size(d->dt);
}

static double d_formula_bits(const void *payload) {
    const spqr_dense *d = payload;
    return 8.0 * (double)spqr_dtype_size(d->dt);
}

static void d_describe(const void *payload, char *buf, size_t n) {
    const spqr_dense *d = payload;
    snprintf(buf, n, "dense %s", spqr_dtype_name(d->dt));
}

static spqr_status d_dequantize(const void *payload, float *W) {
    const spqr_dense *d = payload;
    spqr_to_f32(d->data, d->dt, (size_t)d->rows * (size_t)d->cols, W);
    return SPQR_OK;
}

static spqr_status d_gemm_ref(const void *payload, const float *X, int T, float *Y) {
    const spqr_dense *d = payload;
    for (int t = 0; t < T; t++) {
        spqr_status st = spqr_dense_gemv_ref(d->dt, d->data, (int)d->rows, (int)d->cols, X + (size_t)t * d->cols,
                                             Y + (size_t)t * d->rows);
        if (st) return st;
    }
    return SPQR_OK;
}

static spqr_status d_gemm(const void *payload, const float *X, int T, float *Y) {
    const spqr_dense *d = payload;
    const int rows = (int)d->rows, cols = (int)d->cols;
    if (T == 1) return spqr_dense_gemv(d->dt, d->data, rows, cols, X, Y);
    if (T <= 0) return T == 0 ? SPQR_OK : spqr_fail(SPQR_ERR_INVALID_ARG, "dense gemm: negative token count");
    if (d->dt == SPQR_DT_F32) {
        spqr_sgemm_fixed(false, true, T, rows, cols, 1.0f, X, cols, d->data, cols, 0.0f, Y,
                    rows);
        return SPQR_OK;
    }
    size_t es = spqr_dtype_size(d->dt);
    size_t chunk = CHUNK_BYTES / ((size_t)cols * sizeof(float));
    if (chunk < 64) chunk = 64;
    if (chunk > (size_t)rows) chunk = (size_t)rows;
    float *buf = spqr_malloc_array(chunk, (size_t)cols * sizeof(float));
    if (!buf) return spqr_fail(SPQR_ERR_NOMEM, "out of memory (linear %dx%d)", rows, cols);
    for (size_t r0 = 0; r0 < (size_t)rows; r0 += chunk) {
        size_t nr = (size_t)rows - r0 < chunk ? (size_t)rows - r0 : chunk;
        const char *src = (const char *)d->data + r0 * (size_t)cols * es;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
        for (size_t r = 0; r < nr; r++)
            spqr_to_f32(src + r * (size_t)cols * es, d->dt, (size_t)cols, buf + r * (size_t)cols);
        spqr_sgemm_fixed(false, true, T, (int)nr, cols, 1.0f, X, cols, buf, cols, 0.0f,
                    Y + r0, rows);
    }
    free(buf);
    return SPQR_OK;
}

const spqr_qformat spqr_qformat_dense = {
    .name = "dense",
    .summary = "unquantized f32/f16/bf16 weight",
    .quantized = 0,
    .sections = d_sections,
    .write_geometry = d_write_geometry,
    .open = d_open,
    .free = d_free,
    .bytes = d_bytes,
    .formula_bits = d_formula_bits,
    .describe = d_describe,
    .dequantize = d_dequantize,
    .gemm_ref = d_gemm_ref,
    .gemm = d_gemm,
};
