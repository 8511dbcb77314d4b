/* load_gguf.c - GGUF files (llama.cpp's format) of the llama architecture
 * (docs/GGUF.md): config from the <arch>.* keys, weights by llama.cpp's
 * tensor names, the SentencePiece vocabulary from tokenizer.ggml.*.
 *
 * F32/F16/BF16 weights stay in the mapping; Q8_0 weights are dequantized to
 * float32 at load (exact: each weight is an int8 times an fp16 scale). The
 * Q/K rows are in llama.cpp's interleaved RoPE layout (its converter
 * permutes Hugging Face's rotate-half rows), so the model runs with
 * rope_interleaved = 1 and the weights are used as stored. */
#include <stdio.h>
#include <stdlib.h>

#include "../io/gguf.h"
#include "../tokenizer/tokenizer.h"
#include "model.h"

void spqr_gguf_storage_free(void *p) {
    spqr_gguf_close(p);
    free(p);
}

static const spqr_gguf_kv *akv(const spqr_gguf *g, const char *arch, const char *key) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return spqr_gguf_kv_find(g, k);
}

static spqr_status need_int(const spqr_gguf *g, const char *arch, const char *key, int64_t lo, int64_t hi, int *out,
                            bool required) {
    const spqr_gguf_kv *kv = akv(g, arch, key);
    int64_t v;
    if (!kv) {
        if (!required) return SPQR_OK;
        return spqr_fail(SPQR_ERR_FORMAT, "%s: metadata key '%s.%s' is missing", g->path, arch, key);
    }
    if (!spqr_gguf_kv_int(kv, lo, hi, &v))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: metadata key '%s.%s' is not an integer in [%lld, %lld]", g->path, arch,
                         key, (long long)lo, (long long)hi);
    *out = (int)v;
    return SPQR_OK;
}

static spqr_status read_config(const spqr_gguf *g, const char **arch_out, spqr_config *c) {
    const spqr_gguf_kv *a = spqr_gguf_kv_find(g, "general.architecture");
    if (!a || a->type != SPQR_GGUF_STRING)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: general.architecture is missing or not a string", g->path);
    const char *arch = spqr_gguf_str_eq(a->str, "llama") ? "llama" : spqr_gguf_str_eq(a->str, "mistral") ? "mistral"
                                                                                                     : NULL;
    if (!arch)
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (llama and mistral are)",
                         g->path, (int)(a->str.len > 64 ? 64 : a->str.len), a->str.s);
    *arch_out = arch;
    memset(c, 0, sizeof *c);
    const int64_t big = 1 << 30;
    spqr_status st;
    if ((st = need_int(g, arch, "embedding_length", 1, big, &c->dim, true)) ||
        (st = need_int(g, arch, "feed_forward_length", 1, big, &c->hidden_dim, true)) ||
        (st = need_int(g, arch, "block_count", 1, big, &c->n_layers, true)) ||
        (st = need_int(g, arch, "attention.head_count", 1, big, &c->n_heads, true)))
        return st;
    c->n_kv_heads = c->n_heads;
    c->max_seq_len = 2048;
    if ((st = need_int(g, arch, "attention.head_count_kv", 1, big, &c->n_kv_heads, false)) ||
        (st = need_int(g, arch, "context_length", 1, big, &c->max_seq_len, false)))
        return st;
    c->head_dim = c->dim / c->n_heads;
    if ((st = need_int(g, arch, "attention.key_length", 1, big, &c->head_dim, false))) return st;
    int vl = c->head_dim, rd = c->head_dim;
    if ((st = need_int(g, arch, "attention.value_length", 1, big, &vl, false)) ||
        (st = need_int(g, arch, "rope.dimension_count", 1, big, &rd, false)))
        return st;
    if (vl != c->head_dim)
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: value head size %d differs from key head size %d", g->path, vl,
                         c->head_dim);
    if (rd != c->head_dim)
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: %s.rope.dimension_count %d differs from the head size %d (partial "
                         "rotary embeddings are not supported)", g->path, arch, rd, c->head_dim);
    double eps = 1e-5, theta = 10000.0;
    const spqr_gguf_kv *kv = akv(g, arch, "attention.layer_norm_rms_epsilon");
    if (kv && !spqr_gguf_kv_num(kv, &eps))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: %s.attention.layer_norm_rms_epsilon is not a number", g->path, arch);
    kv = akv(g, arch, "rope.freq_base");
    if (kv && !spqr_gguf_kv_num(kv, &theta))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: %s.rope.freq_base is not a number", g->path, arch);
    kv = akv(g, arch, "rope.scaling.type");
    if (kv && (kv->type != SPQR_GGUF_STRING || !spqr_gguf_str_eq(kv->str, "none")))
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: RoPE scaling (%s.rope.scaling.type) is not supported", g->path,
                         arch);
    if (!(eps > 0 && eps < 1) || !(theta > 0 && theta < 1e30)) /* before the casts to float */
        return spqr_fail(SPQR_ERR_FORMAT, "%s: bad %s.attention.layer_norm_rms_epsilon %g or rope.freq_base %g",
                         g->path, arch, eps, theta);
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;
    c->rope_interleaved = 1;
    return SPQR_OK;
}

