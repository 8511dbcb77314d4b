/* test_train_tune.c - the optimizer and the block tuner (train/adamw.h,
 * train/tune.h) and block tuning through the quantization pipeline:
 *  - AdamW equals a double-precision transcription of PyTorch's update
 *    (bias corrections, decoupled decay, per-value step scale) to 1e-6
 *    relative, and minimises a badly scaled quadratic;
 *  - the cosine schedule's end points;
 *  - on stories260K, tuning a ClusComp-compressed block lowers the block's
 *    calibration MSE, is deterministic, and a diverging run (huge learning
 *    rate) puts back exactly the untuned layers;
 *  - the pipeline with --tune block: ClusComp's perplexity falls, SpQR's
 *    calibration loss falls; the written file (codebooks, statistics and
 *    retrained norms) evaluates as the simulated model; streams spilled to
 *    a temporary file give the same model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "formats/cluscomp/cluscomp.h"
#include "model/model.h"
#include "quant/cluscomp/cluscomp_quant.h"
#include "quant/pipeline.h"
#include "quant/spqr/quantize.h"
#include "testutil.h"
#include "train/tune.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOK "models/stories260K/tok512.bin"
#define TEXT "data/eval/tinystories_valid.txt"

/* tu_shared returns a static buffer: load needs two paths at once */
static spqr_model *load_stories(void) {
    char model[4200], tok[4200];
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    snprintf(tok, sizeof tok, "%s", tu_shared(TOK));
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(model, tok, &m), SPQR_OK);
    return m;
}

/* ---- AdamW ------------------------------------------------------------------ */

static void test_adamw_matches_formula(void **s) {
    (void)s;
    enum { N = 37, STEPS = 7 };
    float th[N], g[N], sc[N];
    double rt[N], rm[N] = {0}, rv[N] = {0};
    tu_seed(3);
    for (int i = 0; i < N; i++) {
        th[i] = tu_rand_normal();
        rt[i] = th[i];
        sc[i] = 0.1f + tu_rand_uniform();
    }
    spqr_adamw o;
    assert_int_equal(spqr_adamw_init(&o, N, 0.1), SPQR_OK);
    for (int t = 1; t <= STEPS; t++) {
        const double lr = 0.01 * t;
        for (int i = 0; i < N; i++) g[i] = tu_rand_normal() * (i % 3 == 0 ? 1e-3f : 1.0f);
        spqr_adamw_step(&o, th, g, lr, t % 2 ? sc : NULL);
        for (int i = 0; i < N; i++) { /* PyTorch AdamW, transcribed in double */
            rt[i] *= 1.0 - lr * 0.1;
            rm[i] = 0.9 * rm[i] + 0.1 * g[i];
            rv[i] = 0.999 * rv[i] + 0.001 * (double)g[i] * g[i];
            double mh = rm[i] / (1 - pow(0.9, t)), vh = rv[i] / (1 - pow(0.999, t));
            rt[i] -= (t % 2 ? sc[i] : 1.0) * lr * mh / (sqrt(vh) + 1e-8);
        }
    }
    for (int i = 0; i < N; i++) assert_true(fabs(th[i] - rt[i]) <= 1e-6 * (1 + fabs(rt[i])));
    spqr_adamw_free(&o);
}

static void test_adamw_minimises_a_quadratic(void **s) {
    (void)s;
    enum { N = 8 };
    float th[N] = {0}, g[N], c[N];
    for (int i = 0; i < N; i++) c[i] = (float)(i - 3) * 0.5f;
    spqr_adamw o;
    assert_int_equal(spqr_adamw_init(&o, N, 0.0), SPQR_OK);
    for (int t = 0; t < 3000; t++) {
        for (int i = 0; i < N; i++) g[i] = 2.0f * powf(10.0f, (float)i - 4) * (th[i] - c[i]); /* curvatures 1e-4..1e3 */
        spqr_adamw_step(&o, th, g, spqr_lr_at(SPQR_LR_COSINE, 0.05, t, 3000), NULL);
    }
    for (int i = 0; i < N; i++) assert_true(fabsf(th[i] - c[i]) < 1e-2f);
    spqr_adamw_free(&o);
}

static void test_lr_schedule(void **s) {
    (void)s;
    assert_true(spqr_lr_at(SPQR_LR_CONSTANT, 0.5, 7, 10) == 0.5);
    assert_true(fabs(spqr_lr_at(SPQR_LR_COSINE, 0.5, 0, 10) - 0.5) < 1e-15);
    assert_true(fabs(spqr_lr_at(SPQR_LR_COSINE, 0.5, 5, 10) - 0.25) < 1e-15);
    assert_true(spqr_lr_at(SPQR_LR_COSINE, 0.5, 10, 10) < 1e-15);
}

