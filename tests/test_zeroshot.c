/* test_zeroshot.c - zero-shot evaluation with lm-eval's scoring: the
 * tokenization rule on the real LLaMA tokenizer, acc/acc_norm with ties and
 * non-ASCII choices, LAMBADA-style greedy match and perplexity, a small task
 * checked against an independent per-request computation, the packed
 * prefix-tree path against the naive path (truncation, split branches, the
 * six real tasks on ref-40m), bad task files, the GPU path and the CLI. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/zeroshot.h"
#include "testutil.h"
#include "util/common.h"

#define REF "models/ref-40m/"
#define STORIES "models/stories260K/stories260K.bin"
#define STORIES_TOK "models/stories260K/tok512.bin"
#define REQ_DIR "data/zeroshot/requests/"

static spqr_model *load_stories(void) {
    char model[4200];
    snprintf(model, sizeof model, "%s", tu_shared(STORIES));
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(model, tu_shared(STORIES_TOK), &m), SPQR_OK);
    return m;
}

/* Write a task file tmp/name from lines of JSON; returns its path (static). */
static const char *write_task(const char *name, const char *text) {
    static char path[4300];
    snprintf(path, sizeof path, "%s/%s", tu_tmpdir(), name);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    return path;
}

/* One document line: requests [[ctx[i], cont[i]]...], gold (-1: none). */
static char *doc_line(int n, const char *const *ctx, const char *const *cont, int gold) {
    cJSON *o = cJSON_CreateObject(), *rq = cJSON_AddArrayToObject(o, "requests");
    for (int i = 0; i < n; i++) {
        cJSON *p = cJSON_CreateArray();
        cJSON_AddItemToArray(p, cJSON_CreateString(ctx[i]));
        cJSON_AddItemToArray(p, cJSON_CreateString(cont[i]));
        cJSON_AddItemToArray(rq, p);
    }
    if (gold >= 0) cJSON_AddNumberToObject(o, "gold", gold);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void append(char **buf, const char *line) {
    size_t a = *buf ? strlen(*buf) : 0, b = strlen(line);
    *buf = realloc(*buf, a + b + 2);
    memcpy(*buf + a, line, b);
    (*buf)[a + b] = '\n';
    (*buf)[a + b + 1] = 0;
}

/* Independent per-request loglikelihood: lm-eval's input (ctx + cont cut
 * from the left, last token dropped), full logits, log-softmax in double. */
static double ref_loglik(spqr_model *m, const spqr_zs_pair *p, int *greedy) {
    int V = spqr_model_config(m)->vocab_size, maxlen = spqr_model_config(m)->max_seq_len;
    int total = p->n_ctx + p->n_cont, L = total - 1 < maxlen ? total - 1 : maxlen;
    int32_t *full = malloc(sizeof(int32_t) * (size_t)total);
    memcpy(full, p->ctx, sizeof(int32_t) * (size_t)p->n_ctx);
    memcpy(full + p->n_ctx, p->cont, sizeof(int32_t) * (size_t)p->n_cont);
    float *lg = malloc(sizeof(float) * (size_t)L * (size_t)V);
    assert_int_equal(spqr_forward(m, full + (total - 1 - L), L, lg), SPQR_OK);
    double s = 0;
    *greedy = 1;
    for (int k = 0; k < p->n_cont; k++) {
        const float *l = lg + (size_t)(L - p->n_cont + k) * V;
        double mx = l[0], z = 0;
        int am = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > mx) mx = l[i], am = i;
        for (int i = 0; i < V; i++) z += exp((double)l[i] - mx);
        s += (double)l[p->cont[k]] - mx - log(z);
        if (am != p->cont[k]) *greedy = 0;
    }
    free(full);
    free(lg);
    return s;
}

static void pair_free(spqr_zs_pair *p) {
    free(p->ctx);
    free(p->cont);
}

static int32_t *enc(const spqr_tokenizer *t, const char *s, int bos, size_t *n) {
    int32_t *ids = NULL;
    assert_int_equal(spqr_tokenizer_encode(t, s, strlen(s), bos, &ids, n), SPQR_OK);
    return ids;
}

/* ---- tokenization rule -------------------------------------------------- */