static spqr_status tensor_shape_error(const spqr_gguf *g, const spqr_gguf_tensor *t, int64_t rows, int64_t cols,
                                      bool matrix) {
    char got[128] = "";
    for (uint32_t d = 0; d < t->ndim; d++) {
        char b[32];
        snprintf(b, sizeof b, d ? ", %llu" : "%llu", (unsigned long long)t->ne[d]);
        strncat(got, b, sizeof got - strlen(got) - 1);
    }
    if (matrix)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' has ne [%s] but the metadata implies [%lld, %lld]",
                         g->path, (int)t->name.len, t->name.s, got, (long long)cols, (long long)rows);
    return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' has ne [%s] but the metadata implies [%lld]", g->path,
                     (int)t->name.len, t->name.s, got, (long long)cols);
}

/* The weight `name` as [rows][cols] (ne = {cols, rows}) or a vector of cols:
 * in place for F32/F16/BF16, dequantized to a float32 copy for Q8_0. */
static spqr_status get_tensor(spqr_model *m, const spqr_gguf *g, const char *name, int64_t rows, int64_t cols,
                              bool matrix, spqr_tensor *out) {
    const spqr_gguf_tensor *t = spqr_gguf_tensor_find(g, name);
    if (!t) return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' is missing", g->path, name);
    size_t n = (size_t)(matrix ? rows : 1) * (size_t)cols;
    out->rows = matrix ? rows : 1;
    out->cols = cols;
    switch (t->type) {
    case SPQR_GGML_F32: out->dt = SPQR_DT_F32; break;
    case SPQR_GGML_F16: out->dt = SPQR_DT_F16; break;
    case SPQR_GGML_BF16: out->dt = SPQR_DT_BF16; break;
    case SPQR_GGML_Q8_0: break;
    default: {
        const char *tn = spqr_gguf_type_name(t->type);
        return spqr_fail(SPQR_ERR_UNSUPPORTED,
                         "%s: tensor '%s' has unsupported tensor type %s (F32, F16, BF16 and Q8_0 are read)", g->path,
                         name, tn ? tn : "?");
    }
    }
    bool ok = matrix ? (t->ndim == 2 && t->ne[0] == (uint64_t)cols && t->ne[1] == (uint64_t)rows)
                     : (t->ndim == 1 && t->ne[0] == (uint64_t)cols);
    if (!ok) return tensor_shape_error(g, t, rows, cols, matrix);
    if (t->type == SPQR_GGML_Q8_0) {
        float *f = spqr_malloc_array(n, sizeof(float));
        spqr_status st = spqr_model_own(m, f);
        if (st) return st;
        const uint8_t *b = t->data;
        for (size_t blk = 0; blk < n / 32; blk++, b += 34) {
            float d = spqr_f16_to_f32((uint16_t)(b[0] | b[1] << 8));
            for (int k = 0; k < 32; k++) f[blk * 32 + (size_t)k] = d * (float)(int8_t)b[2 + k];
        }
        out->data = f;
        out->dt = SPQR_DT_F32;
        m->nonfinite += spqr_count_nonfinite(f, SPQR_DT_F32, n);
        return SPQR_OK;
    }
    out->data = t->data;
    m->nonfinite += spqr_count_nonfinite(t->data, out->dt, n);
    return SPQR_OK;
}

