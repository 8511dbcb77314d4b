/* test_gguf.c - GGUF models (docs/GGUF.md): a tiny llama GGUF written here
 * (F32/F16/BF16/Q8_0 tensors, a small SentencePiece vocabulary) loads with
 * exactly the written weights; a GGUF made from the tiny HF model (tinyhf.h)
 * with llama.cpp's Q/K row permutation gives the HF model's logits; the real
 * ref-40m Q8_0 GGUF (skipped when absent) evaluates like the HF folder and
 * tokenizes identically; malformed files fail with SPQR_ERR_FORMAT naming
 * the file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "io/gguf.h"
#include "model/model.h"
#include "tinyhf.h"
#include "tokenizer/tokenizer.h"
#include "util/common.h"

/* ---- a GGUF writer ------------------------------------------------------ */

typedef struct {
    uint8_t *b;
    size_t n, cap;
} gbuf;

static void gput(gbuf *w, const void *p, size_t n) {
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 1024;
        w->b = realloc(w->b, w->cap);
        assert_non_null(w->b);
    }
    if (n) memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void g_u32(gbuf *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    gput(w, b, 4);
}
static void g_u64(gbuf *w, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        gput(w, &c, 1);
    }
}
static void g_str(gbuf *w, const char *s, size_t n) {
    g_u64(w, n);
    gput(w, s, n);
}
static void g_f32(gbuf *w, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    g_u32(w, u);
}

/* key/values go into kv (counted in *nkv) */
typedef struct {
    gbuf b;
    int n;
} kvbuf;
static void kv_key(kvbuf *k, const char *key, uint32_t type) {
    g_str(&k->b, key, strlen(key));
    g_u32(&k->b, type);
    k->n++;
}
static void kv_u32(kvbuf *k, const char *key, uint32_t v) {
    kv_key(k, key, SPQR_GGUF_U32);
    g_u32(&k->b, v);
}
static void kv_f32(kvbuf *k, const char *key, float v) {
    kv_key(k, key, SPQR_GGUF_F32);
    g_f32(&k->b, v);
}
static void kv_string(kvbuf *k, const char *key, const char *v) {
    kv_key(k, key, SPQR_GGUF_STRING);
    g_str(&k->b, v, strlen(v));
}
static void kv_bool(kvbuf *k, const char *key, int v) {
    kv_key(k, key, SPQR_GGUF_BOOL);
    uint8_t c = (uint8_t)v;
    gput(&k->b, &c, 1);
}

typedef struct {
    char name[64];
    uint32_t ndim, type;
    uint64_t ne[4];
    uint8_t *data; /* owned */
    size_t nbytes;
    uint64_t offset_patch; /* added to the offset written (defects) */
} gtensor;

/* Write header, key/values, tensor infos (offsets aligned to 32) and data. */
static gbuf gguf_bytes(const kvbuf *kv, gtensor *t, int nt, size_t *tinfo_pos) {
    gbuf w = {0};
    gput(&w, "GGUF", 4);
    g_u32(&w, 3);
    g_u64(&w, (uint64_t)nt);
    g_u64(&w, (uint64_t)kv->n);
    gput(&w, kv->b.b, kv->b.n);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        if (tinfo_pos && i == 0) *tinfo_pos = w.n;
        g_str(&w, t[i].name, strlen(t[i].name));
        g_u32(&w, t[i].ndim);
        for (uint32_t d = 0; d < t[i].ndim; d++) g_u64(&w, t[i].ne[d]);
        g_u32(&w, t[i].type);
        g_u64(&w, off + t[i].offset_patch);
        off += (t[i].nbytes + 31) / 32 * 32;
    }
    static const uint8_t zero[32];
    gput(&w, zero, (32 - w.n % 32) % 32);
    for (int i = 0; i < nt; i++) {
        gput(&w, t[i].data, t[i].nbytes);
        gput(&w, zero, (32 - t[i].nbytes % 32) % 32);
    }
    return w;
}

/* ---- a tiny llama model ------------------------------------------------- */

enum { D = 64, F = 96, L = 2, H = 4, KVH = 2, HD = 16, NV = 3 + 256 + 5 };

enum {
    DEF_NONE,
    DEF_DUPLICATE,
    DEF_MISSING,
    DEF_SHAPE,
    DEF_UNKNOWN_TYPE,
    DEF_UNSUPPORTED_TYPE,
    DEF_OFFSET_PAST_END,
    DEF_MISALIGNED,
    DEF_NO_ARCH_KEY,
    DEF_GPT2_VOCAB,
};