static void test_tokenization_rule(void **s) {
    (void)s;
    if (!tu_have_shared(REF "tokenizer.json")) skip();
    spqr_tokenizer *t = NULL;
    assert_int_equal(spqr_tokenizer_load(tu_shared(REF "tokenizer.json"), &t), SPQR_OK);
    spqr_zs_pair a, b;
    /* the context's trailing whitespace moves to the continuation */
    assert_int_equal(spqr_zs_encode(t, "Question: Who wrote it?\nAnswer: ", "Dickens", 1, &a), SPQR_OK);
    assert_int_equal(spqr_zs_encode(t, "Question: Who wrote it?\nAnswer:", " Dickens", 1, &b), SPQR_OK);
    assert_int_equal(a.n_ctx, b.n_ctx);
    assert_int_equal(a.n_cont, b.n_cont);
    assert_memory_equal(a.ctx, b.ctx, sizeof(int32_t) * (size_t)a.n_ctx);
    assert_memory_equal(a.cont, b.cont, sizeof(int32_t) * (size_t)a.n_cont);
    /* ctx = encode(context) with BOS; cont = the rest of encode(context + continuation) */
    size_t nc, nj;
    int32_t *c = enc(t, "Question: Who wrote it?\nAnswer:", 1, &nc);
    int32_t *j = enc(t, "Question: Who wrote it?\nAnswer: Dickens", 1, &nj);
    assert_int_equal(c[0], 1);
    assert_int_equal(a.n_ctx, (int)nc);
    assert_memory_equal(a.ctx, c, nc * sizeof(int32_t));
    assert_int_equal(a.n_ctx + a.n_cont, (int)nj);
    assert_memory_equal(a.cont, j + nc, (size_t)a.n_cont * sizeof(int32_t));
    assert_int_equal(a.prefix_ok, 1);
    /* the trailing space is encoded with the continuation, not the context:
     * "Answer: " alone would end in a lone-space token */
    size_t ncs;
    int32_t *cs = enc(t, "Question: Who wrote it?\nAnswer: ", 1, &ncs);
    assert_int_not_equal((int)ncs, a.n_ctx);
    free(cs);
    pair_free(&a);
    pair_free(&b);
    free(c);
    free(j);

    /* several whitespace characters, newline and U+00A0 (Python's str.rstrip strips all of them) */
    assert_int_equal(spqr_zs_encode(t, "Fill in:\n \xc2\xa0", "cake", 1, &a), SPQR_OK);
    c = enc(t, "Fill in:", 1, &nc);
    j = enc(t, "Fill in:\n \xc2\xa0" "cake", 1, &nj);
    assert_int_equal(a.n_ctx, (int)nc);
    assert_memory_equal(a.ctx, c, nc * sizeof(int32_t));
    assert_int_equal(a.n_cont, (int)(nj - nc));
    assert_memory_equal(a.cont, j + nc, (size_t)a.n_cont * sizeof(int32_t));
    pair_free(&a);
    free(c);
    free(j);

    /* the context's ids are not a prefix of the joint ids: continuation = joint[len(ctx):] (lm-eval) */
    assert_int_equal(spqr_zs_encode(t, "Hello w", "orld peace", 1, &a), SPQR_OK);
    c = enc(t, "Hello w", 1, &nc);
    j = enc(t, "Hello world peace", 1, &nj);
    assert_true(memcmp(c, j, nc * sizeof(int32_t)) != 0);
    assert_int_equal(a.prefix_ok, 0);
    assert_int_equal(a.n_cont, (int)(nj - nc));
    assert_memory_equal(a.cont, j + nc, (size_t)a.n_cont * sizeof(int32_t));
    pair_free(&a);
    free(c);
    free(j);

    /* --no-bos: the same ids without BOS */
    assert_int_equal(spqr_zs_encode(t, "Question: Who wrote it?\nAnswer:", " Dickens", 1, &a), SPQR_OK);
    assert_int_equal(spqr_zs_encode(t, "Question: Who wrote it?\nAnswer:", " Dickens", 0, &b), SPQR_OK);
    assert_int_equal(b.n_ctx, a.n_ctx - 1);
    assert_memory_equal(b.ctx, a.ctx + 1, (size_t)b.n_ctx * sizeof(int32_t));
    assert_int_equal(b.n_cont, a.n_cont);
    assert_memory_equal(b.cont, a.cont, (size_t)b.n_cont * sizeof(int32_t));
    pair_free(&a);
    pair_free(&b);

    /* an empty context becomes BOS (lm-eval's prefix token) */
    assert_int_equal(spqr_zs_encode(t, "", "The end", 1, &a), SPQR_OK);
    j = enc(t, "The end", 0, &nj);
    assert_int_equal(a.n_ctx, 1);
    assert_int_equal(a.ctx[0], 1);
    assert_int_equal(a.n_cont, (int)nj);
    assert_memory_equal(a.cont, j, nj * sizeof(int32_t));
    pair_free(&a);
    free(j);
    spqr_tokenizer_free(t);
}

