/* load_hf.c - Hugging Face LlamaForCausalLM-style folders: config.json +
 * (sharded) safetensors + tokenizer.json / tokenizer.model. Weights stay in
 * the mapped files in their stored dtype; only norms are copied to float32. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../io/safetensors.h"
#include "../tokenizer/tokenizer.h"
#include "model.h"

static const char *const k_archs[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                      "LLaMAForCausalLM", NULL};

static bool jint(const cJSON *root, const char *key, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(j)) return false;
    if (!(j->valuedouble >= -2147483648.0 && j->valuedouble <= 2147483647.0)) return false;
    *out = (int)j->valuedouble;
    return true;
}

static bool jnum(const cJSON *root, const char *key, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(j)) return false;
    *out = j->valuedouble;
    return true;
}

static spqr_status parse_config(const char *path, const char *txt, size_t len, spqr_config *c, spqr_dtype *dt,
                                int *has_dtype, int *attn_bias, int *mlp_bias) {
    cJSON *root = cJSON_ParseWithLength(txt, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: not a JSON object", path);
    }
    spqr_status st = SPQR_OK;
    memset(c, 0, sizeof *c);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const char *aname = NULL;
    if (cJSON_IsArray(arch) && cJSON_IsString(cJSON_GetArrayItem(arch, 0)))
        aname = cJSON_GetArrayItem(arch, 0)->valuestring;
    else {
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
        if (cJSON_IsString(mt) && (!strcmp(mt->valuestring, "llama") || !strcmp(mt->valuestring, "mistral")))
            aname = "LlamaForCausalLM";
    }
    bool ok = false;
    for (int i = 0; aname && k_archs[i]; i++) ok |= strcmp(aname, k_archs[i]) == 0;
    if (!ok) {
        st = spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: unknown architecture '%s' (supported: LlamaForCausalLM and "
                                             "Mistral/Qwen2 relatives with the same tensors)",
                       path, aname ? aname : "(none)");
        goto done;
    }
    if (!jint(root, "hidden_size", &c->dim) || !jint(root, "intermediate_size", &c->hidden_dim) ||
        !jint(root, "num_hidden_layers", &c->n_layers) || !jint(root, "num_attention_heads", &c->n_heads) ||
        !jint(root, "vocab_size", &c->vocab_size)) {
        st = spqr_fail(SPQR_ERR_FORMAT, "%s: missing hidden_size, intermediate_size, num_hidden_layers, "
                                        "num_attention_heads or vocab_size", path);
        goto done;
    }
    if (!jint(root, "num_key_value_heads", &c->n_kv_heads)) c->n_kv_heads = c->n_heads;
    if (!jint(root, "head_dim", &c->head_dim)) c->head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
    if (!jint(root, "max_position_embeddings", &c->max_seq_len)) c->max_seq_len = 2048;
    double eps = 1e-6;
    if (!jnum(root, "rms_norm_eps", &eps)) eps = 1e-6;
    c->norm_eps = (float)eps;
    /* RoPE theta: transformers 4.x writes rope_theta at the top level;
     * 5.x writes rope_parameters {rope_theta, rope_type}. */
    double theta = 10000.0;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (cJSON_IsObject(rp)) jnum(rp, "rope_theta", &theta);
    else jnum(root, "rope_theta", &theta);
    const cJSON *rtype = NULL;
    if (cJSON_IsObject(rp)) rtype = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
    if (!rtype && cJSON_IsObject(rs)) {
        rtype = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!rtype) rtype = cJSON_GetObjectItemCaseSensitive(rs, "type");
    }
    if (cJSON_IsString(rtype) && strcmp(rtype->valuestring, "default") != 0) {
        st = spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: RoPE scaling type '%s' is not supported", path,
                       rtype->valuestring);
        goto done;
    }
    c->rope_theta = (float)theta;
    c->rope_interleaved = 0;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    c->tied_embeddings = cJSON_IsBool(tie) ? cJSON_IsTrue(tie) : 0;
    if (!jint(root, "bos_token_id", &c->bos_id)) c->bos_id = 1;
    if (!jint(root, "eos_token_id", &c->eos_id)) c->eos_id = 2;
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(root, "attention_bias");
    const cJSON *mb = cJSON_GetObjectItemCaseSensitive(root, "mlp_bias");
    *attn_bias = cJSON_IsTrue(ab) || (aname && strcmp(aname, "Qwen2ForCausalLM") == 0);
    *mlp_bias = cJSON_IsTrue(mb);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0) {
        st = spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: activation '%s' is not supported (silu only)", path,
                       act->valuestring);
        goto done;
    }
    /* dtype: "dtype" (5.x) or "torch_dtype" (4.x) */
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (!cJSON_IsString(jd)) jd = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    *has_dtype = 0;
    if (cJSON_IsString(jd)) {
        const char *s = jd->valuestring;
        *has_dtype = 1;
        if (!strcmp(s, "bfloat16")) *dt = SPQR_DT_BF16;
        else if (!strcmp(s, "float16")) *dt = SPQR_DT_F16;
        else if (!strcmp(s, "float32")) *dt = SPQR_DT_F32;
        else *has_dtype = 0;
    }
    st = spqr_config_check(c, path);
