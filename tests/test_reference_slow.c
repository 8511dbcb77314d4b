/* test_reference_slow.c - every Hugging Face reference model in
 * $SPQR_SHARED/models (folders with REFERENCE.json) reproduces its
 * PyTorch/transformers figures: |nll - ref| / ref <= 0.2% and exact token
 * counts. CI evaluates the smaller texts (ptb_test, c4_sample) at every
 * seqlen; SPQR_REF_ALL=1 adds corpus_valid and wikitext2_test. Token totals
 * are checked for every text. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "testutil.h"
#include "util/common.h"

static const char *text_file(const char *key) {
    if (!strcmp(key, "corpus_valid")) return "corpus_valid.txt";
    if (!strcmp(key, "wikitext2_test")) return "wikitext2_test.raw";
    if (!strcmp(key, "ptb_test")) return "ptb_test.txt";
    if (!strcmp(key, "c4_sample")) return "c4_sample.utf8";
    return NULL;
}

static int check_model(const char *dir) {
    char path[8800];
    snprintf(path, sizeof path, "%s/REFERENCE.json", dir);
    char *txt = NULL;
    size_t len = 0;
    if (spqr_read_file(path, &txt, &len)) return 0;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    cJSON *ev = cJSON_GetObjectItem(root, "eval");
    assert_non_null(ev);
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(dir, NULL, &m);
    if (st) fprintf(stderr, "load failed: %s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    int all = getenv("SPQR_REF_ALL") && atoi(getenv("SPQR_REF_ALL"));
    int checked = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, ev) {
        char key[128];
        snprintf(key, sizeof key, "%s", it->string);
        char *at = strchr(key, '@');
        assert_non_null(at);
        *at = 0;
        int S = atoi(at + 1);
        const char *fn = text_file(key);
        assert_non_null(fn);
        char rel[256];
        snprintf(rel, sizeof rel, "data/eval/%s", fn);
        char *text = NULL;
        size_t n = 0;
        assert_int_equal(spqr_read_file(tu_shared(rel), &text, &n), SPQR_OK);
        int32_t *ids = NULL;
        size_t nid = 0;
        assert_int_equal(spqr_eval_tokenize(m, text, n, &ids, &nid), SPQR_OK);
        free(text);
        long ref_total = (long)cJSON_GetObjectItem(it, "tokens_total")->valuedouble;
        printf("  %-22s tokens_total %zu (ref %ld)\n", it->string, nid, ref_total);
        assert_int_equal((long)nid, ref_total);
        int heavy = !strcmp(key, "corpus_valid") || !strcmp(key, "wikitext2_test");
        if (heavy && !all) {
            free(ids);
            continue;
        }
        spqr_ppl_result r;
        assert_int_equal(spqr_eval_tokens(m, ids, nid, S, &r, NULL, NULL), SPQR_OK);
        free(ids);
        double ref = cJSON_GetObjectItem(it, "nll")->valuedouble;
        long ref_scored = (long)cJSON_GetObjectItem(it, "tokens_scored")->valuedouble;
        double rel_err = (r.nll - ref) / ref;
        printf("  %-22s nll %.6f ref %.6f rel %+.5f%%  scored %lld (ref %ld)  %.1fs\n", it->string, r.nll, ref,
               100 * rel_err, (long long)r.tokens_scored, ref_scored, r.seconds);
        assert_int_equal((long)r.tokens_scored, ref_scored);
        assert_true(rel_err < 0.002 && rel_err > -0.002);
        checked++;
    }
    cJSON_Delete(root);
    spqr_model_free(m);
    return checked;
}

static void test_reference_models(void **s) {
    (void)s;
    if (!tu_have_shared("models")) skip();
    char models[4200];
    snprintf(models, sizeof models, "%s", tu_shared("models"));
    DIR *d = opendir(models);
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char dir[8400], ref[8900];
        snprintf(dir, sizeof dir, "%s/%s", models, e->d_name);
        snprintf(ref, sizeof ref, "%s/REFERENCE.json", dir);
        if (!spqr_file_exists(ref)) continue;
        printf("model %s\n", dir);
        n += check_model(dir);
    }
    closedir(d);
    printf("checked %d reference figures\n", n);
    assert_true(n > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_reference_models)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