/* ---- metrics -------------------------------------------------------------- */

static void test_metrics_ties_and_non_ascii(void **s) {
    (void)s;
    const char *txt =
        /* ties -> lowest index: acc predicts 0 (gold 1) */
        "{\"requests\": [[\"Q\", \" a\"], [\"Q\", \" b\"], [\"Q\", \" c\"]], \"gold\": 1}\n"
        /* choice lengths from the continuation in code points: \" \xc3\xa9\" is 1, \" ab\" is 2 */
        "{\"requests\": [[\"Q\", \" \xc3\xa9\"], [\"Q\", \" ab\"]], \"gold\": 0}\n"
        "\n"
        /* given choice_chars: -4/4 == -2/2, a tie -> index 0 */
        "{\"requests\": [[\"Q\", \" \xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\"], [\"Q\", \" xy\"]], \"gold\": 1, "
        "\"choice_chars\": [4, 2]}\n";
    spqr_task *t = NULL;
    assert_int_equal(spqr_task_load(write_task("mc.jsonl", txt), &t), SPQR_OK);
    assert_string_equal(spqr_task_name(t), "mc");
    assert_int_equal(spqr_task_get_kind(t), SPQR_TASK_CHOICE);
    assert_int_equal(spqr_task_num_docs(t), 3);
    assert_int_equal(spqr_task_num_requests(t), 7);
    assert_true(spqr_task_has_acc_norm(t));
    double ll[7] = {-2, -2, -3, -1.5, -2.0, -4, -2};
    uint8_t g[7] = {0};
    spqr_zeroshot_result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(spqr_zs_metrics(t, 3, ll, g, &r), SPQR_OK);
    assert_int_equal(r.n, 3);
    /* acc: doc0 0 != 1, doc1 0 == 0, doc2 1 == 1 */
    assert_true(fabs(r.acc - 2.0 / 3.0) < 1e-12);
    assert_true(fabs(r.acc_stderr - sqrt(2.0 / 3.0 / 3.0 / 2.0)) < 1e-12);
    /* acc_norm: doc0 0 (tie), doc1 -1.5/1 < -2/2 -> 1 (bytes would give 0), doc2 tie -> 0 */
    assert_true(r.has_acc_norm);
    assert_true(fabs(r.acc_norm - 0.0) < 1e-12);
    assert_false(r.has_ppl);
    /* the first document alone */
    assert_int_equal(spqr_zs_metrics(t, 1, ll, g, &r), SPQR_OK);
    assert_true(r.acc == 0.0 && r.acc_stderr == 0.0);
    spqr_task_free(t);

    /* different contexts (WinoGrande): acc only */
    txt = "{\"requests\": [[\"A went\", \" home\"], [\"B went\", \" home\"]], \"gold\": 1, \"choice_chars\": [4, 4]}\n";
    assert_int_equal(spqr_task_load(write_task("wg.jsonl", txt), &t), SPQR_OK);
    assert_false(spqr_task_has_acc_norm(t));
    double ll2[2] = {-3, -1};
    assert_int_equal(spqr_zs_metrics(t, 1, ll2, g, &r), SPQR_OK);
    assert_true(r.acc == 1.0 && !r.has_acc_norm);
    spqr_task_free(t);

    /* greedy task: acc = all tokens greedy, ppl = exp(-mean loglikelihood) */
    txt = "{\"requests\": [[\"x\", \" y\"]]}\n{\"requests\": [[\"x\", \" z\"]]}\n";
    assert_int_equal(spqr_task_load(write_task("lb.jsonl", txt), &t), SPQR_OK);
    assert_int_equal(spqr_task_get_kind(t), SPQR_TASK_GREEDY);
    double ll3[2] = {-1, -3};
    uint8_t g3[2] = {1, 0};
    assert_int_equal(spqr_zs_metrics(t, 2, ll3, g3, &r), SPQR_OK);
    assert_true(r.acc == 0.5 && r.has_ppl && fabs(r.ppl - exp(2.0)) < 1e-12);
    spqr_task_free(t);

    assert_int_equal(spqr_zeroshot_paper_metric("arc_challenge"), 2);
    assert_int_equal(spqr_zeroshot_paper_metric("hellaswag"), 2);
    assert_int_equal(spqr_zeroshot_paper_metric("winogrande"), 1);
    assert_int_equal(spqr_zeroshot_paper_metric("lambada_openai"), 0);
}

