/* test_gpu_model.c - the GPU runtime (kernels/cuda/gpu_model.h) against the
 * CPU reference forward on stories260K, dense (llama2.c checkpoint) and
 * SpQR-compressed (a .spqr written in the test): prefill logits, KV-cached
 * decode logits, evaluation nll. Skips (and passes) without a CUDA device or
 * in CPU-only builds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tinyhf.h"

#include "eval/eval.h"
#include "model/gpu/gpu_model.h"
#include "model/model.h"
#include "quant/pipeline.h"
#include "util/common.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOK "models/stories260K/tok512.bin"
#define TEXT "data/eval/tinystories_valid.txt"

static int g_no_device;

static spqr_model *load_stories(void) {
    char model[4200];
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(model, tu_shared(TOK), &m), SPQR_OK);
    return m;
}

/* Upload m; NULL (with a SKIP line) when there is no usable device. */
static spqr_gpu_model *gpu_or_skip(spqr_model *m) {
    spqr_gpu_model *g = NULL;
    spqr_status st = spqr_gpu_model_new(m, &g);
    if (st == SPQR_ERR_NO_DEVICE) {
        printf("SKIP: no CUDA device (%s)\n", spqr_last_error());
        g_no_device = 1;
        return NULL;
    }
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    return g;
}

/* GPU vs CPU: prefill logits of 2 sequences, decode logits, eval nll.
 * tol: largest logit difference relative to the largest |logit| (dense
 * linears run in float32 on the GPU; packed ones multiply fp16 weights with
 * fp16 inputs, fp32 sums, like cuBLAS fp16); the nll must agree within 1e-3
 * relative in both cases. */
static void compare(spqr_model *m, spqr_gpu_model *g, const char *label, double tol) {
    const spqr_config *c = spqr_model_config(m);
    int V = c->vocab_size, T = 41, nseq = 2;
    int32_t tok[2 * 41];
    tu_seed(7);
    for (int i = 0; i < nseq * T; i++) tok[i] = i % T == 0 ? 1 : (int32_t)(tu_rand_u64() % (uint64_t)V);
    float *cpu = malloc(sizeof(float) * (size_t)nseq * T * V);
    float *gpu = malloc(sizeof(float) * (size_t)nseq * T * V);
    assert_non_null(cpu);
    assert_non_null(gpu);
    for (int s = 0; s < nseq; s++)
        assert_int_equal(spqr_forward(m, tok + s * T, T, cpu + (size_t)s * T * V), SPQR_OK);
    spqr_status st = spqr_gpu_forward(g, tok, nseq, T, gpu);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    double maxd = 0, scale = 0;
    for (size_t i = 0; i < (size_t)nseq * T * V; i++) {
        maxd = fmax(maxd, fabs((double)gpu[i] - cpu[i]));
        scale = fmax(scale, fabs((double)cpu[i]));
    }
    printf("  %s: prefill max |gpu - cpu| logit %.3g (max |logit| %.3g)\n", label, maxd, scale);
    assert_true(maxd <= tol * fmax(scale, 1.0));

    /* KV-cached decoding reproduces the CPU prefill logits of sequence 0 */
    spqr_gpu_session *ss = NULL;
    assert_int_equal(spqr_gpu_session_new(g, &ss), SPQR_OK);
    double maxs = 0;
    for (int t = 0; t < T; t++) {
        const float *lg = NULL;
        st = spqr_gpu_session_step(ss, tok[t], &lg);
        if (st) fprintf(stderr, "%s\n", spqr_last_error());
        assert_int_equal(st, SPQR_OK);
        for (int i = 0; i < V; i++) maxs = fmax(maxs, fabs((double)lg[i] - cpu[(size_t)t * V + i]));
    }
    assert_int_equal(spqr_gpu_session_pos(ss), T);
    printf("  %s: decode max |gpu - cpu| logit %.3g\n", label, maxs);
    assert_true(maxs <= tol * fmax(scale, 1.0));
    spqr_gpu_session_free(ss);
    free(cpu);
    free(gpu);

    if (!spqr_model_tokenizer(m)) return; /* synthetic models carry no tokenizer */
    /* evaluation nll on a slice of TinyStories */
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(tu_shared(TEXT), &text, &n), SPQR_OK);
    size_t len = n < 20000 ? n : 20000;
    int32_t *ids = NULL;
    size_t nid = 0;
    assert_int_equal(spqr_eval_tokenize(m, text, len, &ids, &nid), SPQR_OK);
    int S = 128;
    spqr_ppl_result rc, rg;
    memset(&rc, 0, sizeof rc);
    memset(&rg, 0, sizeof rg);
    assert_int_equal(spqr_eval_tokens(m, ids, nid, S, &rc, NULL, NULL), SPQR_OK);
    st = spqr_gpu_eval_nll(g, ids, nid, S, &rg);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    printf("  %s: nll cpu %.6f gpu %.6f (%lld windows, %lld tokens scored; cpu %.3f s, gpu %.3f s)\n", label, rc.nll,
           rg.nll, (long long)rg.windows, (long long)rg.tokens_scored, rc.seconds, rg.seconds);
    assert_int_equal(rg.windows, rc.windows);
    assert_int_equal(rg.tokens_scored, rc.tokens_scored);
    assert_true(fabs(rg.nll - rc.nll) / rc.nll <= 1e-3);
    free(ids);
    free(text);
}