/* ---- the tuner on one block of stories260K -------------------------------------- */

enum { NSEQ = 6, SEQ = 48 };

typedef struct {
    spqr_model *m;
    float *X, *Y; /* [NSEQ*SEQ][dim] block-0 inputs and fp outputs */
} fixture;

static void fixture_load(fixture *f) {
    f->m = load_stories();
    const size_t D = (size_t)f->m->cfg.dim, n = (size_t)NSEQ * SEQ;
    int32_t tok[NSEQ * SEQ];
    tu_seed(11);
    for (size_t i = 0; i < n; i++) tok[i] = (int32_t)(tu_rand_u64() % (uint64_t)f->m->cfg.vocab_size);
    f->X = malloc(n * D * sizeof(float));
    f->Y = malloc(n * D * sizeof(float));
    spqr_embed(f->m, tok, (int)n, f->X);
    memcpy(f->Y, f->X, n * D * sizeof(float));
    assert_int_equal(spqr_block_forward(f->m, 0, f->Y, NSEQ, SEQ, NULL, NULL), SPQR_OK);
}

static void fixture_free(fixture *f) {
    spqr_model_free(f->m);
    free(f->X);
    free(f->Y);
}

/* Compress block 0's linears with ClusComp (k-means, no tuning). */
static void compress_block0(spqr_model *m, int n) {
    const spqr_quantizer *q = spqr_quantizer_find("cluscomp");
    assert_non_null(q);
    spqr_cc_params p;
    q->defaults(&p);
    p.n = n;
    p.tune = SPQR_CC_TUNE_NONE;
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        spqr_linear *lin = &m->blocks[0].lin[k];
        size_t R = (size_t)lin->rows, C = (size_t)lin->cols;
        float *W = malloc(R * C * sizeof(float)), *Q = malloc(R * C * sizeof(float));
        assert_int_equal(lin->fmt->dequantize(lin->payload, W), SPQR_OK);
        const spqr_qformat *fmt = NULL;
        void *pl = NULL;
        spqr_qlayer_report rep;
        const spqr_qlayer_ctx ctx = {1, 0, k};
        assert_int_equal(q->quantize_layer(&p, W, (int)R, (int)C, NULL, &ctx, &fmt, &pl, Q, &rep), SPQR_OK);
        const float *bias = lin->bias;
        spqr_linear_set(lin, fmt, pl, (int)R, (int)C);
        lin->bias = bias;
        free(W);
        free(Q);
    }
}

static void block_weights(const spqr_model *m, float **w) {
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        const spqr_linear *lin = &m->blocks[0].lin[k];
        w[k] = malloc(sizeof(float) * (size_t)lin->rows * lin->cols);
        assert_int_equal(lin->fmt->dequantize(lin->payload, w[k]), SPQR_OK);
    }
}

static void test_tune_lowers_the_block_loss(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    float *after[2][SPQR_LIN_PER_BLOCK];
    size_t bytes[SPQR_LIN_PER_BLOCK];
    double loss[2];
    for (int run = 0; run < 2; run++) {
        fixture f;
        fixture_load(&f);
        compress_block0(f.m, 32);
        spqr_tune_opts o;
        spqr_tune_opts_default(&o);
        o.epochs = 4;
        o.lr = 2e-3;
        o.batch = 2;
        spqr_tune_report rep;
        assert_int_equal(spqr_tune_block(f.m, 0, f.X, f.Y, NSEQ, SEQ, &o, &rep), SPQR_OK);
        printf("  cluscomp n=32 block 0: loss %.6g -> %.6g, %lld steps, %lld parameters, %.2fs\n", rep.loss_start,
               rep.loss_end, (long long)rep.steps, (long long)rep.n_params, rep.seconds);
        assert_int_equal(rep.kept, 1);
        assert_int_equal(rep.steps, 4 * 3);
        assert_int_equal(rep.n_params, 7 * 32 * 4);
        assert_true(rep.loss_end < 0.8 * rep.loss_start); /* observed: about -40% */
        /* the block's layers now hold what the tuner measured */
        float *Y = malloc(sizeof(float) * NSEQ * SEQ * f.m->cfg.dim);
        memcpy(Y, f.X, sizeof(float) * NSEQ * SEQ * f.m->cfg.dim);
        assert_int_equal(spqr_block_forward(f.m, 0, Y, NSEQ, SEQ, NULL, NULL), SPQR_OK);
        double e = 0;
        for (size_t i = 0; i < (size_t)NSEQ * SEQ * f.m->cfg.dim; i++) e += ((double)Y[i] - f.Y[i]) * ((double)Y[i] - f.Y[i]);
        e /= (double)NSEQ * SEQ * f.m->cfg.dim;
        assert_true(fabs(e - rep.loss_end) <= 1e-3 * rep.loss_end);
        free(Y);
        block_weights(f.m, after[run]);
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++)
            bytes[k] = sizeof(float) * (size_t)f.m->blocks[0].lin[k].rows * f.m->blocks[0].lin[k].cols;
        loss[run] = rep.loss_end;
        fixture_free(&f);
    }
    /* deterministic */
    assert_true(loss[0] == loss[1]);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        assert_memory_equal(after[0][k], after[1][k], bytes[k]);
        free(after[0][k]);
        free(after[1][k]);
    }
}

