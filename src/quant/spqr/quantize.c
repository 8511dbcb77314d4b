/* quantize.c - parameters, input checks and the error report around the
 * quantization engine (gptq.c). */
#include "quant_internal.h"
#include "../../kernels/cpu/blas_fixed.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

void spqr_qparams_default(spqr_qparams *p, spqr_qmethod method) {
    memset(p, 0, sizeof *p);
    p->method = method;
    p->wbits = 4;
    p->sbits = 3;
    p->zbits = 3;
    p->percdamp = 0.01;
    p->blocksize = 128;
    p->simplified_outliers = 0;
    p->tune = 0;
    /* block tuning: learning rate relative to each value's typical magnitude
     * (the format's train_scale), no decay, norms retrained too */
    p->bt = (spqr_btune_params){.epochs = 20, .lr = 3e-3, .wd = 0.0, .batch = 1, .norms = 1};
    switch (method) {
    case SPQR_METHOD_SPQR: /* paper's near-lossless configuration */
        p->beta1 = 16;
        p->beta2 = 16;
        p->tau = 0.2;
        p->act_order = 1;
        break;
    case SPQR_METHOD_GPTQ: /* the usual GPTQ baseline: 4-bit, g128, fp16 stats */
        p->beta1 = 128;
        p->beta2 = 0;
        p->tau = 0.0;
        p->act_order = 1;
        break;
    default: /* RTN */
        p->beta1 = 128;
        p->beta2 = 0;
        p->tau = 0.0;
        p->act_order = 0;
        break;
    }
}

spqr_status spqr_qparams_validate(const spqr_qparams *p, int cols) {
    if (!p) return spqr_fail(SPQR_ERR_INVALID_ARG, "quantization parameters: NULL");
    if (p->method != SPQR_METHOD_RTN && p->method != SPQR_METHOD_GPTQ &&
        p->method != SPQR_METHOD_SPQR)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown quantization method %d", (int)p->method);
    if (cols < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "a layer with %d input columns cannot be quantized",
                         cols);
    if (p->wbits < 2 || p->wbits > 8)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "weight bits %d: must be between 2 and 8", p->wbits);
    if (p->beta1 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "group size (beta1) %d: must be >= 1, or 0 for one group per row",
                         p->beta1);
    if (p->beta1 > cols)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "group size (beta1) %d does not fit a layer with %d input columns",
                         p->beta1, cols);
    if (p->beta2 < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "statistic group size (beta2) %d: must be >= 1, or 0 for fp16 statistics",
                         p->beta2);
    if (p->statq < 0 || p->statq >= SPQR_SQ_COUNT)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "statistics quantizer %d: unknown", p->statq);
    if (p->statq != SPQR_SQ_MINMAX && p->beta2 == 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "--stat-quantizer %s quantizes bilevel statistics: it needs --stat-group-size > 0",
                         spqr_statq_name(p->statq));
    if (p->beta2 > 0 && (p->sbits < 1 || p->sbits > 8))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "scale bits %d: must be between 1 and 8", p->sbits);
    if (p->beta2 > 0 && (p->zbits < 1 || p->zbits > 8))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "zero bits %d: must be between 1 and 8", p->zbits);
    if (!(p->percdamp > 0.0 && p->percdamp <= 1.0))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "dampening (percdamp) %g: must be in (0, 1]",
                         p->percdamp);
    if (!isfinite(p->tau))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "outlier threshold (tau) %g: must be finite", p->tau);
    if (p->blocksize < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "GPTQ block size %d: must be >= 1", p->blocksize);
    return SPQR_OK;
}

/* tr(X H X^T) for X [rows][cols] and symmetric H, from column panels of
 * X^T X (upper triangle only): O(rows * cols^2 / 2) flops, O(cols * PANEL)
 * memory, in double (the error W - Q has a quadratic form much smaller than
 * its terms). */
#define PANEL 1024

static double trace_form(const double *X, int rows, int cols, const double *H, double *panel) {
    double acc = 0.0;
    for (int a0 = 0; a0 < cols; a0 += PANEL) {
        const int a1 = a0 + PANEL < cols ? a0 + PANEL : cols, pw = a1 - a0;
        if (a0 > 0)
            spqr_dgemm_fixed(true, false, a0, pw, rows, 1.0, X, cols,
                        X + a0, cols, 0.0, panel, pw);
        spqr_dsyrk_fixed(pw, rows, 1.0, X + a0, cols, 0.0,
                    panel + (size_t)a0 * pw, pw);
        for (int a = 0; a < a1; a++) {
            const double *g = panel + (size_t)a * pw, *h = H + (size_t)a * cols + a0;
            double row = 0.0;
            for (int k = (a > a0 ? a - a0 : 0); k < pw; k++)
                row += (a0 + k == a ? 1.0 : 2.0) * g[k] * h[k];
            acc += row;
        }
    }
    return acc;
}

