/* zeroshot.c - zero-shot evaluation with the LM Evaluation Harness's
 * loglikelihood scoring (lm-eval v0.4.9.2 and later, HFLM, causal models).
 *
 * Tokenization (lm-eval's TemplateLM._encode_pair): the context's trailing
 * whitespace (Python str.rstrip) moves to the front of the continuation;
 * whole = encode(context + continuation), ctx = encode(context), both with
 * BOS unless add_bos = 0; the continuation's ids are whole[len(ctx):]. When
 * ctx is not a prefix of whole (BPE merged across the boundary), lm-eval
 * still takes whole[len(ctx):] and feeds ctx + that; so do we, and count
 * such requests. An empty context is replaced by the BOS id (lm-eval's
 * prefix_token_id) with encode(continuation) without BOS.
 *
 * Model input (HFLM._loglikelihood_tokens): (ctx + cont)[-(max_len+1):][:-1];
 * the last len(cont) positions predict the continuation; loglikelihood =
 * sum of their log-softmax values; greedy = every position's argmax equals
 * its target.
 *
 * Fast path: requests of one document with the same context form one
 * segment of a packed prefix tree (forward_tree.h): the context runs once,
 * each continuation (without its last token, which is never an input)
 * follows it as a branch at positions len(ctx), len(ctx)+1, ..., and only
 * the rows that predict continuation tokens reach the head (the last
 * context row once for all branches). Segments of many documents fill one
 * batch of about BATCH_TOKENS tokens. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu.h"
#include "../model/gpu/gpu_model.h"
#include "../model/forward_tree.h"
#include "../model/model.h"
#include "../tokenizer/tokenizer.h"
#include "zeroshot.h"

#define BATCH_TOKENS_CPU 2048
#define BATCH_TOKENS_GPU 16384

typedef struct zs_req {
    char *ctx, *cont;
    int chars; /* choice length in code points (divisor of acc_norm) */
} zs_req;

typedef struct zs_doc {
    int64_t first; /* first request */
    int n_req;
    int gold; /* -1: none */
} zs_doc;

struct spqr_task {
    char *name, *path;
    zs_doc *docs;
    int64_t n_docs, cap_docs;
    zs_req *reqs;
    int64_t n_reqs, cap_reqs;
    spqr_task_kind kind;
    int acc_norm;
};

/* ------------------------------------------------------------------------ */
/* text helpers                                                              */

/* Python's str.isspace() for one code point. */
static bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Length of s[0..n) after Python's rstrip() (UTF-8; invalid bytes are not
 * whitespace). */
static size_t py_rstrip_len(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    while (n > 0) {
        size_t st = n - 1;
        while (st > 0 && n - st < 4 && (u[st] & 0xC0) == 0x80) st--;
        size_t len = n - st;
        uint32_t c;
        uint8_t b0 = u[st];
        if (len == 1 && b0 < 0x80) c = b0;
        else if (len == 2 && (b0 & 0xE0) == 0xC0) c = ((uint32_t)(b0 & 0x1F) << 6) | (u[st + 1] & 0x3F);
        else if (len == 3 && (b0 & 0xF0) == 0xE0)
            c = ((uint32_t)(b0 & 0x0F) << 12) | ((uint32_t)(u[st + 1] & 0x3F) << 6) | (u[st + 2] & 0x3F);
        else return n; /* 4-byte or invalid: never whitespace */
        if (!py_space(c)) return n;
        n = st;
    }
    return 0;
}

/* Unicode code points in s (UTF-8 lead bytes). */
static int utf8_count(const char *s) {
    int n = 0;
    for (const uint8_t *u = (const uint8_t *)s; *u; u++) n += (*u & 0xC0) != 0x80;
    return n;
}

/* ------------------------------------------------------------------------ */
/* task files                                                                */

void spqr_task_free(spqr_task *t) {
    if (!t) return;
    for (int64_t i = 0; i < t->n_reqs; i++) {
        free(t->reqs[i].ctx);
        free(t->reqs[i].cont);
    }
    free(t->reqs);
    free(t->docs);
    free(t->name);
    free(t->path);
    free(t);
}

