/* test_plugin.c - a second quantized-layer format and a second method,
 * added through the registries only (no file of the library knows them):
 * per-row symmetric int8 ("int8row", no Hessian). The layer round-trips
 * through the .spqr file, spqr_inspect_file, evaluation and the CPU kernels
 * (fast product against its reference on awkward shapes), and the method's
 * block-level hook sees the block's compressed inputs and fp targets. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/qformat.h"
#include "model/model.h"
#include "quant/pipeline.h"
#include "testutil.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOK "models/stories260K/tok512.bin"
#define TEXT "data/eval/tinystories_valid.txt"

/* ---- the format: codes (uint8, code - 128 is the int8 value) [rows][cols],
 * scale (fp16) [rows]; w = scale[r] * (code - 128) ---------------------- */

typedef struct i8 {
    int rows, cols;
    const uint8_t *code;
    const uint16_t *scale;
    void *own_code, *own_scale;
} i8;

static int i8_sections(const void *p, spqr_qsection *o, int max) {
    const i8 *l = p;
    if (max < 2) return -1;
    o[0] = (spqr_qsection){"code", SPQR_DT_U8, l->code, (size_t)l->rows * (size_t)l->cols};
    o[1] = (spqr_qsection){"scale", SPQR_DT_F16, l->scale, (size_t)l->rows * 2};
    return 2;
}
static spqr_status i8_geom(const void *p, cJSON *o) {
    const i8 *l = p;
    cJSON_AddNumberToObject(o, "rows", l->rows);
    cJSON_AddNumberToObject(o, "cols", l->cols);
    return SPQR_OK;
}
static spqr_status i8_open(const cJSON *layer, int rows, int cols, spqr_qsection_find_fn find, void *ctx,
                           void **out) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(layer, "rows"), *c = cJSON_GetObjectItemCaseSensitive(layer, "cols");
    if (!cJSON_IsNumber(r) || !cJSON_IsNumber(c) || r->valuedouble != rows || c->valuedouble != cols)
        return spqr_fail(SPQR_ERR_FORMAT, "int8row: bad geometry");
    spqr_qsection a, b;
    spqr_status st = find(ctx, "code", &a);
    if (!st) st = find(ctx, "scale", &b);
    if (st) return st;
    if (a.bytes != (size_t)rows * cols || b.bytes != (size_t)rows * 2)
        return spqr_fail(SPQR_ERR_FORMAT, "int8row: section sizes disagree with %d x %d", rows, cols);
    i8 *l = calloc(1, sizeof *l);
    *l = (i8){rows, cols, a.data, b.data, NULL, NULL};
    *out = l;
    return SPQR_OK;
}
static void i8_free(void *p) {
    i8 *l = p;
    if (!l) return;
    free(l->own_code);
    free(l->own_scale);
    free(l);
}
static size_t i8_bytes(const void *p) {
    const i8 *l = p;
    return (size_t)l->rows * l->cols + (size_t)l->rows * 2;
}
static double i8_bits(const void *p) { return 8.0 + 16.0 / ((const i8 *)p)->cols; }
static void i8_describe(const void *p, char *buf, size_t n) {
    (void)p;
    snprintf(buf, n, "int8 per-row");
}
static spqr_status i8_deq(const void *p, float *W) {
    const i8 *l = p;
    for (int r = 0; r < l->rows; r++) {
        float s = spqr_f16_to_f32(l->scale[r]);
        for (int c = 0; c < l->cols; c++)
            W[(size_t)r * l->cols + c] = s * (float)((int)l->code[(size_t)r * l->cols + c] - 128);
    }
    return SPQR_OK;
}
static spqr_status i8_gemm_ref(const void *p, const float *X, int T, float *Y) {
    const i8 *l = p;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < l->rows; r++) {
            double acc = 0;
            for (int c = 0; c < l->cols; c++)
                acc += (double)((int)l->code[(size_t)r * l->cols + c] - 128) * X[(size_t)t * l->cols + c];
            Y[(size_t)t * l->rows + r] = (float)(acc * spqr_f16_to_f32(l->scale[r]));
        }
    return SPQR_OK;
}
/* the "fast" variant: integer codes summed in float, 4 accumulators */
static spqr_status i8_gemm(const void *p, const float *X, int T, float *Y) {
    const i8 *l = p;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < l->rows; r++) {
            const uint8_t *q = l->code + (size_t)r * l->cols;
            const float *x = X + (size_t)t * l->cols;
            float a[4] = {0, 0, 0, 0};
            int c = 0;
            for (; c + 4 <= l->cols; c += 4)
                for (int k = 0; k < 4; k++) a[k] += (float)((int)q[c + k] - 128) * x[c + k];
            for (; c < l->cols; c++) a[0] += (float)((int)q[c] - 128) * x[c];
            Y[(size_t)t * l->rows + r] = (a[0] + a[1] + a[2] + a[3]) * spqr_f16_to_f32(l->scale[r]);
        }
    return SPQR_OK;
}