/* The GPU path of the tuner against the CPU path (skips without a device). */
static void test_tune_gpu_matches_cpu(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    double loss[2] = {0, 0};
    for (int gpu = 0; gpu < 2; gpu++) {
        fixture f;
        fixture_load(&f);
        compress_block0(f.m, 32);
        spqr_tune_opts o;
        spqr_tune_opts_default(&o);
        o.epochs = 2;
        o.lr = 2e-3;
        o.batch = 2;
        o.train_norms = 1;
        o.gpu = gpu;
        spqr_tune_report rep;
        spqr_status st = spqr_tune_block(f.m, 0, f.X, f.Y, NSEQ, SEQ, &o, &rep);
        if (gpu && (st == SPQR_ERR_NO_DEVICE || st == SPQR_ERR_UNSUPPORTED)) {
            fixture_free(&f);
            skip();
        }
        assert_int_equal(st, SPQR_OK);
        printf("  %s: loss %.8g -> %.8g, %.3fs\n", gpu ? "gpu" : "cpu", rep.loss_start, rep.loss_end, rep.seconds);
        loss[gpu] = rep.loss_end;
        fixture_free(&f);
    }
    assert_true(fabs(loss[1] - loss[0]) <= 1e-3 * loss[0]);
}

static void test_tune_never_worse(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    fixture f;
    fixture_load(&f);
    compress_block0(f.m, 32);
    float *before[SPQR_LIN_PER_BLOCK], *after[SPQR_LIN_PER_BLOCK];
    block_weights(f.m, before);
    const float *norm0 = f.m->blocks[0].attn_norm;
    spqr_tune_opts o;
    spqr_tune_opts_default(&o);
    o.epochs = 2;
    o.lr = 5.0; /* wild steps: the loss rises (or the codebook leaves fp16) */
    o.train_norms = 1;
    spqr_tune_report rep;
    assert_int_equal(spqr_tune_block(f.m, 0, f.X, f.Y, NSEQ, SEQ, &o, &rep), SPQR_OK);
    printf("  lr 5: loss %.6g -> %.6g, kept %d\n", rep.loss_start, rep.loss_end, rep.kept);
    assert_int_equal(rep.kept, 0);
    assert_true(!(rep.loss_end < rep.loss_start));
    block_weights(f.m, after);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        const spqr_linear *lin = &f.m->blocks[0].lin[k];
        assert_memory_equal(before[k], after[k], sizeof(float) * (size_t)lin->rows * lin->cols);
        free(before[k]);
        free(after[k]);
    }
    assert_ptr_equal(f.m->blocks[0].attn_norm, norm0);
    fixture_free(&f);
}

static void test_tune_bad_arguments(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    fixture f;
    fixture_load(&f);
    spqr_tune_opts o;
    spqr_tune_opts_default(&o);
    spqr_tune_report rep;
    assert_int_equal(spqr_tune_block(f.m, 99, f.X, f.Y, NSEQ, SEQ, &o, &rep), SPQR_ERR_INVALID_ARG);
    o.batch = 0;
    assert_int_equal(spqr_tune_block(f.m, 0, f.X, f.Y, NSEQ, SEQ, &o, &rep), SPQR_ERR_INVALID_ARG);
    /* a dense block has nothing to train: no steps, nothing changes */
    spqr_tune_opts_default(&o);
    assert_int_equal(spqr_tune_block(f.m, 0, f.X, f.Y, NSEQ, SEQ, &o, &rep), SPQR_OK);
    assert_int_equal(rep.steps, 0);
    assert_int_equal(rep.kept, 0);
    fixture_free(&f);
}

/* ---- through the pipeline ------------------------------------------------------ */

static double eval_slice(spqr_model *m, const char *text, size_t n) {
    spqr_ppl_result r;
    assert_int_equal(spqr_eval_perplexity(m, text, n, 256, &r), SPQR_OK);
    return r.nll;
}

/* Quantize stories260K with method/options; returns the simulated nll and
 * checks the file evaluates the same. */