/* Quantize m with method (NULL-terminated name/value option pairs, through
 * the public API) into out, free m, and load the written file. */
static spqr_model *quantize_reload(spqr_model *m, const char *method, const char *const *opts, const char *out) {
    spqr_quant_config *qc = NULL;
    assert_int_equal(spqr_quant_config_new(method, &qc), SPQR_OK);
    for (int i = 0; opts[i]; i += 2) assert_int_equal(spqr_quant_config_set(qc, opts[i], opts[i + 1]), SPQR_OK);
    spqr_quant_summary sum;
    spqr_status st = spqr_quantize(m, qc, out, &sum);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    spqr_quant_config_free(qc);
    spqr_model_free(m);
    spqr_model *q = NULL;
    assert_int_equal(spqr_model_load(out, NULL, &q), SPQR_OK);
    return q;
}

static void test_dense(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL) || !tu_have_shared(TEXT)) skip();
    spqr_model *m = load_stories();
    spqr_gpu_model *g = gpu_or_skip(m);
    if (g) {
        printf("  dense: %zu device bytes\n", spqr_gpu_model_bytes(g));
        compare(m, g, "dense", 1e-3);
        /* bad token ids are refused */
        int32_t bad[2] = {1, spqr_model_config(m)->vocab_size};
        assert_int_equal(spqr_gpu_forward(g, bad, 1, 2, NULL), SPQR_ERR_INVALID_ARG);
    }
    spqr_gpu_model_free(g);
    spqr_model_free(m);
}

static void test_packed(void **s) {
    (void)s;
    if (g_no_device || !tu_have_shared(MODEL) || !tu_have_shared(TEXT)) skip();
    char out[4200], calib[4200];
    snprintf(out, sizeof out, "%s/stories.spqr", tu_tmpdir());
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    spqr_model *m = load_stories();
    const char *const opts[] = {"calib", calib, "nsamples", "8", "seqlen", "128", NULL};
    spqr_model *q = quantize_reload(m, "spqr", opts, out);
    assert_string_equal(q->blocks[0].lin[SPQR_LIN_Q].fmt->name, "spqr");
    spqr_gpu_model *g = gpu_or_skip(q);
    if (g) {
        printf("  packed: %zu device bytes\n", spqr_gpu_model_bytes(g));
        compare(q, g, "packed", 5e-3);
    }
    spqr_gpu_model_free(g);
    spqr_model_free(q);
}

/* Hugging Face layout (rotate-half RoPE) with f16 weights and an untied
 * head, dense and RTN-packed, on the GPU against the CPU. */
static void test_hf_f16_untied(void **s) {
    (void)s;
    if (g_no_device) return;
    g_f16 = g_untied = 1;
    const char *dir = make_model("hf16u", OK_MODEL, "LlamaForCausalLM", "float16");
    g_f16 = g_untied = 0;
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(dir, NULL, &m), SPQR_OK);
    assert_false(spqr_model_config(m)->tied_embeddings);
    spqr_gpu_model *g = gpu_or_skip(m);
    if (g) compare(m, g, "hf f16 untied dense", 1e-3);
    spqr_gpu_model_free(g);
    char out[4200];
    snprintf(out, sizeof out, "%s/hf16u.spqr", tu_tmpdir());
    const char *const opts[] = {"group-size", "16", "stat-group-size", "0", NULL};
    m = quantize_reload(m, "rtn", opts, out);
    g = gpu_or_skip(m);
    if (g) compare(m, g, "hf f16 untied packed", 5e-3);
    spqr_gpu_model_free(g);
    spqr_model_free(m);
}

/* The "nll" figure of a --json eval line, as printed. */
static void nll_field(const char *out, char *buf, size_t n) {
    const char *p = strstr(out, "\"nll\":");
    assert_non_null(p);
    size_t k = strcspn(p, ",}");
    assert_true(k < n);
    memcpy(buf, p, k);
    buf[k] = 0;
}

/* Too little GPU memory (capped with SPQR_GPU_MEMORY_MIB): the upload fails
 * with SPQR_ERR_NO_DEVICE and a message with both sizes, and spqr eval --gpu
 * warns and falls back to the CPU, printing the CPU's figures. Without a
 * device only the fallback is checked. */