static const spqr_qformat k_int8row = {
    .name = "int8row", .summary = "test: per-row symmetric int8", .quantized = 1,
    .sections = i8_sections, .write_geometry = i8_geom, .open = i8_open, .free = i8_free,
    .bytes = i8_bytes, .formula_bits = i8_bits, .describe = i8_describe,
    .dequantize = i8_deq, .gemm_ref = i8_gemm_ref, .gemm = i8_gemm,
};

/* ---- the method ------------------------------------------------------------ */

typedef struct { double clip; } i8_params;
static const spqr_qopt k_i8_opts[] = {
    {"clip", SPQR_QOPT_DOUBLE, offsetof(i8_params, clip), 0.5, 1.0, NULL, "scale = clip * absmax / 127 (1)", NULL},
};
static void i8_defaults(void *p) { ((i8_params *)p)->clip = 1.0; }
static spqr_status i8_validate(const void *p, int rows, int cols) {
    (void)p;
    return rows > 0 && cols > 0 ? SPQR_OK : spqr_fail(SPQR_ERR_INVALID_ARG, "empty layer");
}
static spqr_status i8_quantize(const void *params, const float *W, int rows, int cols, const double *H,
                               const spqr_qlayer_ctx *ctx,
                               const spqr_qformat **fmt, void **payload, float *committed, spqr_qlayer_report *rep) {
    (void)ctx;
    assert_null(H); /* no Hessian asked for */
    const double clip = ((const i8_params *)params)->clip;
    i8 *l = calloc(1, sizeof *l);
    uint8_t *code = malloc((size_t)rows * cols);
    uint16_t *scale = malloc((size_t)rows * 2);
    double num = 0, den = 0;
    for (int r = 0; r < rows; r++) {
        float mx = 0;
        for (int c = 0; c < cols; c++) mx = fmaxf(mx, fabsf(W[(size_t)r * cols + c]));
        scale[r] = spqr_f32_to_f16((float)(clip * mx / 127.0));
        float s = spqr_f16_to_f32(scale[r]);
        for (int c = 0; c < cols; c++) {
            float w = W[(size_t)r * cols + c];
            long q = s > 0 ? lrintf(w / s) : 0;
            q = q < -127 ? -127 : q > 127 ? 127 : q;
            code[(size_t)r * cols + c] = (uint8_t)(q + 128);
            committed[(size_t)r * cols + c] = s * (float)q;
            num += (double)(w - s * (float)q) * (w - s * (float)q);
            den += (double)w * w;
        }
    }
    *l = (i8){rows, cols, code, scale, code, scale};
    memset(rep, 0, sizeof *rep);
    rep->weight_rel_err = den > 0 ? sqrt(num / den) : 0;
    rep->formula_bits = i8_bits(l);
    *fmt = &k_int8row;
    *payload = l;
    return SPQR_OK;
}