static double pipeline_nll(const char *method, const char *const *opts, const char *text, size_t n,
                           spqr_quant_summary *sum) {
    char out[4200];
    snprintf(out, sizeof out, "%s/tune-%s.spqr", tu_tmpdir(), method);
    spqr_model *m = load_stories();
    const spqr_quantizer *q = spqr_quantizer_find(method);
    char params[512];
    assert_true(q->params_size <= sizeof params);
    q->defaults(params);
    for (int i = 0; opts[i]; i += 2) assert_int_equal(spqr_qopt_set(q, params, opts[i], opts[i + 1]), SPQR_OK);
    spqr_quant_opts o;
    spqr_quant_opts_default(&o);
    o.method = q;
    o.params = params;
    char calib[4200];
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    o.calib_path = calib;
    o.nsamples = 24;
    o.seqlen = 128;
    o.out_path = out;
    o.keep_simulated = 1;
    spqr_status st = spqr_quantize_model(m, &o, sum);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    double sim = eval_slice(m, text, n);
    spqr_model *f = NULL;
    assert_int_equal(spqr_model_load(out, NULL, &f), SPQR_OK);
    for (int l = 0; l < m->cfg.n_layers; l++) { /* the file holds the tuned norms */
        assert_memory_equal(f->blocks[l].attn_norm, m->blocks[l].attn_norm, sizeof(float) * (size_t)m->cfg.dim);
        assert_memory_equal(f->blocks[l].ffn_norm, m->blocks[l].ffn_norm, sizeof(float) * (size_t)m->cfg.dim);
    }
    double file = eval_slice(f, text, n);
    assert_true(fabs(sim - file) <= 1e-4);
    spqr_model_free(f);
    spqr_model_free(m);
    return sim;
}

static void test_pipeline_tune_block(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(tu_shared(TEXT), &text, &n), SPQR_OK);
    size_t slice = n < 12000 ? n : 12000;
    const char *tail = text + n - slice;
    spqr_quant_summary s0, s1, s2, s3;
    const char *none[] = {"clusters", "128", "tune", "none", NULL};
    const char *block[] = {"clusters", "128", "tune", "block", "tune-epochs", "3", "tune-lr", "2e-3", NULL};
    double nll_none = pipeline_nll("cluscomp", none, tail, slice, &s0);
    double nll_block = pipeline_nll("cluscomp", block, tail, slice, &s1);
    printf("  cluscomp n=128: nll none %.5f, block %.5f (%d/%d blocks kept, %.1fs tuning)\n", nll_none, nll_block,
           s1.tuned_blocks_kept, s1.tuned_blocks, s1.tune_seconds);
    assert_int_equal(s1.tuned_blocks, 5);
    assert_true(s1.tune_loss_after < s1.tune_loss_before);
    assert_true(nll_block < nll_none);
    assert_true(s1.spilled_bytes == 0);
    /* the same with both activation streams spilled to a temporary file */
    setenv("SPQR_STREAM_MIB", "0", 1);
    spqr_quant_summary s4;
    double nll_spill = pipeline_nll("cluscomp", block, tail, slice, &s4);
    unsetenv("SPQR_STREAM_MIB");
    assert_true(s4.spilled_bytes == 2.0 * 24 * 128 * 64 * sizeof(float));
    assert_true(nll_spill == nll_block);
    const char *sq[] = {"bits", "3", NULL};
    const char *sqt[] = {"bits", "3", "tune", "block", "tune-epochs", "3", NULL};
    double nll_sq = pipeline_nll("spqr", sq, tail, slice, &s2);
    double nll_sqt = pipeline_nll("spqr", sqt, tail, slice, &s3);
    printf("  spqr w3: nll untuned %.5f, block %.5f (%d/%d blocks kept)\n", nll_sq, nll_sqt, s3.tuned_blocks_kept,
           s3.tuned_blocks);
    assert_int_equal(s3.tuned_blocks, 5);
    assert_true(s3.tune_loss_after < s3.tune_loss_before);
    /* the perplexity is not asserted for SpQR: with 24 short windows the
     * tuned statistics fit the calibration blocks (the loss above falls) but
     * stories260K's perplexity moves by under 1% either way; ref-40m's
     * measurement is in docs/RESULTS_CLUSCOMP.md */
    assert_true(fabs(nll_sqt - nll_sq) < 0.02 * nll_sq);
    /* values are retrained in place; the bits move only because later blocks are quantized on
     * the tuned blocks' outputs (their outlier counts change a little) */
    assert_true(fabs(s3.avg_bits_real - s2.avg_bits_real) < 0.05);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_formula),
        cmocka_unit_test(test_adamw_minimises_a_quadratic),
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_tune_lowers_the_block_loss),
        cmocka_unit_test(test_tune_gpu_matches_cpu),
        cmocka_unit_test(test_tune_never_worse),
        cmocka_unit_test(test_tune_bad_arguments),
        cmocka_unit_test(test_pipeline_tune_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
