/* test_loaders.c - bad input to the model loaders and the CLI: every case
 * gives a clear one-line error naming the file, a non-zero exit, no crash
 * (this suite also runs under ASan+UBSan). Uses a tiny synthetic HF model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"
#include "util/common.h"

#include "tinyhf.h"

/* Load through the library and the CLI; both must fail and name `needle`. */
static void expect_fail(const char *model, const char *extra, const char *needle, const char *what) {
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(model, NULL, &m);
    if (!extra) {
        assert_int_not_equal(st, SPQR_OK);
        assert_null(m);
        printf("  %s -> %s: %s\n", what, spqr_status_string(st), spqr_last_error());
        assert_non_null(strstr(spqr_last_error(), needle));
    } else {
        spqr_model_free(m);
    }
    char args[9000], *out = NULL, *err = NULL;
    snprintf(args, sizeof args, "eval '%s' --data '%s' %s", model, tu_shared("data/eval/ptb_test.txt"),
             extra ? extra : "");
    int rc = tu_run_cli(args, &out, &err);
    assert_true(rc != 0 && rc != -1);
    assert_non_null(strstr(err, needle));
    assert_non_null(strstr(err, "error"));
    /* exactly one line */
    char *nl = strchr(err, '\n');
    assert_true(nl && nl[1] == 0);
    free(out);
    free(err);
}

static void test_good_model_loads(void **s) {
    (void)s;
    const char *d = make_model("good", OK_MODEL, "LlamaForCausalLM", "float32");
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(d, NULL, &m), SPQR_OK);
    assert_int_equal(spqr_model_config(m)->dim, TD);
    int32_t tok[5] = {1, 5, 9, 300, 2};
    float *logits = malloc(sizeof(float) * 5 * TV);
    assert_int_equal(spqr_forward(m, tok, 5, logits), SPQR_OK);
    for (int i = 0; i < 5 * TV; i++) assert_true(isfinite(logits[i]));
    free(logits);
    spqr_model_free(m);
}

static float *tiny_logits(const char *dir, const int32_t *tok, int T) {
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(dir, NULL, &m);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    float *lg = malloc(sizeof(float) * (size_t)T * TV);
    assert_int_equal(spqr_forward(m, tok, T, lg), SPQR_OK);
    spqr_model_free(m);
    return lg;
}

/* f16 storage and an untied head (4.x-style config) load and run right. */
static void test_f16_and_untied(void **s) {
    (void)s;
    int32_t tok[6] = {1, 17, 4, 250, 511, 3};
    const char *d = make_model("ref32", OK_MODEL, "LlamaForCausalLM", "float32");
    float *a = tiny_logits(d, tok, 6);
    g_untied = 1;
    d = make_model("untied", OK_MODEL, "MistralForCausalLM", "float32");
    float *b = tiny_logits(d, tok, 6);
    g_untied = 0;
    for (int i = 0; i < 6 * TV; i++) assert_true(b[i] == 2.0f * a[i]);
    g_f16 = 1;
    d = make_model("f16", OK_MODEL, "LlamaForCausalLM", "float16");
    float *c = tiny_logits(d, tok, 6);
    g_f16 = 0;
    double maxd = 0;
    for (int i = 0; i < 6 * TV; i++) maxd = fmax(maxd, fabs(c[i] - a[i]));
    printf("  f16 vs f32 weights: max logit difference %.3g\n", maxd);
    assert_true(maxd < 2e-2);
    assert_true(maxd > 0); /* really read as f16 */
    free(a);
    free(b);
    free(c);
}

static void test_truncated(void **s) {
    (void)s;
    expect_fail(make_model("trunc", TRUNCATED, "LlamaForCausalLM", "float32"), NULL, "model.safetensors", "truncated");
}
static void test_huge_header(void **s) {
    (void)s;
    expect_fail(make_model("hdr", HUGE_HEADER, "LlamaForCausalLM", "float32"), NULL, "header length", "header length");
}
static void test_overlap(void **s) {
    (void)s;
    expect_fail(make_model("ovl", OVERLAP, "LlamaForCausalLM", "float32"), NULL, "overlap", "overlapping offsets");
}
static void test_out_of_range(void **s) {
    (void)s;
    expect_fail(make_model("oor", OUT_OF_RANGE, "LlamaForCausalLM", "float32"), NULL, "past the end", "out of range");
}
static void test_wrong_dtype(void **s) {
    (void)s;
    expect_fail(make_model("dtype", OK_MODEL, "LlamaForCausalLM", "bfloat16"), NULL, "config.json says", "dtype");
}
static void test_wrong_shape(void **s) {
    (void)s;
    expect_fail(make_model("shape", WRONG_SHAPE, "LlamaForCausalLM", "float32"), NULL, "shape", "shape");
}
static void test_misaligned(void **s) {
    (void)s;
    expect_fail(make_model("align", MISALIGNED, "LlamaForCausalLM", "float32"), NULL, "aligned", "misaligned data");
}
static void test_unknown_arch(void **s) {
    (void)s;
    expect_fail(make_model("arch", OK_MODEL, "GPT2LMHeadModel", "float32"), NULL, "unknown architecture", "arch");
}