static spqr_status get_vec(spqr_model *m, const spqr_gguf *g, const char *name, int64_t n, const float **out) {
    spqr_tensor t;
    spqr_status st = get_tensor(m, g, name, 1, n, false, &t);
    if (st) return st;
    if (spqr_gguf_tensor_find(g, name)->type == SPQR_GGML_Q8_0) { /* already a float32 copy */
        *out = t.data;
        return SPQR_OK;
    }
    return spqr_model_f32_copy(m, t.data, t.dt, (size_t)n, out);
}

static spqr_status get_linear(spqr_model *m, const spqr_gguf *g, const char *name, int64_t rows, int64_t cols,
                              spqr_linear *l) {
    spqr_tensor w;
    spqr_status st = get_tensor(m, g, name, rows, cols, true, &w);
    if (!st) st = spqr_linear_set_dense(l, w.data, w.dt, (int)rows, (int)cols);
    return st;
}

static spqr_status get_id(const spqr_gguf *g, const char *key, int64_t n, int32_t *out) {
    const spqr_gguf_kv *kv = spqr_gguf_kv_find(g, key);
    if (!kv) return SPQR_OK;
    int64_t v;
    if (!spqr_gguf_kv_int(kv, 0, n - 1, &v))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: %s is not a token id below %lld", g->path, key, (long long)n);
    *out = (int32_t)v;
    return SPQR_OK;
}

static spqr_status read_tokenizer(spqr_model *m, const spqr_gguf *g) {
    const spqr_gguf_kv *model = spqr_gguf_kv_find(g, "tokenizer.ggml.model");
    const spqr_gguf_kv *tokens = spqr_gguf_kv_find(g, "tokenizer.ggml.tokens");
    if (!tokens || tokens->type != SPQR_GGUF_ARRAY || tokens->arr_type != SPQR_GGUF_STRING)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tokenizer.ggml.tokens is missing or not an array of strings", g->path);
    if (tokens->arr_n == 0 || tokens->arr_n > (1 << 24))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu tokens", g->path,
                         (unsigned long long)tokens->arr_n);
    size_t n = (size_t)tokens->arr_n;
    m->cfg.vocab_size = (int)n;
    if (!model || model->type != SPQR_GGUF_STRING)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tokenizer.ggml.model is missing", g->path);
    if (!spqr_gguf_str_eq(model->str, "llama")) {
        spqr_log(SPQR_LOG_WARN, "%s: tokenizer model '%.*s' is not supported (only 'llama', SentencePiece); the "
                 "model has no tokenizer (give one with --tokenizer)", g->path,
                 (int)(model->str.len > 64 ? 64 : model->str.len), model->str.s);
        return SPQR_OK;
    }
    const spqr_gguf_kv *scores = spqr_gguf_kv_find(g, "tokenizer.ggml.scores");
    const spqr_gguf_kv *types = spqr_gguf_kv_find(g, "tokenizer.ggml.token_type");
    if (scores && (scores->type != SPQR_GGUF_ARRAY || scores->arr_n != n || scores->arr_type == SPQR_GGUF_STRING ||
                   scores->arr_type == SPQR_GGUF_ARRAY))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tokenizer.ggml.scores is not an array of %zu numbers", g->path, n);
    if (types && (types->type != SPQR_GGUF_ARRAY || types->arr_n != n || types->arr_type == SPQR_GGUF_STRING ||
                  types->arr_type == SPQR_GGUF_ARRAY || types->arr_type == SPQR_GGUF_F32 ||
                  types->arr_type == SPQR_GGUF_F64))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tokenizer.ggml.token_type is not an array of %zu integers", g->path, n);
    const char **piece = spqr_malloc_array(n, sizeof *piece);
    size_t *len = spqr_malloc_array(n, sizeof *len);
    float *score = spqr_malloc_array(n, sizeof *score);
    int32_t *type = spqr_malloc_array(n, sizeof *type);
    spqr_status st = SPQR_OK;
    if (!piece || !len || !score || !type) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_spm_vocab v = {n, piece, len, score, type, 0, -1, -1, true, false};
    size_t cur = 0;
    for (size_t i = 0; i < n && !st; i++) {
        spqr_gguf_str s = spqr_gguf_arr_next_str(tokens, &cur);
        piece[i] = s.s;
        len[i] = s.len;
        double sc = scores ? spqr_gguf_arr_num(scores, i) : 0.0;
        score[i] = sc >= -1e30 && sc <= 1e30 ? (float)sc : sc > 0 ? 1e30f : -1e30f; /* NaN -> -1e30 */
        double ty = types ? spqr_gguf_arr_num(types, i) : 1;
        type[i] = ty >= 1 && ty <= 6 ? (int32_t)ty : 0;
        v.byte_fallback |= type[i] == 6;
    }
    if (!st) st = get_id(g, "tokenizer.ggml.unknown_token_id", (int64_t)n, &v.unk_id);
    if (!st) st = get_id(g, "tokenizer.ggml.bos_token_id", (int64_t)n, &v.bos_id);
    if (!st) st = get_id(g, "tokenizer.ggml.eos_token_id", (int64_t)n, &v.eos_id);
    const spqr_gguf_kv *sp = spqr_gguf_kv_find(g, "tokenizer.ggml.add_space_prefix");
    if (sp && sp->type == SPQR_GGUF_BOOL) v.add_dummy_prefix = sp->u != 0;
    if (!st) st = spqr_tokenizer_from_spm_vocab(&v, g->path, &m->tok);
    if (!st) {
        m->cfg.bos_id = v.bos_id;
        m->cfg.eos_id = v.eos_id;
    }
    free(piece);
    free(len);
    free(score);
    free(type);
    return st;
}