/* ---- bad task files --------------------------------------------------------- */

static void expect_bad(const char *name, const char *text, const char *want) {
    spqr_task *t = NULL;
    const char *path = write_task(name, text);
    spqr_status st = spqr_task_load(path, &t);
    if (st == SPQR_OK || !strstr(spqr_last_error(), path) || !strstr(spqr_last_error(), want))
        fprintf(stderr, "%s: status %d, message '%s', want '%s'\n", name, (int)st, spqr_last_error(), want);
    assert_int_not_equal(st, SPQR_OK);
    assert_null(t);
    assert_non_null(strstr(spqr_last_error(), path));
    assert_non_null(strstr(spqr_last_error(), want));
}

static void test_bad_task_files(void **s) {
    (void)s;
    const char *ok = "{\"requests\": [[\"a\", \" b\"], [\"a\", \" c\"]], \"gold\": 0}\n";
    char buf[1024];
    snprintf(buf, sizeof buf, "%s{\"requests\": [[\"a\", \" b\"]], \"gold\": 0,}\n", ok);
    expect_bad("json.jsonl", buf, ":2: not valid JSON");
    expect_bad("noreq.jsonl", "{\"gold\": 0}\n", ":1: missing field \"requests\"");
    snprintf(buf, sizeof buf, "%s\n{\"requests\": [[\"a\", \" b\"], [\"a\", \" c\"]], \"gold\": 2}\n", ok);
    expect_bad("gold.jsonl", buf, ":3: \"gold\" 2 is out of range (2 requests)");
    expect_bad("gold_neg.jsonl", "{\"requests\": [[\"a\", \" b\"]], \"gold\": -1}\n", "out of range");
    expect_bad("gold_frac.jsonl", "{\"requests\": [[\"a\", \" b\"]], \"gold\": 0.5}\n", "must be an integer");
    expect_bad("empty_req.jsonl", "{\"requests\": [], \"gold\": 0}\n", ":1: \"requests\" is empty");
    expect_bad("pair.jsonl", "{\"requests\": [[\"a\"]], \"gold\": 0}\n", "request 0 must be [context, continuation]");
    expect_bad("nonstr.jsonl", "{\"requests\": [[\"a\", 3]], \"gold\": 0}\n", "must be [context, continuation]");
    expect_bad("emptycont.jsonl", "{\"requests\": [[\"a\", \"\"]], \"gold\": 0}\n", "empty continuation");
    snprintf(buf, sizeof buf, "%s{\"requests\": [[\"a\", \" b\"]]}\n", ok);
    expect_bad("mixed.jsonl", buf, ":2: lacks \"gold\"");
    expect_bad("greedy2.jsonl", "{\"requests\": [[\"a\", \" b\"], [\"a\", \" c\"]]}\n", "exactly one request");
    expect_bad("chars.jsonl", "{\"requests\": [[\"a\", \" b\"]], \"gold\": 0, \"choice_chars\": [1, 2]}\n",
               "\"choice_chars\" must be an array of 1 integers");
    expect_bad("chars0.jsonl", "{\"requests\": [[\"a\", \" b\"]], \"gold\": 0, \"choice_chars\": [0]}\n",
               "must be a positive integer");
    expect_bad("array.jsonl", "[1, 2]\n", "must be a JSON object");
    expect_bad("empty.jsonl", "\n\n", "no documents");
    spqr_task *t = NULL;
    char missing[4300];
    snprintf(missing, sizeof missing, "%s/does_not_exist.jsonl", tu_tmpdir());
    assert_int_not_equal(spqr_task_load(missing, &t), SPQR_OK);
    assert_non_null(strstr(spqr_last_error(), "does_not_exist.jsonl"));
}

