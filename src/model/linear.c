/* linear.c - y = W x (+ bias) for a linear layer of any registered format,
 * and the helpers that set a linear's format and payload. */
#include <stdlib.h>

#include "model.h"

spqr_status spqr_linear_forward(const spqr_linear *l, const float *X, int T, float *Y) {
    if (!l->fmt) return spqr_fail(SPQR_ERR_INTERNAL, "linear layer without a format");
    spqr_status st = l->fmt->gemm(l->payload, X, T, Y);
    if (st || !l->bias) return st;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < l->rows; r++) Y[(size_t)t * l->rows + r] += l->bias[r];
    return SPQR_OK;
}

void spqr_linear_release(spqr_linear *l) {
    if (l->fmt && l->payload) l->fmt->free(l->payload);
    l->fmt = NULL;
    l->payload = NULL;
}

void spqr_linear_set(spqr_linear *l, const spqr_qformat *fmt, void *payload, int rows, int cols) {
    spqr_linear_release(l);
    l->fmt = fmt;
    l->payload = payload;
    l->rows = rows;
    l->cols = cols;
}

spqr_status spqr_linear_set_dense(spqr_linear *l, const void *data, spqr_dtype dt, int rows, int cols) {
    spqr_dense *d = malloc(sizeof *d);
    if (!d) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    *d = (spqr_dense){data, dt, rows, cols};
    spqr_linear_set(l, &spqr_qformat_dense, d, rows, cols);
    return SPQR_OK;
}
