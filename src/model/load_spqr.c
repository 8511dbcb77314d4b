/* load_spqr.c - run a model straight from a .spqr file: the container is
 * mapped and validated, every tensor is used in place (no copies except the
 * small float norms when needed), quantized linears become packed linears. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../format/container.h"
#include "../format/model_file.h"
#include "../format/packed.h"
#include "../tokenizer/tokenizer.h"
#include "model.h"

static const char *const k_sections[] = {"codes", "stat_codes", "stats2", "stats", "perm", "ol_count", "ol_col",
                                         "ol_val"};

void spqr_packed_free_ptr(struct spqr_packed *p) {
    spqr_packed_free(p);
    free(p);
}

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

static spqr_status load_packed(spqr_container *c, const char *path, const cJSON *layers, const char *base,
                               int rows, int cols, spqr_packed **out) {
    const cJSON *lj = find_layer(layers, base);
    if (!lj) return spqr_fail(SPQR_ERR_FORMAT, "%s: no metadata for layer %s", path, base);
    spqr_packed_geom g;
    if (!jint(lj, "rows", 1, 1 << 30, &g.rows) || !jint(lj, "cols", 1, 1 << 30, &g.cols) ||
        !jint(lj, "wbits", 1, 16, &g.wbits) || !jint(lj, "beta1", 0, 1 << 30, &g.beta1) ||
        !jint(lj, "beta2", 0, 1 << 30, &g.beta2) || !jint(lj, "sbits", 0, 16, &g.sbits) ||
        !jint(lj, "zbits", 0, 16, &g.zbits))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: bad geometry in the metadata of layer %s", path, base);
    g.ocw = 0; /* layout 1: counts of the index width */
    if (cJSON_GetObjectItemCaseSensitive(lj, "ocw") && !jint(lj, "ocw", 0, 4, &g.ocw))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: bad outlier count width in the metadata of layer %s", path, base);
    if (g.rows != rows || g.cols != cols)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: layer %s is %dx%d but the config implies %dx%d", path, base, g.rows,
                         g.cols, rows, cols);
    spqr_packed_section sec[SPQR_PACKED_MAX_SECTIONS];
    int n = 0;
    for (size_t i = 0; i < sizeof k_sections / sizeof *k_sections; i++) {
        size_t bytes;
        if (spqr_packed_section_bytes(&g, k_sections[i], 0, &bytes) != SPQR_OK) continue; /* not of this kind */
        char name[256];
        snprintf(name, sizeof name, "%s.%s", base, k_sections[i]);
        spqr_ctensor t;
        spqr_status st = spqr_container_find(c, name, &t);
        if (st) return st;
        sec[n++] = (spqr_packed_section){k_sections[i], t.data, t.nbytes};
    }
    spqr_packed *pk = calloc(1, sizeof *pk);
    if (!pk) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = spqr_packed_from_sections(&g, sec, n, pk);
    if (st) {
        char why[512];
        snprintf(why, sizeof why, "%s", spqr_last_error());
        spqr_status s2 = spqr_fail(st, "%s: layer %s: %s", path, base, why);
        free(pk);
        return s2;
    }
    *out = pk;
    return SPQR_OK;
}

spqr_status spqr_load_spqr(const char *path, spqr_model *m) {
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
    if (!jint(cfg, "dim", 1, 1 << 20, &k->dim) || !jint(cfg, "hidden_dim", 1, 1 << 22, &k->hidden_dim) ||
        !jint(cfg, "n_layers", 1, 4096, &k->n_layers) || !jint(cfg, "n_heads", 1, 4096, &k->n_heads) ||
        !jint(cfg, "n_kv_heads", 1, 4096, &k->n_kv_heads) || !jint(cfg, "head_dim", 1, 4096, &k->head_dim) ||
        !jint(cfg, "vocab_size", 1, 1 << 24, &k->vocab_size) ||
        !jint(cfg, "max_seq_len", 1, 1 << 24, &k->max_seq_len) || !jint(cfg, "bos_id", -1, 1 << 24, &k->bos_id) ||
        !jint(cfg, "eos_id", -1, 1 << 24, &k->eos_id) || !cJSON_IsNumber(eps) || !cJSON_IsNumber(theta)) {
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
    int64_t D = k->dim, V = k->vocab_size, F = k->hidden_dim;
    int64_t qd = (int64_t)k->n_heads * k->head_dim, kvd = (int64_t)k->n_kv_heads * k->head_dim;
    spqr_tensor t;
    if (!st) st = get_dense(c, path, "token_embd", V, D, false, &m->tok_emb);
    if (!st) st = get_dense(c, path, "output_norm", 1, D, true, &t);
    if (!st) m->final_norm = t.data;
    m->head.kind = SPQR_LIN_DENSE;
    m->head.rows = (int)V;
    m->head.cols = (int)D;
    if (!st && k->tied_embeddings) m->head.w = m->tok_emb;
    else if (!st) st = get_dense(c, path, "output", V, D, false, &m->head.w);
    if (!st) {
        m->blocks = calloc((size_t)k->n_layers, sizeof(spqr_block));
        if (!m->blocks) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    const int64_t shapes[SPQR_LIN_PER_BLOCK][2] = {{qd, D}, {kvd, D}, {kvd, D}, {D, qd}, {F, D}, {F, D}, {D, F}};
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
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, spqr_linear_names[j]);
            if (spqr_container_index(c, name) >= 0) {
                li->kind = SPQR_LIN_DENSE;
                st = get_dense(c, path, name, li->rows, li->cols, false, &li->w);
            } else {
                li->kind = SPQR_LIN_PACKED;
                snprintf(name, sizeof name, "blk.%d.%s", l, spqr_linear_names[j]);
                st = load_packed(c, path, layers, name, li->rows, li->cols, &li->pk);
            }
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
