/* load_spqr.c - run a model straight from a .spqr file: the container is
 * mapped and validated, every tensor is used in place (no copies except the
 * small float norms when needed), quantized linears become packed linears. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../io/container.h"
#include "model_file.h"
#include "../tokenizer/tokenizer.h"
#include "model.h"

static void cont_free(void *p) { spqr_container_close(p); }

static bool jint(const cJSON *o, const char *k, int lo, int hi, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi)) return false;
    if (j->valuedouble != floor(j->valuedouble)) return false;
    *out = (int)j->valuedouble;
    return true;
}

static spqr_status get_dense(spqr_container *c, const char *path, const char *name, int64_t rows, int64_t cols,
                             bool need_float32, spqr_tensor *out) {
    spqr_ctensor t;
    spqr_status st = spqr_container_find(c, name, &t);
    if (st) return st;
    bool is_vec = rows == 1;
    bool shape_ok = is_vec ? (t.ndim == 1 && t.dims[0] == (uint64_t)cols)
                           : (t.ndim == 2 && t.dims[0] == (uint64_t)rows && t.dims[1] == (uint64_t)cols);
    if (!shape_ok) return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has the wrong shape", path, name);
    if (need_float32 ? t.dtype != SPQR_DT_F32
                     : (t.dtype != SPQR_DT_F32 && t.dtype != SPQR_DT_F16 && t.dtype != SPQR_DT_BF16))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has dtype %s", path, name, spqr_dtype_name(t.dtype));
    out->data = t.data;
    out->dt = t.dtype;
    out->rows = rows;
    out->cols = cols;
    return SPQR_OK;
}

static const cJSON *find_layer(const cJSON *layers, const char *name) {
    const cJSON *it;
    cJSON_ArrayForEach(it, layers) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name)) return it;
    }
    return NULL;
}

typedef struct {
    spqr_container *c;
    const char *base; /* "blk.L.<linear>" */
} find_ctx;

static spqr_status find_section(void *ctx, const char *name, spqr_qsection *out) {
    const find_ctx *f = ctx;
    char full[300];
    snprintf(full, sizeof full, "%s.%s", f->base, name);
    spqr_ctensor t;
    spqr_status st = spqr_container_find(f->c, full, &t);
    if (st) return st;
    *out = (spqr_qsection){name, t.dtype, t.data, t.nbytes};
    return SPQR_OK;
}

/* Linear `base` ("blk.L.q_proj"): its metadata names its format ("layout";
 * files of model layouts 1-2 have SpQR-packed layers without the key); a
 * linear without metadata is dense ("<base>.weight"). */
static spqr_status load_linear(spqr_container *c, const char *path, int mver, const cJSON *layers, const char *base,
                               spqr_linear *li) {
    const cJSON *lj = find_layer(layers, base);
    const spqr_qformat *fmt = &spqr_qformat_dense;
    if (lj) {
        const cJSON *lay = cJSON_GetObjectItemCaseSensitive(lj, "layout");
        if (mver >= 3 && !cJSON_IsString(lay))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: layer %s has no \"layout\"", path, base);
        const char *name = cJSON_IsString(lay) ? lay->valuestring : "spqr";
        fmt = spqr_qformat_find(name);
        if (!fmt)
            return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: layer %s has layout '%s', which this build does not know",
                             path, base, name);
    }
    find_ctx f = {c, base};
    void *payload = NULL;
    spqr_status st = fmt->open(lj, li->rows, li->cols, find_section, &f, &payload);
    if (st) {
        char why[512];
        snprintf(why, sizeof why, "%s", spqr_last_error());
        return spqr_fail(st, "%s: layer %s: %s", path, base, why);
    }
    spqr_linear_set(li, fmt, payload, li->rows, li->cols);
    return SPQR_OK;
}