/* ---- small tasks on stories260K ------------------------------------------ */

static spqr_zeroshot_result eval_task(spqr_model *m, const spqr_task *t, int naive, int gpu, spqr_status *st_out) {
    spqr_zeroshot_options o;
    spqr_zeroshot_options_init(&o);
    assert_int_equal(o.add_bos, 1);
    o.naive = naive;
    o.use_gpu = gpu;
    o.keep_requests = 1;
    spqr_zeroshot_result r;
    spqr_status st = spqr_zeroshot_eval(m, t, &o, &r);
    if (st_out) *st_out = st;
    else assert_int_equal(st, SPQR_OK);
    return r;
}

/* A multiple-choice task whose answers the test computes itself. */
static void test_tiny_task_independent(void **s) {
    (void)s;
    if (!tu_have_shared(STORIES)) skip();
    spqr_model *m = load_stories();
    spqr_tokenizer *tk = spqr_model_tokenizer(m);
    const char *ctx[3] = {"Once upon a time, there was a little", "Tom saw a big dog. The dog was",
                          "Lily liked to play in the park with her "};
    const char *cont[3][3] = {{" girl", " cat", " tree"}, {" happy.", " very big and brown.", " blue"},
                              {"friends.", "mom.", "ball"}};
    const int gold[3] = {0, 1, 1};
    char *file = NULL;
    for (int d = 0; d < 3; d++) {
        const char *c3[3] = {ctx[d], ctx[d], ctx[d]};
        char *line = doc_line(3, c3, cont[d], gold[d]);
        append(&file, line);
        free(line);
    }
    spqr_task *t = NULL;
    assert_int_equal(spqr_task_load(write_task("tiny.jsonl", file), &t), SPQR_OK);
    free(file);
    spqr_zeroshot_result r = eval_task(m, t, 0, 0, NULL);
    int hit = 0, hit_n = 0;
    for (int d = 0; d < 3; d++) {
        double best = -INFINITY, best_n = -INFINITY;
        int bi = 0, bn = 0;
        for (int i = 0; i < 3; i++) {
            spqr_zs_pair p;
            assert_int_equal(spqr_zs_encode(tk, ctx[d], cont[d][i], 1, &p), SPQR_OK);
            int gr;
            double ll = ref_loglik(m, &p, &gr);
            const spqr_zeroshot_request *q = &r.requests[d * 3 + i];
            if (fabs(q->loglik - ll) > 1e-4) fprintf(stderr, "doc %d req %d: %.6f vs %.6f\n", d, i, q->loglik, ll);
            assert_true(fabs(q->loglik - ll) < 1e-4);
            assert_int_equal(q->greedy, gr);
            assert_int_equal(q->ctx_tokens, p.n_ctx);
            assert_int_equal(q->cont_tokens, p.n_cont);
            /* the choice without the target delimiter; the third document's context ends in a space */
            const char *ch = cont[d][i][0] == ' ' ? cont[d][i] + 1 : cont[d][i];
            double norm = ll / (double)strlen(ch);
            if (ll > best) best = ll, bi = i;
            if (norm > best_n) best_n = norm, bn = i;
            pair_free(&p);
        }
        hit += bi == gold[d];
        hit_n += bn == gold[d];
    }
    assert_int_equal(r.n, 3);
    assert_true(fabs(r.acc - hit / 3.0) < 1e-12);
    assert_true(r.has_acc_norm);
    assert_true(fabs(r.acc_norm - hit_n / 3.0) < 1e-12);
    /* the shared context ran once per document */
    assert_true(r.tokens_run < r.tokens_naive);
    spqr_free(r.requests);
    spqr_task_free(t);
    spqr_model_free(m);
}

