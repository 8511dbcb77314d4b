/* test_cluscomp_quant.c - the ClusComp quantization method: layer-wise
 * codebook tuning reaches the exact minimiser of the Hessian-weighted error
 * (checked against the normal equations solved by LAPACK) and never makes
 * it worse; the method's layers are what it committed to; with one codeword
 * per sub-vector it is lossless up to fp16; bad options give clear errors;
 * a whole model (stories260K) written by the pipeline evaluates as the
 * simulated model did. */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "formats/cluscomp/cluscomp.h"
#include "model/model.h"
#include "quant/cluscomp/cluscomp_quant.h"
#include "quant/pipeline.h"
#include "testutil.h"

static uint64_t g_rng = 12345;
static double urand(void) { /* [0, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
static float nrand(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* H = 2/N X X^T of random correlated inputs X [cols][N] */
static double *random_hessian(int cols, int N) {
    float *X = malloc(sizeof(float) * (size_t)cols * N);
    for (int j = 0; j < cols; j++)
        for (int s = 0; s < N; s++) X[(size_t)j * N + s] = nrand() * (1.0f + (float)j / cols) + (j ? 0.5f * X[(size_t)(j - 1) * N + s] : 0);
    double *H = calloc((size_t)cols * cols, sizeof(double));
    for (int a = 0; a < cols; a++)
        for (int b = 0; b < cols; b++) {
            double s = 0;
            for (int t = 0; t < N; t++) s += (double)X[(size_t)a * N + t] * X[(size_t)b * N + t];
            H[(size_t)a * cols + b] = 2 * s / N;
        }
    free(X);
    return H;
}

/* f(C) = tr(E H E^T), E = What(C) - W over real rows, in double */
static double objective(const float *W, int rows, int cols, const double *H, int d, const uint32_t *idx,
                        const double *C) {
    double f = 0;
    double *e = malloc(sizeof(double) * cols);
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < cols; j++) e[j] = C[(size_t)idx[(size_t)(r / d) * cols + j] * d + r % d] - W[(size_t)r * cols + j];
        for (int a = 0; a < cols; a++)
            for (int b = 0; b < cols; b++) f += e[a] * H[(size_t)a * cols + b] * e[b];
    }
    free(e);
    return f;
}

/* The exact minimiser: for each coordinate t the normal equations
 * A_t c = b_t, A_t = sum_b S_b^T H S_b, b_t = sum_b S_b^T H w_bt. */