static spqr_status load_spqr(const char *path, spqr_model *m) {
    spqr_container *c = NULL;
    spqr_status st = spqr_container_open(path, &c);
    if (st) return st;
    m->storage = c;
    m->storage_free = cont_free;
    m->source = SPQR_SRC_SPQR;
    cJSON *root = cJSON_Parse(spqr_container_metadata(c));
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(root, "config");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "spqr-model") != 0 || !cJSON_IsObject(cfg)) {
        cJSON_Delete(root);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: the metadata does not describe a spqr model", path);
    }
    int mver = 1;
    if (cJSON_GetObjectItemCaseSensitive(root, "model_format_version") &&
        !jint(root, "model_format_version", 1, 1 << 30, &mver)) {
        cJSON_Delete(root);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: bad model_format_version", path);
    }
    if (mver > SPQR_MODEL_FORMAT_VERSION) {
        cJSON_Delete(root);
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: written by a newer spqr (model layout %d); this build reads up to %d",
                         path, mver, SPQR_MODEL_FORMAT_VERSION);
    }
    spqr_config *k = &m->cfg;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(cfg, "norm_eps");
    const cJSON *theta = cJSON_GetObjectItemCaseSensitive(cfg, "rope_theta");
    /* integers here; their plausible ranges are spqr_config_check's */
    if (!jint(cfg, "dim", INT_MIN, INT_MAX, &k->dim) || !jint(cfg, "hidden_dim", INT_MIN, INT_MAX, &k->hidden_dim) ||
        !jint(cfg, "n_layers", INT_MIN, INT_MAX, &k->n_layers) || !jint(cfg, "n_heads", INT_MIN, INT_MAX, &k->n_heads) ||
        !jint(cfg, "n_kv_heads", INT_MIN, INT_MAX, &k->n_kv_heads) ||
        !jint(cfg, "head_dim", INT_MIN, INT_MAX, &k->head_dim) ||
        !jint(cfg, "vocab_size", INT_MIN, INT_MAX, &k->vocab_size) ||
        !jint(cfg, "max_seq_len", INT_MIN, INT_MAX, &k->max_seq_len) ||
        !jint(cfg, "bos_id", -1, 1 << 24, &k->bos_id) || !jint(cfg, "eos_id", -1, 1 << 24, &k->eos_id) ||
        !cJSON_IsNumber(eps) || !cJSON_IsNumber(theta)) {
        cJSON_Delete(root);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: incomplete model config in the metadata", path);
    }
    k->norm_eps = (float)eps->valuedouble;
    k->rope_theta = (float)theta->valuedouble;
    k->rope_interleaved = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "rope_interleaved"));
    k->tied_embeddings = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "tied_embeddings"));
    if ((st = spqr_config_check(k, path))) {
        cJSON_Delete(root);
        return st;
    }
    const cJSON *prov = cJSON_GetObjectItemCaseSensitive(root, "provenance");
    if (prov) m->provenance = cJSON_PrintUnformatted(prov);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");

    /* tokenizer */
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(tk, "kind");
    if (cJSON_IsString(kind) && strcmp(kind->valuestring, "none") != 0) {
        spqr_tok_kind tkind = !strcmp(kind->valuestring, "llama2c")   ? SPQR_TOK_LLAMA2C
                              : !strcmp(kind->valuestring, "hf_json") ? SPQR_TOK_HF_JSON
                              : !strcmp(kind->valuestring, "spm")     ? SPQR_TOK_SPM
                                                                      : (spqr_tok_kind)0;
        spqr_ctensor t;
        if (!tkind) st = spqr_fail(SPQR_ERR_FORMAT, "%s: unknown tokenizer kind '%s'", path, kind->valuestring);
        if (!st) st = spqr_container_find(c, "tokenizer", &t);
        if (!st) st = spqr_tokenizer_load_mem(tkind, t.data, t.nbytes, path, &m->tok);
    }
    int64_t D = k->dim, V = k->vocab_size;
    spqr_tensor t;
    if (!st) st = get_dense(c, path, "token_embd", V, D, false, &m->tok_emb);
    if (!st) st = get_dense(c, path, "output_norm", 1, D, true, &t);
    if (!st) m->final_norm = t.data;
    if (!st && !k->tied_embeddings) st = get_dense(c, path, "output", V, D, false, &t);
    if (!st) st = spqr_linear_set_dense(&m->head, k->tied_embeddings ? m->tok_emb.data : t.data,
                                        k->tied_embeddings ? m->tok_emb.dt : t.dt, (int)V, (int)D);
    if (!st) {
        m->blocks = calloc((size_t)k->n_layers, sizeof(spqr_block));
        if (!m->blocks) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    int64_t shapes[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(k, shapes);
    for (int l = 0; l < k->n_layers && !st; l++) {
        spqr_block *b = &m->blocks[l];
        char name[160];
        snprintf(name, sizeof name, "blk.%d.attn_norm", l);
        st = get_dense(c, path, name, 1, D, true, &t);
        b->attn_norm = t.data;
        snprintf(name, sizeof name, "blk.%d.ffn_norm", l);
        if (!st) st = get_dense(c, path, name, 1, D, true, &t);
        b->ffn_norm = t.data;
        for (int j = 0; j < SPQR_LIN_PER_BLOCK && !st; j++) {
            spqr_linear *li = &b->lin[j];
            li->rows = (int)shapes[j][0];
            li->cols = (int)shapes[j][1];
            snprintf(name, sizeof name, "blk.%d.%s", l, spqr_linear_names[j]);
            st = load_linear(c, path, mver, layers, name, li);
            snprintf(name, sizeof name, "blk.%d.%s.bias", l, spqr_linear_names[j]);
            if (!st && spqr_container_index(c, name) >= 0) {
                st = get_dense(c, path, name, 1, li->rows, true, &t);
                li->bias = t.data;
            }
        }
    }
    cJSON_Delete(root);
    return st;
}

static bool file_starts_with(const char *path, const char *magic, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char buf[16] = {0};
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    return got == n && memcmp(buf, magic, n) == 0;
}

static bool probe_spqr(const char *path) {
    size_t n = strlen(path);
    return !spqr_is_dir(path) &&
           (file_starts_with(path, "\x89SPQR", 5) || (n >= 5 && !strcmp(path + n - 5, ".spqr")));
}

const spqr_loader spqr_loader_spqr = {"spqr", probe_spqr, load_spqr};