static int g_hook_calls;
static double g_hook_mse;
/* the block hook: measure how far the compressed block is from its target */
static spqr_status i8_tune(const void *params, spqr_block_ctx *ctx) {
    (void)params;
    const int D = ctx->m->cfg.dim;
    const size_t n = (size_t)ctx->nseq * ctx->seqlen * D;
    float *X = malloc(n * sizeof(float));
    memcpy(X, ctx->X_in, n * sizeof(float));
    assert_int_equal(spqr_block_forward(ctx->m, ctx->layer, X, ctx->nseq, ctx->seqlen, NULL, NULL), SPQR_OK);
    double e = 0, y = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)X[i] - ctx->Y_ref[i]) * ((double)X[i] - ctx->Y_ref[i]);
        y += (double)ctx->Y_ref[i] * ctx->Y_ref[i];
    }
    free(X);
    g_hook_calls++;
    g_hook_mse = e / y;
    return SPQR_OK;
}
static spqr_status i8_prov(const void *params, cJSON *o) {
    cJSON_AddNumberToObject(o, "clip", ((const i8_params *)params)->clip);
    return SPQR_OK;
}

static const spqr_quantizer k_int8_method = {
    .name = "int8row", .summary = "test: per-row int8", .options = k_i8_opts, .n_options = 1,
    .params_size = sizeof(i8_params), .defaults = i8_defaults, .validate = i8_validate, .needs = 0,
    .quantize_layer = i8_quantize, .tune_block = i8_tune, .provenance = i8_prov,
};

/* ---- tests ------------------------------------------------------------------- */

static int setup(void **s) {
    (void)s;
    if (!spqr_qformat_find("int8row")) assert_int_equal(spqr_qformat_register(&k_int8row), SPQR_OK);
    if (!spqr_quantizer_find("int8row")) assert_int_equal(spqr_quantizer_register(&k_int8_method), SPQR_OK);
    return 0;
}

static void test_registries(void **s) {
    (void)s;
    assert_ptr_equal(spqr_qformat_find("int8row"), &k_int8row);
    assert_ptr_equal(spqr_quantizer_find("int8row"), &k_int8_method);
    /* names are unique, incomplete tables are refused */
    assert_int_equal(spqr_qformat_register(&k_int8row), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_quantizer_register(&k_int8_method), SPQR_ERR_INVALID_ARG);
    spqr_qformat bad = k_int8row;
    bad.name = "int8row-broken";
    bad.gemm = NULL;
    assert_int_equal(spqr_qformat_register(&bad), SPQR_ERR_INVALID_ARG);
    /* the public listing sees the new method and its option */
    int i = spqr_quantizer_method_count() - 1;
    assert_string_equal(spqr_quantizer_method_name(i), "int8row");
    const char *name, *help;
    int tv;
    assert_int_equal(spqr_quantizer_method_option(i, 0, &name, &help, &tv), SPQR_OK);
    assert_string_equal(name, "clip");
    assert_int_equal(tv, 1);
}

/* fast product vs reference vs dequantize, awkward shapes */
static void test_kernels(void **s) {
    (void)s;
    const int shapes[][2] = {{1, 1}, {7, 17}, {33, 172}, {5, 4097}};
    tu_seed(7);
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int R = shapes[k][0], C = shapes[k][1], T = 3;
        float *W = malloc(sizeof(float) * R * C), *deq = malloc(sizeof(float) * R * C);
        for (int i = 0; i < R * C; i++) W[i] = tu_rand_normal();
        i8_params p = {1.0};
        const spqr_qformat *f;
        void *pl;
        spqr_qlayer_report rep;
        assert_int_equal(i8_quantize(&p, W, R, C, NULL, NULL, &f, &pl, deq, &rep), SPQR_OK);
        assert_true(rep.weight_rel_err < 0.02); /* 8 bits, absmax grid */
        float *X = malloc(sizeof(float) * T * C), *Y1 = malloc(sizeof(float) * T * R), *Y2 = malloc(sizeof(float) * T * R);
        for (int i = 0; i < T * C; i++) X[i] = tu_rand_normal();
        assert_int_equal(f->gemm(pl, X, T, Y1), SPQR_OK);
        assert_int_equal(f->gemm_ref(pl, X, T, Y2), SPQR_OK);
        float *W2 = malloc(sizeof(float) * R * C);
        assert_int_equal(f->dequantize(pl, W2), SPQR_OK);
        assert_memory_equal(W2, deq, sizeof(float) * R * C); /* committed == the format's definition */
        for (int i = 0; i < T * R; i++) assert_true(fabs(Y1[i] - Y2[i]) <= 1e-4 * (1 + fabs(Y2[i])) * sqrt(C));
        f->free(pl);
        free(W); free(deq); free(X); free(Y1); free(Y2); free(W2);
    }
}