const char *spqr_task_name(const spqr_task *t) { return t ? t->name : ""; }
spqr_task_kind spqr_task_get_kind(const spqr_task *t) { return t ? t->kind : SPQR_TASK_CHOICE; }
int spqr_task_has_acc_norm(const spqr_task *t) { return t ? t->acc_norm : 0; }
int64_t spqr_task_num_docs(const spqr_task *t) { return t ? t->n_docs : 0; }
int64_t spqr_task_num_requests(const spqr_task *t) { return t ? t->n_reqs : 0; }

static bool grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return true;
    int64_t nc = *cap ? *cap * 2 : 256;
    while (nc < need) nc *= 2;
    void *q = spqr_malloc_array((size_t)nc, elem);
    if (!q) return false;
    if (*p) memcpy(q, *p, (size_t)*cap * elem);
    free(*p);
    *p = q;
    *cap = nc;
    return true;
}

/* Parse one document (line `line` of path) into t. */
static spqr_status parse_doc(spqr_task *t, const char *path, int64_t line, const char *text, size_t len) {
    cJSON *j = cJSON_ParseWithLength(text, len);
    spqr_status st = SPQR_OK;
    const int64_t r0 = t->n_reqs;
    if (!j) return spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: not valid JSON", path, (long long)line);
    if (!cJSON_IsObject(j)) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: a document must be a JSON object", path, (long long)line);
        goto out;
    }
    const cJSON *rq = cJSON_GetObjectItemCaseSensitive(j, "requests");
    const cJSON *gold = cJSON_GetObjectItemCaseSensitive(j, "gold");
    const cJSON *cc = cJSON_GetObjectItemCaseSensitive(j, "choice_chars");
    if (!rq) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: missing field \"requests\"", path, (long long)line);
        goto out;
    }
    if (!cJSON_IsArray(rq)) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: \"requests\" must be an array of [context, continuation]", path,
                       (long long)line);
        goto out;
    }
    int n = cJSON_GetArraySize(rq);
    if (n == 0) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: \"requests\" is empty", path, (long long)line);
        goto out;
    }
    int g = -1;
    if (gold) {
        double gv = gold->valuedouble;
        if (!cJSON_IsNumber(gold) || gv != floor(gv)) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: \"gold\" must be an integer", path, (long long)line);
            goto out;
        }
        if (gv < 0 || gv >= n) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: \"gold\" %.0f is out of range (%d requests)", path,
                           (long long)line, gv, n);
            goto out;
        }
        g = (int)gv;
    }
    bool want_gold = t->n_docs == 0 ? gold != NULL : t->kind == SPQR_TASK_CHOICE;
    if ((gold != NULL) != want_gold) {
        st = spqr_fail(SPQR_ERR_FORMAT,
                       "%s:%lld: %s \"gold\" but earlier documents %s (every document of a task has one, or none)",
                       path, (long long)line, gold ? "has" : "lacks", gold ? "do not" : "do");
        goto out;
    }
    if (!gold && n != 1) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: a document without \"gold\" must have exactly one request, not %d",
                       path, (long long)line, n);
        goto out;
    }
    if (cc && (!cJSON_IsArray(cc) || cJSON_GetArraySize(cc) != n)) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: \"choice_chars\" must be an array of %d integers", path,
                       (long long)line, n);
        goto out;
    }
    if (t->n_docs == 0) t->kind = gold ? SPQR_TASK_CHOICE : SPQR_TASK_GREEDY;
    if (!grow((void **)&t->docs, &t->cap_docs, t->n_docs + 1, sizeof(zs_doc)) ||
        !grow((void **)&t->reqs, &t->cap_reqs, t->n_reqs + n, sizeof(zs_req))) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory reading %s", path);
        goto out;
    }
    zs_doc *d = &t->docs[t->n_docs];
    d->first = t->n_reqs;
    d->n_req = 0;
    d->gold = g;
    bool shared_ctx = true;
    for (int i = 0; i < n; i++) {
        const cJSON *r = cJSON_GetArrayItem(rq, i);
        const cJSON *a = cJSON_GetArrayItem(r, 0), *b = cJSON_GetArrayItem(r, 1);
        if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b)) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: request %d must be [context, continuation] (two strings)", path,
                           (long long)line, i);
            goto out;
        }
        if (!b->valuestring[0]) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: request %d has an empty continuation", path, (long long)line, i);
            goto out;
        }
        int chars;
        if (cc) {
            const cJSON *c = cJSON_GetArrayItem(cc, i);
            if (!cJSON_IsNumber(c) || c->valuedouble != floor(c->valuedouble) || c->valuedouble < 1 ||
                c->valuedouble > 1e9) {
                st = spqr_fail(SPQR_ERR_FORMAT, "%s:%lld: \"choice_chars\"[%d] must be a positive integer", path,
                               (long long)line, i);
                goto out;
            }
            chars = (int)c->valuedouble;
        } else {
            /* the choice is the continuation without lm-eval's target delimiter " " */
            const char *s = b->valuestring;
            chars = utf8_count(s[0] == ' ' ? s + 1 : s);
            if (chars < 1) chars = 1;
        }
        zs_req *q = &t->reqs[t->n_reqs];
        q->ctx = strdup(a->valuestring);
        q->cont = strdup(b->valuestring);
        q->chars = chars;
        if (!q->ctx || !q->cont) {
            free(q->ctx);
            free(q->cont);
            st = spqr_fail(SPQR_ERR_NOMEM, "out of memory reading %s", path);
            goto out;
        }
        t->n_reqs++;
        d->n_req++;
        if (i > 0 && strcmp(q->ctx, t->reqs[d->first].ctx) != 0) shared_ctx = false;
    }
    if (!shared_ctx) t->acc_norm = 0;
    t->n_docs++;