static const char *const k_extra[5] = {"\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab"};

static void add_vocab_model(kvbuf *k, int nv, const char *model) {
    kv_string(k, "tokenizer.ggml.model", model);
    kv_key(k, "tokenizer.ggml.tokens", SPQR_GGUF_ARRAY);
    g_u32(&k->b, SPQR_GGUF_STRING);
    g_u64(&k->b, (uint64_t)nv);
    g_str(&k->b, "<unk>", 5);
    g_str(&k->b, "<s>", 3);
    g_str(&k->b, "</s>", 4);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        g_str(&k->b, s, 6);
    }
    for (int i = 0; i < nv - 259; i++) {
        char s[16];
        if (i < 5) g_str(&k->b, k_extra[i], strlen(k_extra[i]));
        else {
            snprintf(s, sizeof s, "q%d", i);
            g_str(&k->b, s, strlen(s));
        }
    }
    kv_key(k, "tokenizer.ggml.scores", SPQR_GGUF_ARRAY);
    g_u32(&k->b, SPQR_GGUF_F32);
    g_u64(&k->b, (uint64_t)nv);
    for (int i = 0; i < nv; i++) g_f32(&k->b, i < 259 ? 0.0f : -(float)(i - 259));
    kv_key(k, "tokenizer.ggml.token_type", SPQR_GGUF_ARRAY);
    g_u32(&k->b, SPQR_GGUF_I32);
    g_u64(&k->b, (uint64_t)nv);
    for (int i = 0; i < nv; i++) g_u32(&k->b, i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
    kv_u32(k, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(k, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(k, "tokenizer.ggml.unknown_token_id", 0);
    kv_bool(k, "tokenizer.ggml.add_bos_token", 1);
}
static void add_vocab(kvbuf *k, int nv) { add_vocab_model(k, nv, "llama"); }

static void add_config(kvbuf *k, int dim, int ff, int nl, int nh, int nkv, int ctx) {
    kv_string(k, "general.architecture", "llama");
    kv_string(k, "general.name", "tiny");
    kv_u32(k, "llama.embedding_length", (uint32_t)dim);
    kv_u32(k, "llama.feed_forward_length", (uint32_t)ff);
    kv_u32(k, "llama.block_count", (uint32_t)nl);
    kv_u32(k, "llama.attention.head_count", (uint32_t)nh);
    kv_u32(k, "llama.attention.head_count_kv", (uint32_t)nkv);
    kv_u32(k, "llama.context_length", (uint32_t)ctx);
    kv_u32(k, "llama.rope.dimension_count", (uint32_t)(dim / nh));
    kv_f32(k, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_f32(k, "llama.rope.freq_base", 10000.0f);
}

/* A tensor of `type` with rows x cols random values (ne = {cols, rows});
 * vals (rows*cols floats) receives the values the file defines. */
static void make_tensor(gtensor *t, const char *name, uint32_t type, int rows, int cols, float *vals) {
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->ndim = rows > 1 ? 2 : 1;
    t->ne[0] = (uint64_t)cols;
    t->ne[1] = (uint64_t)rows;
    size_t n = (size_t)rows * (size_t)cols;
    if (type == SPQR_GGML_Q8_0) {
        t->nbytes = n / 32 * 34;
        t->data = malloc(t->nbytes);
        for (size_t b = 0; b < n / 32; b++) {
            uint16_t d = spqr_f32_to_f16(0.001f + 0.01f * tu_rand_uniform());
            uint8_t *p = t->data + b * 34;
            p[0] = (uint8_t)d;
            p[1] = (uint8_t)(d >> 8);
            for (int i = 0; i < 32; i++) {
                int8_t q = (int8_t)((int)(tu_rand_u64() % 255) - 127);
                p[2 + i] = (uint8_t)q;
                vals[b * 32 + (size_t)i] = spqr_f16_to_f32(d) * (float)q;
            }
        }
        return;
    }
    size_t es = type == SPQR_GGML_F32 ? 4 : 2;
    t->nbytes = n * es;
    t->data = malloc(t->nbytes);
    for (size_t i = 0; i < n; i++) {
        float v = 0.1f * tu_rand_normal();
        if (rows == 1) v += 1.0f;
        if (type == SPQR_GGML_F32) {
            memcpy(t->data + 4 * i, &v, 4);
        } else if (type == SPQR_GGML_F16) {
            uint16_t h = spqr_f32_to_f16(v);
            memcpy(t->data + 2 * i, &h, 2);
            v = spqr_f16_to_f32(h);
        } else {
            uint16_t h = spqr_f32_to_bf16(v);
            memcpy(t->data + 2 * i, &h, 2);
            v = spqr_bf16_to_f32(h);
        }
        vals[i] = v;
    }
}

typedef struct {
    gtensor t[64];
    float *vals[64];
    int nt;
} tiny_t;

static void tiny_free(tiny_t *m) {
    for (int i = 0; i < m->nt; i++) {
        free(m->t[i].data);
        free(m->vals[i]);
    }
}

static void tiny_add(tiny_t *m, const char *name, uint32_t type, int rows, int cols) {
    m->vals[m->nt] = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    make_tensor(&m->t[m->nt], name, type, rows, cols, m->vals[m->nt]);
    m->nt++;
}

/* The tiny model's file (with one defect) at tu_tmpdir()/tag.gguf. */
static const char *write_tiny(const char *tag, int defect, tiny_t *m) {
    tu_seed(7);
    memset(m, 0, sizeof *m);
    static const uint32_t ltype[7] = {SPQR_GGML_F16, SPQR_GGML_F32, SPQR_GGML_Q8_0, SPQR_GGML_BF16,
                                      SPQR_GGML_Q8_0, SPQR_GGML_F16, SPQR_GGML_Q8_0};
    static const char *const lname[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                         "ffn_down"};
    const int shp[7][2] = {{H * HD, D}, {KVH * HD, D}, {KVH * HD, D}, {D, H * HD}, {F, D}, {F, D}, {D, F}};
    tiny_add(m, "token_embd.weight", SPQR_GGML_Q8_0, NV, D);
    tiny_add(m, "output_norm.weight", SPQR_GGML_F32, 1, D);
    for (int l = 0; l < L; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        tiny_add(m, nm, SPQR_GGML_F32, 1, D);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        tiny_add(m, nm, SPQR_GGML_F32, 1, D);
        for (int k = 0; k < 7; k++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, lname[k]);
            tiny_add(m, nm, ltype[k], shp[k][0], shp[k][1]);
        }
    }
    tiny_add(m, "output.weight", SPQR_GGML_F16, NV, D);
    int nt = m->nt;
    gtensor *bad = &m->t[5]; /* blk.0.attn_k.weight */
    if (defect == DEF_DUPLICATE) snprintf(m->t[6].name, sizeof m->t[6].name, "%s", bad->name);
    if (defect == DEF_MISSING) snprintf(bad->name, sizeof bad->name, "blk.0.attn_kk.weight");
    if (defect == DEF_SHAPE) bad->ne[0] = D / 2, bad->nbytes /= 2;
    if (defect == DEF_UNKNOWN_TYPE) bad->type = 200;
    if (defect == DEF_UNSUPPORTED_TYPE) bad->type = 12, bad->ne[0] = 256, bad->ne[1] = 1, bad->nbytes = 144; /* Q4_K */
    if (defect == DEF_OFFSET_PAST_END) bad->offset_patch = (uint64_t)1 << 30;
    if (defect == DEF_MISALIGNED) bad->offset_patch = 4;
    kvbuf kv = {0};
    if (defect != DEF_NO_ARCH_KEY) add_config(&kv, D, F, L, H, KVH, 128);
    kv_u32(&kv, "general.alignment", 32);
    add_vocab_model(&kv, NV, defect == DEF_GPT2_VOCAB ? "gpt2" : "llama");
    gbuf w = gguf_bytes(&kv, m->t, nt, NULL);
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s.gguf", tu_tmpdir(), tag);
    assert_int_equal(tu_write_file(path, w.b, w.n), 0);
    free(w.b);
    free(kv.b.b);
    return path;
}

static void expect_dense_equal(const spqr_linear *l, const float *vals, int rows, int cols) {
    const spqr_dense *d = spqr_linear_dense(l);
    assert_non_null(d);
    assert_int_equal(d->rows, rows);
    assert_int_equal(d->cols, cols);
    float *f = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    spqr_to_f32(d->data, d->dt, (size_t)rows * (size_t)cols, f);
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
        if (f[i] != vals[i]) fail_msg("weight %zu: loaded %g, written %g", i, (double)f[i], (double)vals[i]);
    free(f);
}

static void test_tiny_weights_equal(void **s) {
    (void)s;
    tiny_t t;
    const char *p = write_tiny("tiny", DEF_NONE, &t);
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(p, NULL, &m);
    if (st) fail_msg("%s", spqr_last_error());
    const spqr_config *c = spqr_model_config(m);
    assert_int_equal(c->dim, D);
    assert_int_equal(c->hidden_dim, F);
    assert_int_equal(c->n_layers, L);
    assert_int_equal(c->n_heads, H);
    assert_int_equal(c->n_kv_heads, KVH);
    assert_int_equal(c->head_dim, HD);
    assert_int_equal(c->vocab_size, NV);
    assert_int_equal(c->max_seq_len, 128);
    assert_int_equal(c->rope_interleaved, 1);
    assert_int_equal(c->tied_embeddings, 0);
    assert_true(fabsf(c->norm_eps - 1e-5f) < 1e-12f);
    /* embedding (Q8_0, dequantized exactly) */
    float *emb = malloc(sizeof(float) * NV * D);
    spqr_to_f32(m->tok_emb.data, m->tok_emb.dt, (size_t)NV * D, emb);
    assert_memory_equal(emb, t.vals[0], sizeof(float) * NV * D);
    free(emb);
    assert_memory_equal(m->final_norm, t.vals[1], sizeof(float) * D);
    int i = 2;
    const int shp[7][2] = {{H * HD, D}, {KVH * HD, D}, {KVH * HD, D}, {D, H * HD}, {F, D}, {F, D}, {D, F}};
    for (int l = 0; l < L; l++) {
        assert_memory_equal(m->blocks[l].attn_norm, t.vals[i++], sizeof(float) * D);
        assert_memory_equal(m->blocks[l].ffn_norm, t.vals[i++], sizeof(float) * D);
        for (int k = 0; k < 7; k++) expect_dense_equal(&m->blocks[l].lin[k], t.vals[i++], shp[k][0], shp[k][1]);
    }
    expect_dense_equal(&m->head, t.vals[i], NV, D);
    /* the tokenizer from the metadata */
    spqr_tokenizer *tok = spqr_model_tokenizer(m);
    assert_non_null(tok);
    assert_int_equal(spqr_tokenizer_vocab_size(tok), NV);
    int32_t *ids = NULL;
    size_t n = 0;
    const char *text = "ab a\xC3\xA9";
    assert_int_equal(spqr_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n), SPQR_OK);
    /* BOS; "\xE2\x96\x81ab\xE2\x96\x81a\xC3\xA9" after the dummy prefix: the merge to
     * "\xE2\x96\x81a" (score -3) beats "ab" (-4), then b alone; é has no piece:
     * its two bytes */
    const int32_t want[] = {1, 259 + 3, 259 + 2, 259 + 3, 3 + 0xC3, 3 + 0xA9};
    assert_int_equal(n, 6);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    float *logits = malloc(sizeof(float) * 4 * NV);
    int32_t toks[4] = {1, 262, 263, 7};
    assert_int_equal(spqr_forward(m, toks, 4, logits), SPQR_OK);
    for (int k = 0; k < 4 * NV; k++) assert_true(isfinite(logits[k]));
    free(logits);
    spqr_model_free(m);
    tiny_free(&t);
}

/* spqr quantize reads a GGUF: RTN through the CLI, the .spqr keeps the
 * interleaved RoPE and the tokenizer built from the metadata */
static void test_quantize_gguf(void **s) {
    (void)s;
    tiny_t t;
    const char *p = write_tiny("q", DEF_NONE, &t);
    char in[4096], out[4096], args[9000];
    snprintf(in, sizeof in, "%s", p);
    snprintf(out, sizeof out, "%s/q.spqr", tu_tmpdir());
    snprintf(args, sizeof args, "quantize '%s' --method rtn --bits 8 --group-size 32 --quiet -o '%s'", in, out);
    char *err = NULL;
    int rc = tu_run_cli(args, NULL, &err);
    if (rc != 0) fail_msg("spqr quantize failed: %s", err ? err : "");
    free(err);
    spqr_model *g = NULL, *q = NULL;
    assert_int_equal(spqr_model_load(in, NULL, &g), SPQR_OK);
    assert_int_equal(spqr_model_load(out, NULL, &q), SPQR_OK);
    assert_int_equal(spqr_model_config(q)->rope_interleaved, 1);
    assert_non_null(spqr_model_tokenizer(q));
    const char *text = "ab ba aab \xC3\xA9";
    int32_t *a = NULL, *b = NULL;
    size_t na, nb;
    assert_int_equal(spqr_tokenizer_encode(spqr_model_tokenizer(g), text, strlen(text), 1, &a, &na), SPQR_OK);
    assert_int_equal(spqr_tokenizer_encode(spqr_model_tokenizer(q), text, strlen(text), 1, &b, &nb), SPQR_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    /* 8-bit logits stay near the GGUF's */
    enum { T = 6 };
    int32_t toks[T] = {1, 262, 261, 262, 7, 100};
    float *lg = malloc(sizeof(float) * T * NV), *lq = malloc(sizeof(float) * T * NV);
    assert_int_equal(spqr_forward(g, toks, T, lg), SPQR_OK);
    assert_int_equal(spqr_forward(q, toks, T, lq), SPQR_OK);
    double num = 0, den = 0;
    for (int i = 0; i < T * NV; i++) num += ((double)lg[i] - lq[i]) * ((double)lg[i] - lq[i]), den += (double)lg[i] * lg[i];
    printf("  RTN 8-bit of the tiny GGUF: relative logit error %.3g\n", sqrt(num / den));
    assert_true(num > 0 && sqrt(num / den) < 0.05);
    free(a);
    free(b);
    free(lg);
    free(lq);
    spqr_model_free(g);
    spqr_model_free(q);
    tiny_free(&t);
}

/* a vocabulary of another tokenizer model: the model loads without one */
static void test_other_tokenizer_model(void **s) {
    (void)s;
    tiny_t t;
    const char *p = write_tiny("gpt2", DEF_GPT2_VOCAB, &t);
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(p, NULL, &m), SPQR_OK);
    assert_null(spqr_model_tokenizer(m));
    assert_int_equal(spqr_model_config(m)->vocab_size, NV);
    spqr_model_free(m);
    tiny_free(&t);
}

/* A GGUF of the tiny HF model: every weight f32, Q and K rows permuted the
 * way llama.cpp's converter does (per head, row j*hd/2 + i -> 2i + j). */
static const char *gguf_from_hf(const spqr_model *hf, int permute, const char *tag) {
    const spqr_config *c = spqr_model_config(hf);
    tiny_t t;
    memset(&t, 0, sizeof t);
    gtensor *g = t.t;
    int n = 0;
    const float *mats[16];
    int rows[16], cols[16], nheads[16];
    char names[16][64];
    snprintf(names[n], 64, "token_embd.weight");
    mats[n] = hf->tok_emb.data, rows[n] = c->vocab_size, cols[n] = c->dim, nheads[n++] = 0;
    snprintf(names[n], 64, "output_norm.weight");
    mats[n] = hf->final_norm, rows[n] = 1, cols[n] = c->dim, nheads[n++] = 0;
    snprintf(names[n], 64, "blk.0.attn_norm.weight");
    mats[n] = hf->blocks[0].attn_norm, rows[n] = 1, cols[n] = c->dim, nheads[n++] = 0;
    snprintf(names[n], 64, "blk.0.ffn_norm.weight");
    mats[n] = hf->blocks[0].ffn_norm, rows[n] = 1, cols[n] = c->dim, nheads[n++] = 0;
    static const char *const lname[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                         "ffn_down"};
    for (int k = 0; k < 7; k++) {
        const spqr_dense *d = spqr_linear_dense(&hf->blocks[0].lin[k]);
        assert_non_null(d);
        assert_int_equal(d->dt, SPQR_DT_F32);
        snprintf(names[n], 64, "blk.0.%s.weight", lname[k]);
        mats[n] = d->data, rows[n] = (int)d->rows, cols[n] = (int)d->cols;
        nheads[n++] = !permute ? 0 : k == 0 ? c->n_heads : k == 1 ? c->n_kv_heads : 0;
    }
    for (int i = 0; i < n; i++) {
        memset(&g[i], 0, sizeof g[i]);
        snprintf(g[i].name, sizeof g[i].name, "%s", names[i]);
        g[i].type = SPQR_GGML_F32;
        g[i].ndim = rows[i] > 1 ? 2 : 1;
        g[i].ne[0] = (uint64_t)cols[i];
        g[i].ne[1] = (uint64_t)rows[i];
        g[i].nbytes = sizeof(float) * (size_t)rows[i] * (size_t)cols[i];
        g[i].data = malloc(g[i].nbytes);
        float *dst = (float *)g[i].data;
        for (int r = 0; r < rows[i]; r++) {
            int src = r;
            if (nheads[i]) { /* destination row r = h*hd + 2i + j comes from h*hd + j*hd/2 + i */
                int hd = rows[i] / nheads[i], h = r / hd, w = r % hd;
                src = h * hd + (w % 2) * (hd / 2) + w / 2;
            }
            memcpy(dst + (size_t)r * (size_t)cols[i], mats[i] + (size_t)src * (size_t)cols[i],
                   sizeof(float) * (size_t)cols[i]);
        }
    }
    t.nt = n;
    kvbuf kv = {0};
    add_config(&kv, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->max_seq_len);
    add_vocab(&kv, c->vocab_size);
    gbuf w = gguf_bytes(&kv, g, n, NULL);
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s.gguf", tu_tmpdir(), tag);
    assert_int_equal(tu_write_file(path, w.b, w.n), 0);
    free(w.b);
    free(kv.b.b);
    tiny_free(&t);
    return path;
}

static double max_logit_diff(spqr_model *a, spqr_model *b) {
    enum { T = 12 };
    int32_t tok[T];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)(1 + (i * 37) % (TV - 1));
    float *la = malloc(sizeof(float) * T * TV), *lb = malloc(sizeof(float) * T * TV);
    assert_int_equal(spqr_forward(a, tok, T, la), SPQR_OK);
    assert_int_equal(spqr_forward(b, tok, T, lb), SPQR_OK);
    double mx = 0;
    for (int i = 0; i < T * TV; i++) mx = fmax(mx, fabs((double)la[i] - lb[i]));
    free(la);
    free(lb);
    return mx;
}