/* LAMBADA style: a continuation made of the model's own greedy tokens is a
 * hit, a different word is not; ppl = exp(-mean loglikelihood). */
static void test_lambada_greedy(void **s) {
    (void)s;
    if (!tu_have_shared(STORIES)) skip();
    spqr_model *m = load_stories();
    spqr_tokenizer *tk = spqr_model_tokenizer(m);
    const char *ctx = "Once upon a time, there was a little girl named Lily. She loved to";
    size_t n;
    int32_t *ids = enc(tk, ctx, 1, &n);
    spqr_session *ss = NULL;
    assert_int_equal(spqr_session_new(m, &ss), SPQR_OK);
    const float *lg = NULL;
    for (size_t i = 0; i < n; i++) assert_int_equal(spqr_session_step(ss, ids[i], &lg), SPQR_OK);
    char greedy_text[256] = "";
    int32_t prev = ids[n - 1];
    int V = spqr_model_config(m)->vocab_size;
    for (int k = 0; k < 3; k++) {
        int am = 0;
        for (int i = 1; i < V; i++)
            if (lg[i] > lg[am]) am = i;
        size_t len;
        const char *piece = spqr_tokenizer_decode(tk, prev, am, &len);
        strncat(greedy_text, piece, len);
        prev = am;
        assert_int_equal(spqr_session_step(ss, am, &lg), SPQR_OK);
    }
    spqr_session_free(ss);
    free(ids);
    assert_true(greedy_text[0] == ' ');
    const char *c1[1] = {ctx}, *k1[1] = {greedy_text}, *k2[1] = {" elephant"};
    char *file = NULL, *l1 = doc_line(1, c1, k1, -1), *l2 = doc_line(1, c1, k2, -1);
    append(&file, l1);
    append(&file, l2);
    free(l1);
    free(l2);
    spqr_task *t = NULL;
    assert_int_equal(spqr_task_load(write_task("lambada_tiny.jsonl", file), &t), SPQR_OK);
    free(file);
    assert_int_equal(spqr_task_get_kind(t), SPQR_TASK_GREEDY);
    spqr_zeroshot_result r = eval_task(m, t, 0, 0, NULL);
    double sum = 0;
    const char *conts[2] = {greedy_text, " elephant"};
    for (int d = 0; d < 2; d++) {
        spqr_zs_pair p;
        assert_int_equal(spqr_zs_encode(tk, ctx, conts[d], 1, &p), SPQR_OK);
        int gr;
        double ll = ref_loglik(m, &p, &gr);
        assert_int_equal(gr, d == 0); /* the greedy text re-encodes to the greedy tokens */
        assert_int_equal(r.requests[d].greedy, gr);
        assert_true(fabs(r.requests[d].loglik - ll) < 1e-4);
        sum += ll;
        pair_free(&p);
    }
    assert_true(r.has_ppl && !r.has_acc_norm);
    assert_true(fabs(r.acc - 0.5) < 1e-12);
    assert_true(fabs(r.ppl / exp(-sum / 2) - 1) < 1e-4);
    spqr_free(r.requests);
    spqr_task_free(t);
    spqr_model_free(m);
}

static void compare_paths(spqr_model *m, const spqr_task *t, int64_t limit, double *maxd) {
    spqr_zeroshot_options o;
    spqr_zeroshot_options_init(&o);
    o.limit = limit;
    o.keep_requests = 1;
    spqr_zeroshot_result a, b;
    assert_int_equal(spqr_zeroshot_eval(m, t, &o, &a), SPQR_OK);
    o.naive = 1;
    assert_int_equal(spqr_zeroshot_eval(m, t, &o, &b), SPQR_OK);
    assert_int_equal(a.n_requests, b.n_requests);
    for (int64_t i = 0; i < a.n_requests; i++) {
        double d = fabs(a.requests[i].loglik - b.requests[i].loglik);
        if (d > *maxd) *maxd = d;
        if (d >= 1e-4) fprintf(stderr, "%s request %lld: %.6f vs %.6f\n", spqr_task_name(t), (long long)i,
                               a.requests[i].loglik, b.requests[i].loglik);
        assert_true(d < 1e-4);
        assert_int_equal(a.requests[i].greedy, b.requests[i].greedy);
    }
    assert_true(a.acc == b.acc && a.acc_norm == b.acc_norm);
    assert_true(fabs(a.ppl - b.ppl) <= 1e-6 * fabs(b.ppl));
    spqr_free(a.requests);
    spqr_free(b.requests);
}