static void test_file_inspect_eval(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL) || !tu_have_shared(TEXT)) skip();
    char out[4200], calib[4200], model[4200];
    snprintf(out, sizeof out, "%s/int8.spqr", tu_tmpdir());
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(model, tu_shared(TOK), &m), SPQR_OK);
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(calib, &text, &n), SPQR_OK);
    const size_t slice = 20000;
    spqr_ppl_result fp, sim, file;
    assert_int_equal(spqr_eval_perplexity(m, text + n - slice, slice, 256, &fp), SPQR_OK);

    spqr_quant_config *qc = NULL;
    assert_int_equal(spqr_quant_config_new("int8row", &qc), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "clip", "2"), SPQR_ERR_INVALID_ARG); /* range from the table */
    assert_int_equal(spqr_quant_config_set(qc, "bits", "4"), SPQR_ERR_INVALID_ARG);  /* not its option */
    assert_int_equal(spqr_quant_config_set(qc, "clip", "1"), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "calib", calib), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "nsamples", "4"), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "seqlen", "64"), SPQR_OK);
    spqr_quant_summary sum;
    g_hook_calls = 0;
    assert_int_equal(spqr_quantize(m, qc, out, &sum), SPQR_OK);
    spqr_quant_config_free(qc);
    /* the hook ran once per block and saw a compressed block close to, not at, its target */
    assert_int_equal(g_hook_calls, spqr_model_config(m)->n_layers);
    assert_true(g_hook_mse > 0 && g_hook_mse < 0.01);
    assert_true(sum.avg_bits_formula > 8.0 && sum.avg_bits_formula < 8.3); /* 8 + 16 / cols */

    spqr_model *q = NULL;
    assert_int_equal(spqr_model_load(out, NULL, &q), SPQR_OK);
    assert_ptr_equal(q->blocks[0].lin[SPQR_LIN_Q].fmt, &k_int8row);
    assert_int_equal(spqr_eval_perplexity(q, text + n - slice, slice, 256, &file), SPQR_OK);
    printf("  int8row: fp nll %.5f, from file %.5f, %.3f bits formula / %.3f file\n", fp.nll, file.nll,
           sum.avg_bits_formula, sum.avg_bits_real);
    assert_true(fabs(file.nll - fp.nll) < 0.01); /* 8 bits are nearly lossless */
    (void)sim;

    spqr_file_info *fi = NULL;
    assert_int_equal(spqr_inspect_file(out, 1, &fi), SPQR_OK);
    assert_int_equal(fi->model_layout, 3);
    assert_int_equal(fi->n_layers, spqr_model_config(m)->n_layers * SPQR_LIN_PER_BLOCK);
    assert_string_equal(fi->layers[0].layout, "int8row");
    assert_string_equal(fi->layers[0].params, "int8 per-row");
    assert_int_equal(fi->quantized_bytes, sum.quantized_bytes);
    assert_true(fabs(fi->avg_bits_real - sum.avg_bits_real) < 1e-9);
    spqr_file_info_free(fi);

    spqr_model_free(q);
    spqr_model_free(m);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registries),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_file_inspect_eval),
    };
    int rc = cmocka_run_group_tests(tests, setup, NULL);
    tu_cleanup();
    return rc;
}