static void test_permutation_matches_hf(void **s) {
    (void)s;
    g_f16 = 0;
    g_untied = 0;
    const char *dir = make_model("hf", OK_MODEL, "LlamaForCausalLM", "float32");
    spqr_model *hf = NULL, *gg = NULL, *raw = NULL;
    assert_int_equal(spqr_model_load(dir, NULL, &hf), SPQR_OK);
    const char *p = gguf_from_hf(hf, 1, "perm");
    spqr_status st = spqr_model_load(p, NULL, &gg);
    if (st) fail_msg("%s", spqr_last_error());
    assert_int_equal(spqr_model_config(gg)->tied_embeddings, 1);
    double d = max_logit_diff(hf, gg);
    printf("  permuted GGUF vs HF: max |dlogit| %.3g\n", d);
    assert_true(d < 1e-5);
    /* the test can see a wrong layout: unpermuted Q/K rows give other logits */
    p = gguf_from_hf(hf, 0, "noperm");
    assert_int_equal(spqr_model_load(p, NULL, &raw), SPQR_OK);
    double d2 = max_logit_diff(hf, raw);
    printf("  unpermuted GGUF vs HF: max |dlogit| %.3g\n", d2);
    assert_true(d2 > 1e-3);
    spqr_model_free(hf);
    spqr_model_free(gg);
    spqr_model_free(raw);
}