/* Contexts longer than the model's 512 tokens (cut from the left) and
 * branches that do not fit one segment together. */
static void test_fast_equals_naive_long(void **s) {
    (void)s;
    if (!tu_have_shared(STORIES)) skip();
    spqr_model *m = load_stories();
    char *longctx = NULL, *mid = NULL, *longcont = NULL;
    for (int i = 0; i < 90; i++) append(&longctx, "Tom had a red ball and he liked to play with it.");
    for (int i = 0; i < 20; i++) append(&mid, "The sun was warm and the birds sang in the tall trees.");
    for (int i = 0; i < 14; i++) append(&longcont, " Then they ran to the park and played all day long.");
    mid[strlen(mid) - 1] = 0;
    const char *ctx[3] = {mid, mid, mid}, *conts[3] = {longcont, " The end.", longcont};
    char *file = NULL;
    char *line = doc_line(3, ctx, conts, 1);
    append(&file, line);
    free(line);
    const char *c2[2] = {longctx, "Sue"}, *k2[2] = {" The end.", longcont};
    line = doc_line(2, c2, k2, 0);
    append(&file, line);
    free(line);
    spqr_task *t = NULL;
    assert_int_equal(spqr_task_load(write_task("long.jsonl", file), &t), SPQR_OK);
    double maxd = 0;
    compare_paths(m, t, 0, &maxd);
    spqr_zeroshot_result r = eval_task(m, t, 0, 0, NULL);
    assert_true(r.requests[3].ctx_tokens > 512); /* the long context was cut */
    spqr_free(r.requests);
    printf("fast vs naive (long inputs): max |dlogL| %.2e\n", maxd);
    free(file);
    free(longctx);
    free(mid);
    free(longcont);
    spqr_task_free(t);
    spqr_model_free(m);
}