static void test_missing_shard(void **s) {
    (void)s;
    const char *d = make_model("shard", OK_MODEL, "LlamaForCausalLM", "float32");
    char p[4300];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    char np[4400];
    snprintf(np, sizeof np, "%s/model-00001-of-00002.safetensors", d);
    assert_int_equal(rename(p, np), 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
                      "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}";
    assert_int_equal(tu_write_file(p, idx, strlen(idx)), 0);
    expect_fail(d, NULL, "model-00002-of-00002.safetensors", "missing shard");
}

static void test_tokenizer_vocab_mismatch(void **s) {
    (void)s;
    if (!tu_have_shared("models/ref-40m/tokenizer.model")) skip();
    const char *d = make_model("vocab", OK_MODEL, "LlamaForCausalLM", "float32");
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(d, tu_shared("models/ref-40m/tokenizer.model"), &m);
    assert_int_equal(st, SPQR_ERR_MISMATCH);
    assert_non_null(strstr(spqr_last_error(), "tokenizer.model"));
    printf("  vocab mismatch -> %s\n", spqr_last_error());
    char args[9000], *err = NULL;
    snprintf(args, sizeof args, "generate '%s' --tokenizer '%s' -n 3", d, tu_shared("models/ref-40m/tokenizer.model"));
    int rc = tu_run_cli(args, NULL, &err);
    assert_true(rc > 0);
    assert_non_null(strstr(err, "32000"));
    free(err);
}

static void test_nan_warns(void **s) {
    (void)s;
    const char *d = make_model("nan", NAN_WEIGHT, "LlamaForCausalLM", "float32");
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(d, NULL, &m), SPQR_OK);
    assert_int_equal(spqr_model_nonfinite_count(m), 1);
    spqr_model_free(m);
    char args[9000], *err = NULL;
    snprintf(args, sizeof args, "generate '%s' --tokenizer '%s' -n 2 --temp 0", d,
             tu_shared("models/stories260K/tok512.bin"));
    if (!tu_have_shared("models/stories260K/tok512.bin")) skip();
    tu_run_cli(args, NULL, &err);
    assert_non_null(strstr(err, "NaN"));
    free(err);
}

static void test_empty_eval_text(void **s) {
    (void)s;
    if (!tu_have_shared("models/stories260K/stories260K.bin")) skip();
    char empty[4200], args[9000], *err = NULL;
    snprintf(empty, sizeof empty, "%s/empty.txt", tu_tmpdir());
    assert_int_equal(tu_write_file(empty, "", 0), 0);
    char model[4200];
    snprintf(model, sizeof model, "%s", tu_shared("models/stories260K/stories260K.bin"));
    snprintf(args, sizeof args, "eval '%s' --tokenizer '%s' --data '%s'", model,
             tu_shared("models/stories260K/tok512.bin"), empty);
    int rc = tu_run_cli(args, NULL, &err);
    assert_true(rc > 0);
    assert_non_null(strstr(err, "empty"));
    assert_non_null(strstr(err, "empty.txt"));
    free(err);
}

static void test_seqlen_too_long(void **s) {
    (void)s;
    if (!tu_have_shared("models/stories260K/stories260K.bin")) skip();
    char args[9000], model[4200], tok[4200], *err = NULL;
    snprintf(model, sizeof model, "%s", tu_shared("models/stories260K/stories260K.bin"));
    snprintf(tok, sizeof tok, "%s", tu_shared("models/stories260K/tok512.bin"));
    snprintf(args, sizeof args, "eval '%s' --tokenizer '%s' --data '%s' --seqlen 4096", model, tok,
             tu_shared("data/eval/tinystories_valid.txt"));
    int rc = tu_run_cli(args, NULL, &err);
    assert_true(rc > 0);
    assert_non_null(strstr(err, "context"));
    free(err);
}

static void test_llama2c_truncated(void **s) {
    (void)s;
    if (!tu_have_shared("models/stories260K/stories260K.bin")) skip();
    FILE *f = fopen(tu_shared("models/stories260K/stories260K.bin"), "rb");
    assert_non_null(f);
    char *buf = malloc(200000);
    size_t n = fread(buf, 1, 200000, f);
    fclose(f);
    char p[4200];
    snprintf(p, sizeof p, "%s/trunc.bin", tu_tmpdir());
    assert_int_equal(tu_write_file(p, buf, n), 0);
    free(buf);
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(p, NULL, &m), SPQR_ERR_FORMAT);
    assert_non_null(strstr(spqr_last_error(), "trunc.bin"));
    assert_non_null(strstr(spqr_last_error(), "truncated"));
}

static void test_missing_path(void **s) {
    (void)s;
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load("/nonexistent/model", NULL, &m), SPQR_ERR_IO);
    assert_non_null(strstr(spqr_last_error(), "/nonexistent/model"));
}

static int teardown(void **s) {
    (void)s;
    tu_cleanup();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_model_loads), cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_f16_and_untied),
        cmocka_unit_test(test_huge_header),      cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_out_of_range),     cmocka_unit_test(test_wrong_dtype),
        cmocka_unit_test(test_wrong_shape),      cmocka_unit_test(test_unknown_arch),
        cmocka_unit_test(test_missing_shard),    cmocka_unit_test(test_tokenizer_vocab_mismatch),
        cmocka_unit_test(test_nan_warns),        cmocka_unit_test(test_empty_eval_text),
        cmocka_unit_test(test_seqlen_too_long),  cmocka_unit_test(test_llama2c_truncated),
        cmocka_unit_test(test_missing_path),     cmocka_unit_test(test_misaligned),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
