/* test_stories.c - stories260K (llama2.c checkpoint): greedy generation from
 * BOS reproduces llama2.c's `run -t 0 -n 200` byte for byte; the KV-cached
 * decode path agrees with the batched prefill path. (The TinyStories nll is
 * in test_tinystories_slow.c.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "util/common.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOK "models/stories260K/tok512.bin"

static spqr_model *load_stories(void) {
    char model[4200];
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(model, tu_shared(TOK), &m), SPQR_OK);
    return m;
}

static void test_greedy_matches_llama2c(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL) || !tu_have_shared("ref/stories260K_greedy200.txt")) skip();
    char args[9000], model[4200], *out = NULL, *err = NULL;
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    snprintf(args, sizeof args, "generate '%s' --tokenizer '%s' -n 200 --temp 0", model, tu_shared(TOK));
    int rc = tu_run_cli(args, &out, &err);
    if (rc) fprintf(stderr, "%s", err);
    assert_int_equal(rc, 0);
    char *ref = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(tu_shared("ref/stories260K_greedy200.txt"), &ref, &n), SPQR_OK);
    if (strcmp(out, ref) != 0) fprintf(stderr, "got:\n%s\nwant:\n%s\n", out, ref);
    assert_string_equal(out, ref);
    free(ref);
    free(out);
    free(err);
}

static void test_decode_matches_prefill(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    spqr_model *m = load_stories();
    int V = spqr_model_config(m)->vocab_size, T = 37;
    int32_t tok[37];
    tu_seed(3);
    for (int i = 0; i < T; i++) tok[i] = i == 0 ? 1 : (int32_t)(tu_rand_u64() % (uint64_t)V);
    float *full = malloc(sizeof(float) * (size_t)T * V);
    assert_int_equal(spqr_forward(m, tok, T, full), SPQR_OK);
    spqr_session *ss = NULL;
    assert_int_equal(spqr_session_new(m, &ss), SPQR_OK);
    double maxd = 0;
    for (int t = 0; t < T; t++) {
        const float *lg;
        assert_int_equal(spqr_session_step(ss, tok[t], &lg), SPQR_OK);
        for (int i = 0; i < V; i++) maxd = fmax(maxd, fabs(lg[i] - full[(size_t)t * V + i]));
    }
    printf("  max |decode - prefill| logit difference: %.3g\n", maxd);
    assert_true(maxd < 1e-3);
    spqr_session_free(ss);
    free(full);
    spqr_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_matches_llama2c),
        cmocka_unit_test(test_decode_matches_prefill),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