static void exact_codebook(const float *W, int rows, int cols, const double *H, int d, int n, const uint32_t *idx,
                           double *C) {
    double *A = malloc(sizeof(double) * n * n), *bv = malloc(sizeof(double) * n);
    for (int t = 0; t < d; t++) {
        memset(A, 0, sizeof(double) * n * n);
        memset(bv, 0, sizeof(double) * n);
        for (int r = t; r < rows; r += d) {
            const uint32_t *ix = idx + (size_t)(r / d) * cols;
            for (int a = 0; a < cols; a++)
                for (int b = 0; b < cols; b++) {
                    A[(size_t)ix[a] * n + ix[b]] += H[(size_t)a * cols + b];
                    bv[ix[a]] += H[(size_t)a * cols + b] * W[(size_t)r * cols + b];
                }
        }
        for (int k = 0; k < n; k++) A[(size_t)k * n + k] += 1e-9; /* unused entries */
        assert_int_equal(LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', n, 1, A, n, bv, 1), 0);
        for (int k = 0; k < n; k++) C[(size_t)k * d + t] = bv[k];
    }
    free(A);
    free(bv);
}

static void test_tune_layer_reaches_the_optimum(void **s) {
    (void)s;
    const int rows = 11, cols = 9, d = 3, n = 6, nb = (rows + d - 1) / d; /* a padded last block */
    float *W = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++) W[i] = nrand();
    double *H = random_hessian(cols, 64);
    uint32_t *idx = malloc(sizeof(uint32_t) * nb * cols);
    for (int i = 0; i < nb * cols; i++) idx[i] = (uint32_t)(urand() * (n - 1)); /* entry n-1 unused */
    float C[6 * 3];
    double Cd[6 * 3], Cx[6 * 3];
    for (int i = 0; i < n * d; i++) Cd[i] = C[i] = nrand();
    const double f0 = objective(W, rows, cols, H, d, idx, Cd);
    spqr_cc_tune_report rep;
    assert_int_equal(spqr_cc_tune_layer(W, rows, cols, H, d, n, idx, 200, C, &rep), SPQR_OK);
    for (int i = 0; i < n * d; i++) Cd[i] = C[i];
    const double f1 = objective(W, rows, cols, H, d, idx, Cd);
    exact_codebook(W, rows, cols, H, d, n, idx, Cx);
    const double fx = objective(W, rows, cols, H, d, idx, Cx);
    printf("  f: initial %.6g, tuned %.6g (report %.6g -> %.6g, %d CG steps), exact optimum %.6g\n", f0, f1,
           rep.f_before, rep.f_after, rep.iters, fx);
    assert_true(f1 < f0);
    assert_true(f1 >= fx * (1 - 1e-9));
    assert_true(f1 <= fx * (1 + 1e-3)); /* CG converged; the rest is fp16 rounding of C */
    assert_true(fabs(rep.f_after - f1) <= 1e-4 * f1);
    /* the unused entry is left alone */
    for (int t = 0; t < d; t++) assert_true(C[(n - 1) * d + t] == spqr_f16_to_f32(spqr_f32_to_f16(C[(n - 1) * d + t])));
    /* every result is representable in fp16 */
    for (int i = 0; i < n * d; i++) assert_true(C[i] == spqr_f16_to_f32(spqr_f32_to_f16(C[i])));
    free(W);
    free(H);
    free(idx);
}

static void test_tune_layer_never_worse(void **s) {
    (void)s;
    const int rows = 64, cols = 32, d = 4, n = 16, nb = rows / d;
    float *W = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++) W[i] = nrand();
    double *H = random_hessian(cols, 128);
    uint32_t *idx = malloc(sizeof(uint32_t) * nb * cols);
    for (int i = 0; i < nb * cols; i++) idx[i] = (uint32_t)(urand() * n);
    float C[16 * 4];
    for (int iters = 0; iters <= 8; iters += 2) {
        for (int i = 0; i < n * d; i++) C[i] = spqr_f16_to_f32(spqr_f32_to_f16(nrand()));
        spqr_cc_tune_report rep;
        assert_int_equal(spqr_cc_tune_layer(W, rows, cols, H, d, n, idx, iters, C, &rep), SPQR_OK);
        assert_true(rep.f_after <= rep.f_before);
        if (iters > 0) assert_true(rep.f_after < 0.9 * rep.f_before);
        assert_true(rep.iters <= iters);
    }
    free(W);
    free(H);
    free(idx);
}

static const spqr_quantizer *method(void) {
    const spqr_quantizer *q = spqr_quantizer_find("cluscomp");
    assert_non_null(q);
    return q;
}