/* ---- malformed files ---------------------------------------------------- */

static void expect_format(const char *path, spqr_status want, const char *needle) {
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(path, NULL, &m);
    printf("  -> %s: %s\n", spqr_status_string(st), spqr_last_error());
    assert_int_equal(st, want);
    assert_null(m);
    assert_non_null(strstr(spqr_last_error(), path));
    if (needle) assert_non_null(strstr(spqr_last_error(), needle));
}

static void test_malformed_tensors(void **s) {
    (void)s;
    static const struct {
        int defect;
        spqr_status st;
        const char *needle;
    } k[] = {
        {DEF_DUPLICATE, SPQR_ERR_FORMAT, "appears twice"},
        {DEF_MISSING, SPQR_ERR_FORMAT, "'blk.0.attn_k.weight' is missing"},
        {DEF_SHAPE, SPQR_ERR_FORMAT, "blk.0.attn_k.weight' has ne [32, 32]"},
        {DEF_UNKNOWN_TYPE, SPQR_ERR_FORMAT, "unknown type 200"},
        {DEF_UNSUPPORTED_TYPE, SPQR_ERR_UNSUPPORTED, "unsupported tensor type Q4_K"},
        {DEF_OFFSET_PAST_END, SPQR_ERR_FORMAT, "tensor 'blk.0.attn_k.weight' data ends past the end of the file"},
        {DEF_MISALIGNED, SPQR_ERR_FORMAT, "not a multiple of the alignment"},
        {DEF_NO_ARCH_KEY, SPQR_ERR_FORMAT, "general.architecture"},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        tiny_t t;
        char tag[32];
        snprintf(tag, sizeof tag, "bad%zu", i);
        const char *p = write_tiny(tag, k[i].defect, &t);
        expect_format(p, k[i].st, k[i].needle);
        tiny_free(&t);
    }
}