static spqr_status make_report(const float *W, int rows, int cols, const double *H,
                               const spqr_qlayer *q, spqr_qlayer_report *rep) {
    const size_t nw = (size_t)rows * cols;
    memset(rep, 0, sizeof *rep);
    float *Q = spqr_malloc_array(nw, sizeof *Q);
    if (!Q) return spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory for the error report");
    spqr_qlayer_dequantize(q, Q);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < nw; i++) {
        double d = (double)W[i] - (double)Q[i];
        num += d * d;
        den += (double)W[i] * (double)W[i];
    }
    rep->weight_rel_err = den > 0 ? sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
    rep->n_outliers = q->n_outliers;
    rep->outlier_share = (double)q->n_outliers / (double)nw;
    rep->formula_bits = spqr_qlayer_formula_bits(q);
    if (H) {
        double *X = spqr_malloc_array(nw, sizeof *X);
        double *panel = spqr_malloc_array((size_t)cols * PANEL, sizeof *panel);
        if (!X || !panel) {
            free(X);
            free(panel);
            free(Q);
            return spqr_fail(SPQR_ERR_NOMEM, "quantize: out of memory for the error report");
        }
        for (size_t i = 0; i < nw; i++) X[i] = (double)W[i];
        double base = trace_form(X, rows, cols, H, panel);
        for (size_t i = 0; i < nw; i++) X[i] -= (double)Q[i];
        rep->hessian_err = trace_form(X, rows, cols, H, panel);
        rep->hessian_rel_err =
            base > 0 ? rep->hessian_err / base : (rep->hessian_err > 0 ? INFINITY : 0.0);
        free(X);
        free(panel);
    }
    free(Q);
    return SPQR_OK;
}

spqr_status spqr_quantize_layer_ex(const float *W, int rows, int cols, const double *H,
                                   const spqr_qparams *p, spqr_qlayer *out,
                                   spqr_qlayer_report *rep, float *committed) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "quantize: NULL output layer");
    memset(out, 0, sizeof *out);
    if (!W) return spqr_fail(SPQR_ERR_INVALID_ARG, "quantize: NULL weights");
    if (rows < 1 || cols < 1)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "quantize: bad layer shape %dx%d", rows, cols);
    spqr_status st = spqr_qparams_validate(p, cols);
    if (st != SPQR_OK) return st;
    if (p->method != SPQR_METHOD_RTN && !H)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "quantize: %s needs the layer's input Hessian",
                         p->method == SPQR_METHOD_GPTQ ? "GPTQ" : "SpQR");

    const size_t nw = (size_t)rows * cols;
    for (size_t i = 0; i < nw; i++)
        if (!isfinite(W[i]))
            return spqr_fail(SPQR_ERR_NUMERIC, "quantize: weight [%zu][%zu] of the %dx%d layer is "
                             "%s", i / (size_t)cols, i % (size_t)cols, rows, cols,
                             isnan(W[i]) ? "NaN" : "infinite");
    if (H) {
        const size_t nh = (size_t)cols * cols;
        for (size_t i = 0; i < nh; i++)
            if (!isfinite(H[i]))
                return spqr_fail(SPQR_ERR_NUMERIC, "quantize: Hessian entry [%zu][%zu] is %s",
                                 i / (size_t)cols, i % (size_t)cols,
                                 isnan(H[i]) ? "NaN" : "infinite");
    }

    st = spqr_qlayer_alloc(out, rows, cols, p->wbits, p->beta1, p->beta2, p->sbits, p->zbits);
    if (st != SPQR_OK) return st;
    st = spqr_qlayer_set_statq(out, p->statq);
    if (st != SPQR_OK) {
        spqr_qlayer_free(out);
        return st;
    }
    st = spqr_quant_engine(W, rows, cols, H, p, out, committed);
    if (st == SPQR_OK && rep) st = make_report(W, rows, cols, H, out, rep);
    if (st != SPQR_OK) spqr_qlayer_free(out);
    return st;
}

spqr_status spqr_quantize_layer(const float *W, int rows, int cols, const double *H,
                                const spqr_qparams *p, spqr_qlayer *out,
                                spqr_qlayer_report *rep) {
    return spqr_quantize_layer_ex(W, rows, cols, H, p, out, rep, NULL);
}