static void test_layer_is_what_it_committed(void **s) {
    (void)s;
    const spqr_quantizer *q = method();
    const int rows = 37, cols = 24; /* 37 = 9 blocks of 4 + 1 padded row */
    float *W = malloc(sizeof(float) * rows * cols), *Q = malloc(sizeof(float) * rows * cols);
    float *D = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++) W[i] = nrand();
    double *H = random_hessian(cols, 96);
    const char *algos[] = {"kmeans", "hierarchical", "gmm"};
    for (int a = 0; a < 3; a++) {
        spqr_cc_params p;
        q->defaults(&p);
        assert_int_equal(spqr_qopt_set(q, &p, "clusters", "19"), SPQR_OK); /* not a power of two */
        assert_int_equal(spqr_qopt_set(q, &p, "cluster-algo", algos[a]), SPQR_OK);
        const spqr_qformat *fmt = NULL;
        void *pl = NULL;
        spqr_qlayer_report rep;
        const spqr_qlayer_ctx ctx = {7, 0, 0};
        spqr_status st = q->quantize_layer(&p, W, rows, cols, H, &ctx, &fmt, &pl, Q, &rep);
        if (st) fprintf(stderr, "%s\n", spqr_last_error());
        assert_int_equal(st, SPQR_OK);
        assert_string_equal(fmt->name, "cluscomp");
        assert_int_equal(fmt->dequantize(pl, D), SPQR_OK);
        assert_memory_equal(D, Q, sizeof(float) * rows * cols);
        const spqr_cc_layer *L = pl;
        assert_int_equal(L->n, 19);
        assert_int_equal(L->d, 4);
        assert_int_equal(L->ibits, 5);
        /* formula: 5 index bits per 4 weights over 10 blocks of 4 rows + the fp16 codebook */
        const double want = 5.0 * 10 * cols / (rows * cols) + 16.0 * 19 * 4 / (rows * cols);
        assert_true(fabs(rep.formula_bits - want) < 1e-9);
        printf("  %s: weight rel err %.4f, hessian rel err %.4f, %.3f bits\n", algos[a], rep.weight_rel_err,
               rep.hessian_rel_err, rep.formula_bits);
        assert_true(rep.weight_rel_err > 0 && rep.weight_rel_err < 1.0);
        assert_true(rep.hessian_rel_err > 0 && rep.hessian_rel_err < 1.0);
        fmt->free(pl);
    }
    free(W);
    free(Q);
    free(D);
    free(H);
}

static void test_one_codeword_per_subvector_is_lossless(void **s) {
    (void)s;
    const spqr_quantizer *q = method();
    const int rows = 16, cols = 8, d = 4; /* 32 sub-vectors */
    float W[16 * 8], Q[16 * 8];
    for (int i = 0; i < rows * cols; i++) W[i] = nrand();
    spqr_cc_params p;
    q->defaults(&p);
    p.d = d;
    p.n = rows / d * cols;
    p.tune = SPQR_CC_TUNE_NONE;
    const spqr_qformat *fmt = NULL;
    void *pl = NULL;
    spqr_qlayer_report rep;
    assert_int_equal(q->quantize_layer(&p, W, rows, cols, NULL, NULL, &fmt, &pl, Q, &rep), SPQR_OK);
    for (int i = 0; i < rows * cols; i++) assert_true(fabsf(Q[i] - W[i]) <= 1e-3f * fabsf(W[i]) + 1e-7f);
    fmt->free(pl);
}