out:
    if (st) /* drop a partly added document */
        while (t->n_reqs > r0) {
            t->n_reqs--;
            free(t->reqs[t->n_reqs].ctx);
            free(t->reqs[t->n_reqs].cont);
        }
    cJSON_Delete(j);
    return st;
}

spqr_status spqr_task_load(const char *path, spqr_task **out) {
    if (!path || !out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_task_load: NULL argument");
    *out = NULL;
    char *data = NULL;
    size_t size = 0;
    spqr_status st = spqr_read_file(path, &data, &size);
    if (st) return st;
    spqr_task *t = calloc(1, sizeof *t);
    if (!t) {
        free(data);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    t->acc_norm = 1;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t bl = strlen(base);
    if (bl > 6 && !strcmp(base + bl - 6, ".jsonl")) bl -= 6;
    t->name = strndup(base, bl);
    t->path = strdup(path);
    if (!t->name || !t->path) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    int64_t line = 0;
    for (size_t p = 0; p < size && !st;) {
        const char *e = memchr(data + p, '\n', size - p);
        size_t end = e ? (size_t)(e - data) : size;
        line++;
        bool blank = true;
        for (size_t i = p; i < end && blank; i++)
            blank = data[i] == ' ' || data[i] == '\t' || data[i] == '\r';
        if (!blank) st = parse_doc(t, path, line, data + p, end - p);
        p = end + 1;
    }
    free(data);
    if (!st && t->n_docs == 0) st = spqr_fail(SPQR_ERR_FORMAT, "%s: no documents", path);
    if (!st && t->kind == SPQR_TASK_GREEDY) t->acc_norm = 0;
    if (st) {
        spqr_task_free(t);
        return st;
    }
    *out = t;
    return SPQR_OK;
}

/* ------------------------------------------------------------------------ */
/* tokenization                                                              */

typedef struct zs_tok {
    int32_t *ctx; /* owned by the first request of its group (ctx_owner) */
    int n_ctx;
    int32_t *cont;
    int n_cont;
    int64_t group; /* index of the first request of the same document with the same context */
    int prefix_ok;
} zs_tok;

/* Encode one request as lm-eval does (zeroshot.h). */
static spqr_status encode_req(const spqr_tokenizer *tk, const zs_req *q, int add_bos, int32_t bos, zs_tok *o) {
    size_t cl = strlen(q->ctx), ql = strlen(q->cont);
    size_t keep = py_rstrip_len(q->ctx, cl);
    o->ctx = o->cont = NULL;
    spqr_status st;
    int32_t *whole = NULL, *ctx = NULL;
    size_t nw = 0, nc = 0;
    if (cl == 0) { /* lm-eval: prefix_token_id, then the continuation without special tokens */
        if ((st = spqr_tokenizer_encode(tk, q->cont, ql, 0, &whole, &nw))) return st;
        ctx = malloc(sizeof(int32_t));
        if (!ctx) {
            free(whole);
            return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
        }
        ctx[0] = bos;
        nc = 1;
        o->ctx = ctx;
        o->n_ctx = 1;
        o->cont = whole;
        o->n_cont = (int)nw;
        o->prefix_ok = 1;
        return SPQR_OK;
    }
    /* joint string: context[:keep] + context[keep:] + continuation == context + continuation */
    char *joint = malloc(cl + ql + 1);
    if (!joint) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    memcpy(joint, q->ctx, cl);
    memcpy(joint + cl, q->cont, ql + 1);
    st = spqr_tokenizer_encode(tk, joint, cl + ql, add_bos, &whole, &nw);
    if (!st) st = spqr_tokenizer_encode(tk, q->ctx, keep, add_bos, &ctx, &nc);
    free(joint);
    if (st) {
        free(whole);
        free(ctx);
        return st;
    }
    o->prefix_ok = nc <= nw && memcmp(ctx, whole, nc * sizeof(int32_t)) == 0;
    size_t ncont = nw > nc ? nw - nc : 0;
    o->cont = spqr_malloc_array(ncont ? ncont : 1, sizeof(int32_t));
    if (!o->cont) {
        free(whole);
        free(ctx);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    if (ncont) memcpy(o->cont, whole + nc, ncont * sizeof(int32_t));
    free(whole);
    o->ctx = ctx;
    o->n_ctx = (int)nc;
    o->n_cont = (int)ncont;
    return SPQR_OK;
}

spqr_status spqr_zs_encode(const spqr_tokenizer *tk, const char *ctx, const char *cont, int add_bos,
                           spqr_zs_pair *out) {
    memset(out, 0, sizeof *out);
    if (!tk || !ctx || !cont) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_zs_encode: NULL argument");
    zs_req q = {(char *)ctx, (char *)cont, 1};
    zs_tok o;
    memset(&o, 0, sizeof o);
    spqr_status st = encode_req(tk, &q, add_bos, spqr_tokenizer_bos(tk), &o);
    if (st) return st;
    out->ctx = o.ctx;
    out->n_ctx = o.n_ctx;
    out->cont = o.cont;
    out->n_cont = o.n_cont;
    out->prefix_ok = o.prefix_ok;
    return SPQR_OK;
}

static void toks_free(zs_tok *tk, int64_t n) {
    if (!tk) return;
    for (int64_t i = 0; i < n; i++) {
        free(tk[i].ctx);
        free(tk[i].cont);
    }
    free(tk);
}

/* ------------------------------------------------------------------------ */
/* batches                                                                   */

typedef struct zs_batch {
    int n, cap;
    int32_t *tokens, *pos, *branch;
    int n_seg, cap_seg;
    int32_t *seg_off;
    int n_rows, cap_rows;
    int32_t *rows;
    int n_pairs, cap_pairs;
    int32_t *pair_row, *pair_tgt;
    int64_t *pair_req;
} zs_batch;

static void batch_free(zs_batch *b) {
    free(b->tokens);
    free(b->pos);
    free(b->branch);
    free(b->seg_off);
    free(b->rows);
    free(b->pair_row);
    free(b->pair_tgt);
    free(b->pair_req);
    memset(b, 0, sizeof *b);
}

static bool grow_int(int32_t **p, int *cap, int need) {
    if (need <= *cap) return true;
    int nc = *cap ? *cap : 1024;
    while (nc < need) nc *= 2;
    int32_t *q = realloc(*p, (size_t)nc * sizeof(int32_t));
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}

static bool batch_reserve(zs_batch *b, int tokens, int rows, int pairs) {
    int ct = b->cap, cs = b->cap_seg, cr = b->cap_rows, cp = b->cap_pairs;
    bool ok = grow_int(&b->tokens, &ct, b->n + tokens);
    ct = b->cap;
    ok = ok && grow_int(&b->pos, &ct, b->n + tokens);
    ct = b->cap;
    ok = ok && grow_int(&b->branch, &ct, b->n + tokens);
    if (ok) b->cap = ct;
    ok = ok && grow_int(&b->seg_off, &cs, b->n_seg + 2);
    if (ok) b->cap_seg = cs;
    ok = ok && grow_int(&b->rows, &cr, b->n_rows + rows);
    if (ok) b->cap_rows = cr;
    int cp2 = cp;
    ok = ok && grow_int(&b->pair_row, &cp2, b->n_pairs + pairs);
    cp2 = cp;
    ok = ok && grow_int(&b->pair_tgt, &cp2, b->n_pairs + pairs);
    if (ok && cp2 != cp) {
        int64_t *q = realloc(b->pair_req, (size_t)cp2 * sizeof(int64_t));
        if (!q) return false;
        b->pair_req = q;
        b->cap_pairs = cp2;
    }
    return ok;
}

static void batch_token(zs_batch *b, int32_t tok, int pos, int branch) {
    b->tokens[b->n] = tok;
    b->pos[b->n] = pos;
    b->branch[b->n] = branch;
    b->n++;
}

static void batch_pair(zs_batch *b, int32_t tgt, int64_t req) {
    b->pair_row[b->n_pairs] = b->n_rows - 1;
    b->pair_tgt[b->n_pairs] = tgt;
    b->pair_req[b->n_pairs] = req;
    b->n_pairs++;
}

/* ------------------------------------------------------------------------ */
/* evaluation                                                                */

void spqr_zeroshot_options_init(spqr_zeroshot_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->add_bos = 1;
}

int spqr_zeroshot_paper_metric(const char *name) {
    if (!name) return 0;
    if (!strcmp(name, "winogrande") || !strcmp(name, "piqa") || !strcmp(name, "arc_easy")) return 1;
    if (!strcmp(name, "arc_challenge") || !strcmp(name, "hellaswag")) return 2;
    return 0;
}

typedef struct zs_run {
    spqr_model *m;
    spqr_gpu_model *g;
    double *ll;
    uint8_t *greedy;
    double *logp;
    uint8_t *pgreedy;
    int cap_pairs;
    int64_t flushes;
} zs_run;

static spqr_status flush(zs_run *r, zs_batch *b) {
    if (b->n == 0) return SPQR_OK;
    b->seg_off[b->n_seg] = b->n;
    if (b->n_pairs > r->cap_pairs) {
        free(r->logp);
        free(r->pgreedy);
        r->logp = spqr_malloc_array((size_t)b->n_pairs, sizeof(double));
        r->pgreedy = spqr_malloc_array((size_t)b->n_pairs, 1);
        r->cap_pairs = r->logp && r->pgreedy ? b->n_pairs : 0;
        if (!r->cap_pairs) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    spqr_tree_batch tb = {b->n,     b->tokens,  b->pos,    b->branch,   b->n_seg,   b->seg_off,
                          b->n_rows, b->rows,   b->n_pairs, b->pair_row, b->pair_tgt};
    spqr_status st = r->g ? spqr_gpu_tree_score(r->g, &tb, r->logp, r->pgreedy)
                          : spqr_tree_score(r->m, &tb, r->logp, r->pgreedy);
    if (st) return st;
    for (int k = 0; k < b->n_pairs; k++) {
        r->ll[b->pair_req[k]] += r->logp[k];
        if (!r->pgreedy[k]) r->greedy[b->pair_req[k]] = 0;
    }
    b->n = b->n_seg = b->n_rows = b->n_pairs = 0;
    r->flushes++;
    return SPQR_OK;
}

/* Naive reference: one full forward per request, logits everywhere. */
static spqr_status naive_request(spqr_model *m, const int32_t *in, int L, const int32_t *tgt, int ncont, double *ll,
                                 uint8_t *greedy) {
    size_t V = (size_t)m->cfg.vocab_size;
    float *logits = spqr_malloc_array((size_t)L, V * sizeof(float));
    if (!logits) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for %d x %zu logits", L, V);
    spqr_status st = spqr_forward(m, in, L, logits);
    double s = 0.0;
    int all = 1;
    for (int k = 0; k < ncont && !st; k++) {
        /* the naive path is the reference: the scalar log-sum-exp */
        const float *l = logits + (size_t)(L - ncont + k) * V;
        int am = 0;
        s += (double)l[tgt[k]] - spqr_logsumexp_ref(l, (int64_t)V, &am);
        if (am != tgt[k]) all = 0;
    }
    free(logits);
    *ll = s;
    *greedy = (uint8_t)all;
    return st;
}

static double stderr_of(double p, int64_t n) { return n > 1 ? sqrt(p * (1.0 - p) / (double)(n - 1)) : 0.0; }

spqr_status spqr_zs_metrics(const spqr_task *t, int64_t nd, const double *ll, const uint8_t *greedy,
                            spqr_zeroshot_result *res) {
    if (!t || nd <= 0 || nd > t->n_docs || !ll || !greedy || !res)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_zs_metrics: bad arguments");
    int64_t nr = t->docs[nd - 1].first + t->docs[nd - 1].n_req;
    res->n = nd;
    res->has_acc_norm = res->has_ppl = 0;
    res->acc_norm = res->acc_norm_stderr = res->ppl = 0.0;
    if (t->kind == SPQR_TASK_GREEDY) {
        double acc = 0.0, sum = 0.0;
        for (int64_t i = 0; i < nr; i++) {
            acc += greedy[i] ? 1.0 : 0.0;
            sum += ll[i];
        }
        res->acc = acc / (double)nd;
        res->has_ppl = 1;
        res->ppl = exp(-sum / (double)nr);
    } else {
        int64_t hit = 0, hit_norm = 0;
        for (int64_t d = 0; d < nd; d++) {
            const zs_doc *doc = &t->docs[d];
            int best = 0, best_n = 0; /* strict >: ties go to the lowest index (np.argmax) */
            for (int i = 1; i < doc->n_req; i++) {
                int64_t q = doc->first + i, qb = doc->first + best, qn = doc->first + best_n;
                if (ll[q] > ll[qb]) best = i;
                if (ll[q] / t->reqs[q].chars > ll[qn] / t->reqs[qn].chars) best_n = i;
            }
            hit += best == doc->gold;
            hit_norm += best_n == doc->gold;
        }
        res->acc = (double)hit / (double)nd;
        res->has_acc_norm = t->acc_norm;
        if (t->acc_norm) {
            res->acc_norm = (double)hit_norm / (double)nd;
            res->acc_norm_stderr = stderr_of(res->acc_norm, nd);
        }
    }
    res->acc_stderr = stderr_of(res->acc, nd);
    return SPQR_OK;
}

spqr_status spqr_zeroshot_eval(spqr_model *m, const spqr_task *t, const spqr_zeroshot_options *opts,
                               spqr_zeroshot_result *res) {
    if (!m || !t || !res) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_zeroshot_eval: NULL argument");
    memset(res, 0, sizeof *res);
    spqr_zeroshot_options o;
    if (opts) o = *opts;
    else spqr_zeroshot_options_init(&o);
    if (o.limit < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "limit %lld is negative", (long long)o.limit);
    if (!m->tok) return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: the model has no tokenizer", m->path);
    const spqr_config *c = &m->cfg;
    int32_t bos = spqr_tokenizer_bos(m->tok);
    if (bos < 0 || bos >= c->vocab_size) bos = c->bos_id;
    if (bos < 0 || bos >= c->vocab_size)
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: the tokenizer has no BOS token", m->path);
    int64_t nd = o.limit > 0 && o.limit < t->n_docs ? o.limit : t->n_docs;
    int64_t nr = t->docs[nd - 1].first + t->docs[nd - 1].n_req;
    const int maxlen = c->max_seq_len;
    double t0 = spqr_now();

    /* the model's device (spqr_model_set_device); use_gpu moves it there */
    if (o.use_gpu && !m->gpu) {
        spqr_status gs = spqr_model_set_device(m, SPQR_DEVICE_GPU);
        if (gs) return gs;
    }
    spqr_gpu_model *g = o.naive ? NULL : m->gpu;

    zs_tok *tk = calloc((size_t)nr, sizeof(zs_tok));
    zs_run run = {m, g, spqr_calloc_array((size_t)nr, sizeof(double)), spqr_malloc_array((size_t)nr, 1), NULL, NULL, 0, 0};
    zs_batch b;
    memset(&b, 0, sizeof b);
    spqr_status st = SPQR_OK;
    if (!tk || !run.ll || !run.greedy) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for %lld requests", (long long)nr);
        goto done;
    }
    memset(run.greedy, 1, (size_t)nr);

    /* tokenize (in parallel; the tokenizer is read-only) */
    {
        int failed = 0;
        int64_t bad = -1;
        char msg[512] = "";
#pragma omp parallel for schedule(dynamic, 64) num_threads(spqr_num_threads())
        for (int64_t i = 0; i < nr; i++) {
            int f;
#pragma omp atomic read
            f = failed;
            if (f) continue;
            spqr_status s = encode_req(m->tok, &t->reqs[i], o.add_bos, bos, &tk[i]);
            if (!s && tk[i].n_ctx == 0)
                s = spqr_fail(SPQR_ERR_INVALID_ARG, "the context encodes to no tokens (whitespace only, without BOS)");
            if (!s && tk[i].n_cont == 0) s = spqr_fail(SPQR_ERR_INVALID_ARG, "the continuation encodes to no tokens");
            if (!s && tk[i].n_cont > maxlen)
                s = spqr_fail(SPQR_ERR_INVALID_ARG, "the continuation has %d tokens, more than the context of %d",
                              tk[i].n_cont, maxlen);
            if (s) {
#pragma omp critical(zs_err)
                {
                    if (!failed || i < bad) {
                        bad = i;
                        snprintf(msg, sizeof msg, "%s", spqr_last_error());
                    }
                    failed = 1;
                }
            }
        }
        if (failed) {
            int64_t d = 0;
            while (d + 1 < nd && t->docs[d + 1].first <= bad) d++;
            st = spqr_fail(SPQR_ERR_INVALID_ARG, "%s: document %lld, request %lld: %s", t->path, (long long)d + 1,
                           (long long)(bad - t->docs[d].first), msg);
            goto done;
        }
    }
    /* groups: requests of one document with the same context share its ids */
    for (int64_t d = 0; d < nd; d++) {
        const zs_doc *doc = &t->docs[d];
        for (int i = 0; i < doc->n_req; i++) {
            int64_t q = doc->first + i;
            tk[q].group = q;
            for (int k = 0; k < i; k++) {
                int64_t p = doc->first + k;
                if (tk[p].group == p && tk[p].n_ctx == tk[q].n_ctx &&
                    !memcmp(tk[p].ctx, tk[q].ctx, (size_t)tk[q].n_ctx * sizeof(int32_t))) {
                    tk[q].group = p;
                    break;
                }
            }
        }
    }
    for (int64_t i = 0; i < nr; i++) {
        int L = tk[i].n_ctx + tk[i].n_cont - 1;
        res->tokens_naive += L < maxlen ? L : maxlen;
        res->nonprefix += !tk[i].prefix_ok;
    }

    if (o.naive) {
        for (int64_t i = 0; i < nr && !st; i++) {
            int total = tk[i].n_ctx + tk[i].n_cont, L = total - 1 < maxlen ? total - 1 : maxlen;
            int32_t *full = spqr_malloc_array((size_t)total, sizeof(int32_t));
            if (!full) {
                st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
                break;
            }
            memcpy(full, tk[i].ctx, (size_t)tk[i].n_ctx * sizeof(int32_t));
            memcpy(full + tk[i].n_ctx, tk[i].cont, (size_t)tk[i].n_cont * sizeof(int32_t));
            st = naive_request(m, full + (total - 1 - L), L, tk[i].cont, tk[i].n_cont, &run.ll[i], &run.greedy[i]);
            free(full);
            res->tokens_run += L;
            if (o.progress) o.progress(o.progress_user, i + 1, nr);
        }
        if (st) goto done;
    } else {
        const int cap_tokens = g ? BATCH_TOKENS_GPU : BATCH_TOKENS_CPU;
        int64_t reported = 0;
        for (int64_t d = 0; d < nd && !st; d++) {
            const zs_doc *doc = &t->docs[d];
            for (int i = 0; i < doc->n_req && !st; i++) {
                int64_t p = doc->first + i;
                if (tk[p].group != p) continue;
                const zs_tok *P = &tk[p];
                /* the branches of this group, in request order, in units of at most maxlen tokens */
                int k = i;
                while (k < doc->n_req && !st) {
                    int64_t q = doc->first + k;
                    if (tk[q].group != p) {
                        k++;
                        continue;
                    }
                    if (P->n_ctx + tk[q].n_cont - 1 > maxlen) {
                        /* too long to share: this request alone, cut from the left */
                        int total = P->n_ctx + tk[q].n_cont, L = maxlen, cut = total - 1 - L;
                        if (b.n + L > cap_tokens && (st = flush(&run, &b))) break;
                        if (!batch_reserve(&b, L, tk[q].n_cont, tk[q].n_cont)) {
                            st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
                            break;
                        }
                        b.seg_off[b.n_seg++] = b.n;
                        int base = b.n;
                        for (int x = 0; x < L; x++) {
                            int src = cut + x;
                            int32_t id = src < P->n_ctx ? P->ctx[src] : tk[q].cont[src - P->n_ctx];
                            batch_token(&b, id, x, 0);
                        }
                        for (int x = 0; x < tk[q].n_cont; x++) {
                            b.rows[b.n_rows++] = base + L - tk[q].n_cont + x;
                            batch_pair(&b, tk[q].cont[x], q);
                        }
                        res->tokens_run += L;
                        k++;
                        continue;
                    }
                    /* a unit: the context, then branches while they fit */
                    int L = P->n_ctx, nb = 0, npairs = 0;
                    int kk = k;
                    for (; kk < doc->n_req; kk++) {
                        int64_t q2 = doc->first + kk;
                        if (tk[q2].group != p) continue;
                        if (P->n_ctx + tk[q2].n_cont - 1 > maxlen) break;
                        if (nb > 0 && L + tk[q2].n_cont - 1 > maxlen) break;
                        L += tk[q2].n_cont - 1;
                        npairs += tk[q2].n_cont;
                        nb++;
                    }
                    if (b.n + L > cap_tokens && (st = flush(&run, &b))) break;
                    if (!batch_reserve(&b, L, npairs, npairs)) {
                        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
                        break;
                    }
                    b.seg_off[b.n_seg++] = b.n;
                    for (int x = 0; x < P->n_ctx; x++) batch_token(&b, P->ctx[x], x, 0);
                    b.rows[b.n_rows++] = b.n - 1; /* the last context row predicts every first token */
                    int br = 0;
                    for (int x = k; x < kk; x++) {
                        int64_t q2 = doc->first + x;
                        if (tk[q2].group != p) continue;
                        batch_pair(&b, tk[q2].cont[0], q2);
                    }
                    for (int x = k; x < kk; x++) {
                        int64_t q2 = doc->first + x;
                        if (tk[q2].group != p) continue;
                        br++;
                        for (int y = 0; y + 1 < tk[q2].n_cont; y++) {
                            batch_token(&b, tk[q2].cont[y], P->n_ctx + y, br);
                            b.rows[b.n_rows++] = b.n - 1;
                            batch_pair(&b, tk[q2].cont[y + 1], q2);
                        }
                    }
                    res->tokens_run += L;
                    k = kk;
                }
            }
            if (!st && b.n >= cap_tokens) st = flush(&run, &b);
            if (!st && o.progress && run.flushes != reported) {
                reported = run.flushes;
                o.progress(o.progress_user, doc->first, nr);
            }
        }
        if (!st) st = flush(&run, &b);
        if (!st && o.progress) o.progress(o.progress_user, nr, nr);
        if (st) goto done;
    }

    res->n_requests = nr;
    if ((st = spqr_zs_metrics(t, nd, run.ll, run.greedy, res))) goto done;
    if (o.keep_requests) {
        res->requests = spqr_calloc_array((size_t)nr, sizeof(spqr_zeroshot_request));
        if (!res->requests) {
            st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int64_t i = 0; i < nr; i++) {
            spqr_zeroshot_request *q = &res->requests[i];
            q->loglik = run.ll[i];
            q->greedy = run.greedy[i];
            q->ctx_tokens = tk[i].n_ctx;
            q->cont_tokens = tk[i].n_cont;
            q->prefix_ok = tk[i].prefix_ok;
        }
    }
    res->seconds = spqr_now() - t0;
done:
    toks_free(tk, nr);
    free(run.ll);
    free(run.greedy);
    free(run.logp);
    free(run.pgreedy);
    batch_free(&b);
    return st;
}