static void patch_u64(uint8_t *b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; i++) b[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

static void test_malformed_header(void **s) {
    (void)s;
    tiny_t t;
    const char *good = write_tiny("hdr", DEF_NONE, &t);
    tiny_free(&t);
    char *data;
    size_t n;
    assert_int_equal(spqr_read_file(good, &data, &n), SPQR_OK);
    uint8_t *b = malloc(n);
    char path[4096];
    snprintf(path, sizeof path, "%s/patched.gguf", tu_tmpdir());
    for (int c = 0; c < 7; c++) {
        memcpy(b, data, n);
        size_t len = n;
        const char *needle = NULL;
        switch (c) {
        case 0: len = 10, needle = "truncated GGUF header"; break;
        case 1: b[1] = 'X', needle = "bad magic"; break;
        case 2: b[4] = 4, needle = "version 4"; break;
        case 3: patch_u64(b, 8, UINT64_MAX), needle = "tensor count"; break;
        case 4: patch_u64(b, 16, (uint64_t)1 << 62), needle = "key/value count"; break;
        case 5: patch_u64(b, 24, (uint64_t)n), needle = "runs past the end of the file"; break; /* first key length */
        case 6: len = n - 100, needle = "data ends past the end of the file"; break;
        }
        assert_int_equal(tu_write_file(path, b, len), 0);
        /* through the reader (bad magic is not even a GGUF to the loader table) */
        spqr_gguf g;
        spqr_status st = spqr_gguf_open(path, &g);
        printf("  case %d -> %s: %s\n", c, spqr_status_string(st), spqr_last_error());
        assert_int_equal(st, SPQR_ERR_FORMAT);
        assert_non_null(strstr(spqr_last_error(), path));
        assert_non_null(strstr(spqr_last_error(), needle));
        if (c != 1) expect_format(path, SPQR_ERR_FORMAT, needle);
    }
    /* the unpatched bytes parse, in memory too */
    spqr_gguf g;
    assert_int_equal(spqr_gguf_parse(data, n, "mem", &g), SPQR_OK);
    assert_int_equal(g.version, 3);
    assert_non_null(spqr_gguf_tensor_find(&g, "blk.1.ffn_down.weight"));
    assert_null(spqr_gguf_tensor_find(&g, "blk.2.ffn_down.weight"));
    spqr_gguf_close(&g);
    free(b);
    free(data);
}

/* every prefix of a valid file is refused cleanly (no crash under ASan) */
static void test_every_truncation(void **s) {
    (void)s;
    kvbuf kv = {0};
    add_config(&kv, 64, 96, 1, 4, 2, 64);
    add_vocab(&kv, 262);
    gtensor t;
    float v[64];
    make_tensor(&t, "output_norm.weight", SPQR_GGML_F32, 1, 64, v);
    gbuf w = gguf_bytes(&kv, &t, 1, NULL);
    spqr_gguf g;
    assert_int_equal(spqr_gguf_parse(w.b, w.n, "whole", &g), SPQR_OK);
    spqr_gguf_close(&g);
    for (size_t len = 0; len < w.n; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, w.b, len);
        spqr_status st = spqr_gguf_parse(copy, len, "prefix", &g);
        if (st != SPQR_ERR_FORMAT) fail_msg("prefix of %zu bytes: status %d", len, (int)st);
        free(copy);
    }
    free(w.b);
    free(kv.b.b);
    free(t.data);
}