static void test_bad_options(void **s) {
    (void)s;
    const spqr_quantizer *q = method();
    spqr_cc_params p;
    q->defaults(&p);
    assert_int_equal(spqr_qopt_set(q, &p, "cluster-dim", "65"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qopt_set(q, &p, "cluster-dim", "0"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qopt_set(q, &p, "clusters", "16777217"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qopt_set(q, &p, "cluster-algo", "dbscan"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qopt_set(q, &p, "tune", "block"), SPQR_OK);
    assert_int_equal(spqr_quantizer_needs(q, &p), SPQR_QNEED_BLOCK); /* no Hessian: k-means then block tuning */
    assert_int_equal(spqr_qopt_set(q, &p, "tune", "layer+block"), SPQR_OK);
    assert_int_equal(spqr_quantizer_needs(q, &p), SPQR_QNEED_BLOCK | SPQR_QNEED_HESSIAN);
    assert_int_equal(spqr_qopt_set(q, &p, "tune-lr", "-1"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qopt_set(q, &p, "tune-epochs", "-1"), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_qopt_set(q, &p, "tune-schedule", "linear"), SPQR_ERR_INVALID_ARG);
    q->defaults(&p);
    p.n = 1024;
    assert_int_equal(q->validate(&p, 64, 64), SPQR_OK); /* 16 x 64 = 1024 sub-vectors at d = 4 */
    p.n = 1025;
    assert_int_equal(q->validate(&p, 64, 64), SPQR_ERR_INVALID_ARG);
    assert_non_null(strstr(spqr_last_error(), "sub-vectors"));
    p.n = 16;
    p.d = 8;
    assert_int_equal(q->validate(&p, 6, 64), SPQR_ERR_INVALID_ARG); /* d longer than the output dim */
    /* layer tuning needs calibration */
    q->defaults(&p);
    assert_true(spqr_quantizer_needs(q, &p) & SPQR_QNEED_HESSIAN);
    p.tune = SPQR_CC_TUNE_NONE;
    assert_int_equal(spqr_quantizer_needs(q, &p), 0);
}

#define MODEL "models/stories260K/stories260K.bin"
#define TOK "models/stories260K/tok512.bin"
#define TEXT "data/eval/tinystories_valid.txt"

static double eval_slice(spqr_model *m, const char *text, size_t n) {
    spqr_ppl_result r;
    assert_int_equal(spqr_eval_perplexity(m, text, n, 256, &r), SPQR_OK);
    return r.nll;
}

/* the pipeline: file == simulation, tuning helps on the model too */
static void test_pipeline_file_matches_simulation(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    char out[4200], calib[4200], model[4200];
    snprintf(out, sizeof out, "%s/q-cluscomp.spqr", tu_tmpdir());
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(calib, &text, &n), SPQR_OK);
    size_t slice = n < 20000 ? n : 20000;
    double nll[2] = {0, 0}, fp = 0;
    for (int tune = 0; tune < 2; tune++) {
        spqr_model *m = NULL;
        assert_int_equal(spqr_model_load(model, tu_shared(TOK), &m), SPQR_OK);
        fp = eval_slice(m, text + n - slice, slice);
        const spqr_quantizer *q = method();
        spqr_cc_params p;
        q->defaults(&p);
        p.n = 256; /* stories260K: 64x64 layers = 1024 sub-vectors at d = 4 */
        p.tune = tune ? SPQR_CC_TUNE_LAYER : SPQR_CC_TUNE_NONE;
        spqr_quant_opts o;
        spqr_quant_opts_default(&o);
        o.method = q;
        o.params = &p;
        o.calib_path = calib;
        o.nsamples = 16;
        o.seqlen = 256;
        o.out_path = out;
        o.keep_simulated = 1;
        spqr_quant_summary sum;
        spqr_status st = spqr_quantize_model(m, &o, &sum);
        if (st) fprintf(stderr, "%s\n", spqr_last_error());
        assert_int_equal(st, SPQR_OK);
        double sim = eval_slice(m, text + n - slice, slice);
        spqr_model *f = NULL;
        assert_int_equal(spqr_model_load(out, NULL, &f), SPQR_OK);
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
                const spqr_linear *a = &m->blocks[l].lin[k], *b = &f->blocks[l].lin[k];
                assert_string_equal(b->fmt->name, "cluscomp");
                float *w = malloc(sizeof(float) * (size_t)a->rows * a->cols);
                assert_int_equal(b->fmt->dequantize(b->payload, w), SPQR_OK);
                assert_memory_equal(w, spqr_linear_dense(a)->data, sizeof(float) * (size_t)a->rows * a->cols);
                free(w);
            }
        double file = eval_slice(f, text + n - slice, slice);
        printf("  tune %s: fp nll %.5f, simulated %.5f, file %.5f, bits %.3f formula %.3f file\n",
               tune ? "layer" : "none", fp, sim, file, sum.avg_bits_formula, sum.avg_bits_real);
        assert_true(fabs(sim - file) <= 1e-4);
        nll[tune] = sim;
        spqr_model_free(f);
        spqr_model_free(m);
    }
    assert_true(nll[1] < nll[0]); /* layer tuning helps */
    assert_true(nll[1] > fp - 0.01);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tune_layer_reaches_the_optimum),
        cmocka_unit_test(test_tune_layer_never_worse),
        cmocka_unit_test(test_layer_is_what_it_committed),
        cmocka_unit_test(test_one_codeword_per_subvector_is_lossless),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_pipeline_file_matches_simulation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
