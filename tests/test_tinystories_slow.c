/* test_tinystories_slow.c - stories260K's nll on the TinyStories validation
 * slice at S=512 with the REFERENCE protocol, reported next to llama2.c's
 * published 1.297 nats/token (full validation split, per-story BOS). */
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

static void test_tinystories_nll(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL) || !tu_have_shared("data/eval/tinystories_valid.txt")) skip();
    spqr_model *m = load_stories();
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(tu_shared("data/eval/tinystories_valid.txt"), &text, &n), SPQR_OK);
    spqr_ppl_result r;
    assert_int_equal(spqr_eval_perplexity(m, text, n, 512, &r), SPQR_OK);
    printf("  stories260K tinystories_valid@512: nll %.4f ppl %.3f (%lld tokens scored, %.1fs); llama2.c "
           "publishes 1.297\n",
           r.nll, r.ppl, (long long)r.tokens_scored, r.seconds);
    /* The REFERENCE protocol (one BOS, whole text) scores story boundaries
     * that training marked with BOS as blank lines, and "Once" without the
     * dummy-prefix space: expected above 1.297 but in its range. */
    assert_true(r.nll > 1.2 && r.nll < 1.75);
    free(text);
    spqr_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_tinystories_nll)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