/* ---- the real ref-40m GGUF ---------------------------------------------- */

#define GGUF_REF "models/ref-40m-gguf/ref-40m-Q8_0.gguf"
#define HF_REF "models/ref-40m"

static void test_ref40m_tokenizes_like_hf(void **s) {
    (void)s;
    if (!tu_have_shared(GGUF_REF) || !tu_have_shared(HF_REF "/tokenizer.model")) skip();
    spqr_model *g = NULL;
    spqr_tokenizer *h = NULL;
    char gp[4096];
    snprintf(gp, sizeof gp, "%s", tu_shared(GGUF_REF));
    assert_int_equal(spqr_model_load(gp, NULL, &g), SPQR_OK);
    assert_int_equal(spqr_tokenizer_load(tu_shared(HF_REF "/tokenizer.model"), &h), SPQR_OK);
    spqr_tokenizer *gt = spqr_model_tokenizer(g);
    static const char *const files[] = {"data/eval/c4_sample.utf8", "data/eval/corpus_valid.txt",
                                        "data/eval/wikitext2_test.raw", "data/eval/ptb_test.txt"};
    static const char *const texts[] = {"Hello world", "  two  spaces\tand tab\n\nnewlines", "<s> <unk> </s>",
                                        "\xF0\x9F\x98\x80 emoji and caf\xC3\xA9", ""};
    size_t total = 0;
    for (size_t i = 0; i < sizeof files / sizeof *files + sizeof texts / sizeof *texts; i++) {
        char *txt = NULL;
        size_t n;
        if (i < 4) {
            if (!tu_have_shared(files[i])) continue;
            assert_int_equal(spqr_read_file(tu_shared(files[i]), &txt, &n), SPQR_OK);
            if (n > 200000) n = 200000;
            while (n > 0 && ((unsigned char)txt[n] & 0xC0) == 0x80) n--; /* whole characters */
        } else {
            n = strlen(texts[i - 4]);
        }
        const char *t = i < 4 ? txt : texts[i - 4];
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        assert_int_equal(spqr_tokenizer_encode(gt, t, n, 1, &a, &na), SPQR_OK);
        assert_int_equal(spqr_tokenizer_encode(h, t, n, 1, &b, &nb), SPQR_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        total += na;
        free(a);
        free(b);
        free(txt);
    }
    printf("  %zu token ids equal\n", total);
    assert_int_equal(spqr_tokenizer_bos(gt), spqr_tokenizer_bos(h));
    assert_int_equal(spqr_tokenizer_eos(gt), spqr_tokenizer_eos(h));
    spqr_tokenizer_free(h);
    spqr_model_free(g);
}

static void test_ref40m_eval_close_to_hf(void **s) {
    (void)s;
    if (!tu_have_shared(GGUF_REF) || !tu_have_shared(HF_REF) || !tu_have_shared("data/eval/corpus_valid.txt"))
        skip();
    char gp[4096], hp[4096];
    snprintf(gp, sizeof gp, "%s", tu_shared(GGUF_REF));
    snprintf(hp, sizeof hp, "%s", tu_shared(HF_REF));
    char *txt;
    size_t n;
    assert_int_equal(spqr_read_file(tu_shared("data/eval/corpus_valid.txt"), &txt, &n), SPQR_OK);
    if (n > 40000) n = 40000;
    double nll[2];
    for (int k = 0; k < 2; k++) {
        spqr_model *m = NULL;
        assert_int_equal(spqr_model_load(k ? hp : gp, NULL, &m), SPQR_OK);
        int32_t *ids;
        size_t nid;
        assert_int_equal(spqr_eval_tokenize(m, txt, n, &ids, &nid), SPQR_OK);
        spqr_ppl_result r;
        assert_int_equal(spqr_eval_perplexity_ids(m, ids, nid, 512, 4, &r, NULL, NULL), SPQR_OK);
        assert_int_equal(r.windows, 4);
        nll[k] = r.nll;
        free(ids);
        spqr_model_free(m);
    }
    printf("  corpus_valid, 4 windows of 512: GGUF Q8_0 nll %.6f, HF bf16 nll %.6f, diff %+.6f\n", nll[0], nll[1],
           nll[0] - nll[1]);
    /* Q8_0 costs ~1e-3 nats here; a wrong layout or tokenizer costs > 0.1 */
    assert_true(fabs(nll[0] - nll[1]) < 0.005);
    free(txt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_weights_equal),     cmocka_unit_test(test_other_tokenizer_model),
        cmocka_unit_test(test_permutation_matches_hf), cmocka_unit_test(test_quantize_gguf),
        cmocka_unit_test(test_malformed_tensors),      cmocka_unit_test(test_malformed_header),
        cmocka_unit_test(test_every_truncation),       cmocka_unit_test(test_ref40m_tokenizes_like_hf),
        cmocka_unit_test(test_ref40m_eval_close_to_hf),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