done:
    cJSON_Delete(root);
    return st;
}

typedef struct {
    const spqr_st_set *set;
    const char *dir;
    spqr_dtype cfg_dt;
    int has_dt;
} ctx_t;

static spqr_status get_tensor(spqr_model *m, const ctx_t *cx, const char *name, int64_t rows, int64_t cols,
                              bool matrix, spqr_tensor *out) {
    const spqr_st_tensor *t = spqr_st_find(cx->set, name);
    if (!t) return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' is missing", cx->dir, name);
    const char *file = cx->set->files[t->file].path;
    if (t->dtype != SPQR_DT_F32 && t->dtype != SPQR_DT_F16 && t->dtype != SPQR_DT_BF16)
        return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s", file, name, spqr_dtype_name(t->dtype));
    if (matrix && cx->has_dt && t->dtype != cx->cfg_dt)
        return spqr_fail(SPQR_ERR_MISMATCH, "%s: tensor '%s' is %s but config.json says %s", file, name,
                         spqr_dtype_name(t->dtype), spqr_dtype_name(cx->cfg_dt));
    bool shape_ok = matrix ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                           : (t->ndim == 1 && t->shape[0] == cols);
    if (!shape_ok) {
        char got[96] = "";
        for (int d = 0; d < t->ndim; d++) {
            char b[24];
            snprintf(b, sizeof b, d ? ", %lld" : "%lld", (long long)t->shape[d]);
            strncat(got, b, sizeof got - strlen(got) - 1);
        }
        if (matrix)
            return spqr_fail(SPQR_ERR_MISMATCH, "%s: tensor '%s' has shape [%s] but config.json implies [%lld, %lld]",
                             file, name, got, (long long)rows, (long long)cols);
        return spqr_fail(SPQR_ERR_MISMATCH, "%s: tensor '%s' has shape [%s] but config.json implies [%lld]", file,
                         name, got, (long long)cols);
    }
    out->data = t->data;
    out->dt = t->dtype;
    out->rows = matrix ? rows : 1;
    out->cols = cols;
    m->nonfinite += spqr_count_nonfinite(t->data, t->dtype, (size_t)(out->rows * out->cols));
    return SPQR_OK;
}

static spqr_status get_vec(spqr_model *m, const ctx_t *cx, const char *name, int64_t n, const float **out) {
    spqr_tensor t;
    spqr_status st = get_tensor(m, cx, name, 1, n, false, &t);
    if (st) return st;
    return spqr_model_f32_copy(m, t.data, t.dt, (size_t)n, out);
}

static spqr_status get_linear(spqr_model *m, const ctx_t *cx, const char *prefix, int64_t rows, int64_t cols,
                              bool bias, spqr_linear *l) {
    char name[300];
    snprintf(name, sizeof name, "%s.weight", prefix);
    spqr_tensor w;
    spqr_status st = get_tensor(m, cx, name, rows, cols, true, &w);
    if (!st) st = spqr_linear_set_dense(l, w.data, w.dt, (int)rows, (int)cols);
    if (st || !bias) return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return get_vec(m, cx, name, rows, &l->bias);
}