static spqr_status load_gguf(const char *path, spqr_model *m) {
    spqr_gguf *g = calloc(1, sizeof *g);
    if (!g) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = spqr_gguf_open(path, g);
    if (st) {
        free(g);
        return st;
    }
    m->storage = g;
    m->storage_free = spqr_gguf_storage_free;
    return spqr_model_from_gguf(g, m);
}

spqr_status spqr_model_from_gguf(const spqr_gguf *g, spqr_model *m) {
    const char *path = g->path;
    spqr_status st;
    m->source = SPQR_SRC_GGUF;
    const char *arch = "llama";
    spqr_config *c = &m->cfg;
    if ((st = read_config(g, &arch, c))) return st;
    c->bos_id = 1;
    c->eos_id = 2;
    if ((st = read_tokenizer(m, g))) return st;
    int vs = c->vocab_size;
    if ((st = need_int(g, arch, "vocab_size", 1, 1 << 30, &vs, false))) return st;
    if (vs != c->vocab_size)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: %s.vocab_size %d differs from the %d tokens of the vocabulary", path,
                         arch, vs, c->vocab_size);
    if ((st = spqr_config_check(c, path))) return st;

    const int64_t D = c->dim, V = c->vocab_size;
    st = get_tensor(m, g, "token_embd.weight", V, D, true, &m->tok_emb);
    if (!st) st = get_vec(m, g, "output_norm.weight", D, &m->final_norm);
    if (st) return st;
    c->tied_embeddings = spqr_gguf_tensor_find(g, "output.weight") == NULL;
    if (c->tied_embeddings)
        st = spqr_linear_set_dense(&m->head, m->tok_emb.data, m->tok_emb.dt, (int)V, (int)D);
    else
        st = get_linear(m, g, "output.weight", V, D, &m->head);
    if (st) return st;
    m->blocks = calloc((size_t)c->n_layers, sizeof(spqr_block));
    if (!m->blocks) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    int64_t shapes[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(c, shapes);
    static const char *const k_names[SPQR_LIN_PER_BLOCK] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                            "ffn_gate", "ffn_up", "ffn_down"};
    for (int l = 0; l < c->n_layers && !st; l++) {
        char name[96];
        spqr_block *b = &m->blocks[l];
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        st = get_vec(m, g, name, D, &b->attn_norm);
        if (st) break;
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        st = get_vec(m, g, name, D, &b->ffn_norm);
        for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st; k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, k_names[k]);
            st = get_linear(m, g, name, shapes[k][0], shapes[k][1], &b->lin[k]);
        }
    }
    return st;
}

static bool probe_gguf(const char *path) { return spqr_gguf_probe(path); }

const spqr_loader spqr_loader_gguf = {"gguf", probe_gguf, load_gguf};