/* The library chooses the device behind the model handle: spqr_forward,
 * sessions and evaluation route to the GPU after spqr_model_set_device, and
 * AUTO falls back to the CPU without a device (this part runs everywhere). */
static void test_device_routing(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    spqr_model *m = load_stories();
    const int V = spqr_model_config(m)->vocab_size, T = 12;
    int32_t tok[12];
    for (int t = 0; t < T; t++) tok[t] = 1 + (t * 37) % (V - 1);
    float *cpu = malloc(sizeof(float) * (size_t)T * V), *dev = malloc(sizeof(float) * (size_t)T * V);
    assert_int_equal(spqr_forward(m, tok, T, cpu), SPQR_OK);
    spqr_status st = spqr_model_set_device(m, SPQR_DEVICE_GPU);
    if (st == SPQR_ERR_NO_DEVICE) {
        assert_int_equal(spqr_model_device(m), SPQR_DEVICE_CPU);
        assert_int_equal(spqr_model_set_device(m, SPQR_DEVICE_AUTO), SPQR_OK); /* falls back */
        assert_int_equal(spqr_model_device(m), SPQR_DEVICE_CPU);
        printf("  no device: GPU refused (%s), AUTO stays on the CPU\n", spqr_last_error());
    } else {
        assert_int_equal(st, SPQR_OK);
        assert_int_equal(spqr_model_device(m), SPQR_DEVICE_GPU);
        assert_int_equal(spqr_forward(m, tok, T, dev), SPQR_OK);
        double maxd = 0, scale = 0;
        for (size_t i = 0; i < (size_t)T * V; i++) {
            maxd = fmax(maxd, fabs((double)dev[i] - cpu[i]));
            scale = fmax(scale, fabs((double)cpu[i]));
        }
        spqr_session *ss = NULL;
        assert_int_equal(spqr_session_new(m, &ss), SPQR_OK);
        double maxs = 0;
        for (int t = 0; t < T; t++) {
            const float *lg = NULL;
            assert_int_equal(spqr_session_step(ss, tok[t], &lg), SPQR_OK);
            for (int i = 0; i < V; i++) maxs = fmax(maxs, fabs((double)lg[i] - cpu[(size_t)t * V + i]));
        }
        spqr_session_free(ss);
        printf("  routed through the handle: prefill max |d| %.3g, decode max |d| %.3g (max |logit| %.3g)\n", maxd,
               maxs, scale);
        assert_true(maxd <= 1e-3 * fmax(scale, 1.0));
        assert_true(maxs <= 1e-3 * fmax(scale, 1.0));
        assert_int_equal(spqr_model_set_device(m, SPQR_DEVICE_CPU), SPQR_OK);
        assert_int_equal(spqr_model_device(m), SPQR_DEVICE_CPU);
    }
    free(cpu);
    free(dev);
    spqr_model_free(m);
}

static void test_too_little_memory(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL) || !tu_have_shared(TEXT)) skip();
    char model[4200], tok[4200], text[4200], args[13000], cpu[128], gpu[128];
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    snprintf(tok, sizeof tok, "%s", tu_shared(TOK));
    snprintf(text, sizeof text, "%s", tu_shared(TEXT));
    snprintf(args, sizeof args, "eval '%s' --tokenizer '%s' --data '%s' --seqlen 128 --max-windows 4 --json", model,
             tok, text);
    char *out = NULL, *err = NULL;
    assert_int_equal(tu_run_cli(args, &out, NULL), 0);
    nll_field(out, cpu, sizeof cpu);
    free(out);

    setenv("SPQR_GPU_MEMORY_MIB", "1", 1);
    if (!g_no_device) {
        spqr_model *m = load_stories();
        spqr_gpu_model *g = NULL;
        assert_int_equal(spqr_gpu_model_new(m, &g), SPQR_ERR_NO_DEVICE);
        assert_null(g);
        printf("  capped at 1 MiB: %s\n", spqr_last_error());
        assert_non_null(strstr(spqr_last_error(), "MiB free"));
        spqr_model_free(m);
    }
    strcat(args, " --gpu");
    assert_int_equal(tu_run_cli(args, &out, &err), 0);
    unsetenv("SPQR_GPU_MEMORY_MIB");
    printf("  eval --gpu: %s", err);
    assert_non_null(strstr(err, "running on the CPU"));
    nll_field(out, gpu, sizeof gpu);
    assert_string_equal(cpu, gpu);
    free(out);
    free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_packed),
        cmocka_unit_test(test_hf_f16_untied),
        cmocka_unit_test(test_too_little_memory),
        cmocka_unit_test(test_device_routing),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