static void st_free(void *p) {
    spqr_st_close(p);
    free(p);
}

static spqr_status load_hf(const char *dir, spqr_model *m) {
    char *cfg_path = spqr_path_join(dir, "config.json");
    if (!cfg_path) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    char *txt = NULL;
    size_t len = 0;
    spqr_status st = spqr_read_file(cfg_path, &txt, &len);
    spqr_dtype dt = SPQR_DT_F32;
    int has_dt = 0, abias = 0, mbias = 0;
    if (!st) st = parse_config(cfg_path, txt, len, &m->cfg, &dt, &has_dt, &abias, &mbias);
    free(cfg_path);
    if (st) {
        free(txt);
        return st;
    }
    m->config_json = txt;
    m->source = SPQR_SRC_HF;

    spqr_st_set *set = calloc(1, sizeof *set);
    if (!set) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    st = spqr_st_open_dir(dir, set);
    if (st) {
        free(set);
        return st;
    }
    m->storage = set;
    m->storage_free = st_free;

    const spqr_config *c = &m->cfg;
    ctx_t cx = {set, dir, dt, has_dt};
    st = get_tensor(m, &cx, "model.embed_tokens.weight", c->vocab_size, c->dim, true, &m->tok_emb);
    if (!st) st = get_vec(m, &cx, "model.norm.weight", c->dim, &m->final_norm);
    if (!st) {
        const spqr_st_tensor *lm = spqr_st_find(set, "lm_head.weight");
        if (c->tied_embeddings || !lm) {
            if (!c->tied_embeddings)
                return spqr_fail(SPQR_ERR_FORMAT, "%s: lm_head.weight is missing and embeddings are not tied", dir);
            st = spqr_linear_set_dense(&m->head, m->tok_emb.data, m->tok_emb.dt, c->vocab_size, c->dim);
        } else {
            st = get_linear(m, &cx, "lm_head", c->vocab_size, c->dim, false, &m->head);
        }
    }
    if (st) return st;
    m->blocks = calloc((size_t)c->n_layers, sizeof(spqr_block));
    if (!m->blocks) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    int64_t shapes[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(c, shapes);
    for (int l = 0; l < c->n_layers && !st; l++) {
        char name[256];
        spqr_block *b = &m->blocks[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        st = get_vec(m, &cx, name, c->dim, &b->attn_norm);
        if (st) break;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        st = get_vec(m, &cx, name, c->dim, &b->ffn_norm);
        for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, k < SPQR_LIN_GATE ? "self_attn" : "mlp",
                     spqr_linear_names[k]);
            /* Qwen2 has q/k/v biases only; Llama's attention_bias covers o_proj too */
            char bn[280];
            snprintf(bn, sizeof bn, "%s.bias", name);
            bool bias = (k < SPQR_LIN_GATE ? abias : mbias) && (k != SPQR_LIN_O || spqr_st_find(set, bn));
            st = get_linear(m, &cx, name, shapes[k][0], shapes[k][1], bias, &b->lin[k]);
        }
    }
    if (st) return st;

    /* tokenizer: tokenizer.json, else tokenizer.model (both encode text the
     * SentencePiece way, special-token strings as plain text) */
    char *tp = spqr_path_join(dir, "tokenizer.model");
    char *tj = spqr_path_join(dir, "tokenizer.json");
    if (!tp || !tj) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    else if (spqr_file_exists(tj)) st = spqr_tokenizer_load(tj, &m->tok);
    else if (spqr_file_exists(tp)) st = spqr_tokenizer_load(tp, &m->tok);
    free(tp);
    free(tj);
    return st;
}

static bool probe_hf(const char *path) { return spqr_is_dir(path); }

const spqr_loader spqr_loader_hf = {"hf", probe_hf, load_hf};