/* The first documents of the six real tasks on ref-40m. */
static void test_fast_equals_naive_ref40m(void **s) {
    (void)s;
    if (!tu_have_shared(REF "config.json") || !tu_have_shared(REQ_DIR "arc_easy.jsonl")) skip();
    spqr_model *m = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s", tu_shared(REF));
    assert_int_equal(spqr_model_load(path, NULL, &m), SPQR_OK);
    const char *names[6] = {"arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "lambada_openai"};
    double maxd = 0;
    for (int k = 0; k < 6; k++) {
        char rel[256];
        snprintf(rel, sizeof rel, REQ_DIR "%s.jsonl", names[k]);
        if (!tu_have_shared(rel)) continue;
        spqr_task *t = NULL;
        assert_int_equal(spqr_task_load(tu_shared(rel), &t), SPQR_OK);
        assert_string_equal(spqr_task_name(t), names[k]);
        compare_paths(m, t, 3, &maxd);
        spqr_task_free(t);
    }
    printf("fast vs naive (ref-40m, 3 documents per task): max |dlogL| %.2e\n", maxd);
    spqr_model_free(m);
}

/* --gpu: the same results as the CPU, or SPQR_ERR_NO_DEVICE without a GPU. */
static void test_gpu_matches_cpu(void **s) {
    (void)s;
    if (!tu_have_shared(STORIES)) skip();
    spqr_model *m = load_stories();
    const char *ctx[4] = {"Tom saw a cat", "Tom saw a cat", "Tom saw a cat", "Lily"};
    const char *cont[4] = {" and it ran away.", " in the garden.", " with a hat", " smiled."};
    char *file = NULL, *line = doc_line(4, ctx, cont, 2);
    append(&file, line);
    free(line);
    spqr_task *t = NULL;
    assert_int_equal(spqr_task_load(write_task("gpu.jsonl", file), &t), SPQR_OK);
    free(file);
    spqr_status st;
    spqr_zeroshot_result g = eval_task(m, t, 0, 1, &st);
    if (st == SPQR_ERR_NO_DEVICE) {
        printf("no GPU: %s\n", spqr_last_error());
        spqr_task_free(t);
        spqr_model_free(m);
        skip();
    }
    assert_int_equal(st, SPQR_OK);
    spqr_zeroshot_result c = eval_task(m, t, 0, 0, NULL);
    for (int i = 0; i < 4; i++) {
        assert_true(fabs(g.requests[i].loglik - c.requests[i].loglik) < 1e-3);
        assert_int_equal(g.requests[i].greedy, c.requests[i].greedy);
    }
    spqr_free(g.requests);
    spqr_free(c.requests);
    spqr_task_free(t);
    spqr_model_free(m);
}

/* ---- command line ------------------------------------------------------------ */

static void test_cli(void **s) {
    (void)s;
    if (!tu_have_shared(STORIES)) skip();
    const char *ctx[2] = {"Once upon a time", "Once upon a time"}, *cont[2] = {" there was a girl.", " zebra xylophone"};
    char *file = NULL, *line = doc_line(2, ctx, cont, 0);
    append(&file, line);
    append(&file, line);
    free(line);
    char path[4300], model[4200], tok[4200], args[32000], dump[4300];
    snprintf(path, sizeof path, "%s", write_task("cli_task.jsonl", file));
    free(file);
    snprintf(model, sizeof model, "%s", tu_shared(STORIES));
    snprintf(tok, sizeof tok, "%s", tu_shared(STORIES_TOK));
    snprintf(dump, sizeof dump, "%s/dump.jsonl", tu_tmpdir());
    snprintf(args, sizeof args, "zeroshot '%s' --tokenizer '%s' --task-file '%s' --json --gpu --dump '%s'", model, tok,
             path, dump);
    char *out = NULL, *err = NULL;
    int rc = tu_run_cli(args, &out, &err);
    if (rc) fprintf(stderr, "%s", err);
    assert_int_equal(rc, 0);
    /* the last stdout line is one JSON object */
    size_t n = strlen(out);
    while (n && out[n - 1] == '\n') out[--n] = 0;
    const char *last = strrchr(out, '\n');
    last = last ? last + 1 : out;
    cJSON *j = cJSON_Parse(last);
    assert_non_null(j);
    const cJSON *task = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tasks"), "cli_task");
    assert_non_null(task);
    assert_int_equal(cJSON_GetObjectItem(task, "n")->valueint, 2);
    assert_non_null(cJSON_GetObjectItem(task, "acc"));
    assert_non_null(cJSON_GetObjectItem(task, "acc_stderr"));
    assert_non_null(cJSON_GetObjectItem(task, "acc_norm"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "mean_acc"))); /* not the five paper tasks */
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "add_bos")));
    cJSON_Delete(j);
    assert_non_null(strstr(out, "cli_task"));
    if (strstr(spqr_build_features(), "cuda=no") || strstr(err, "warning"))
        assert_non_null(strstr(err, "running on the CPU"));
    char *d = NULL;
    size_t dn = 0;
    assert_int_equal(spqr_read_file(dump, &d, &dn), SPQR_OK);
    int lines = 0;
    for (size_t i = 0; i < dn; i++) lines += d[i] == '\n';
    assert_int_equal(lines, 4);
    free(d);
    free(out);
    free(err);
    /* a missing task fails with the file named */
    snprintf(args, sizeof args, "zeroshot '%s' --tokenizer '%s' --tasks nosuchtask --data '%s'", model, tok, tu_tmpdir());
    rc = tu_run_cli(args, &out, &err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, "nosuchtask.jsonl"));
    free(out);
    free(err);
    rc = tu_run_cli("zeroshot", &out, &err);
    assert_int_equal(rc, 2);
    free(out);
    free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenization_rule),     cmocka_unit_test(test_metrics_ties_and_non_ascii),
        cmocka_unit_test(test_bad_task_files),        cmocka_unit_test(test_tiny_task_independent),
        cmocka_unit_test(test_lambada_greedy),        cmocka_unit_test(test_fast_equals_naive_long),
        cmocka_unit_test(test_fast_equals_naive_ref40m), cmocka_unit_test(test_gpu_matches_cpu),
        cmocka_unit_test(test_cli),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
