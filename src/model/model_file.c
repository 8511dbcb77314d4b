/* model_file.c - writing a whole model in the .spqr container: tensor names,
 * metadata (config, tokenizer, provenance, per-layer summary) and the writer.
 * The reader is load_spqr.c. Names (docs/FORMAT.md):
 *   tokenizer               U8 [n]       raw tokenizer file bytes
 *   token_embd              f32/f16/bf16 [vocab][dim]
 *   output_norm             F32 [dim]
 *   output                  stored dtype [vocab][dim] (untied heads only)
 *   blk.L.attn_norm / blk.L.ffn_norm      F32 [dim]
 *   blk.L.<linear>.<section>              the sections of the linear's format
 *                                         (format/qformat.h; "weight" for dense)
 *   blk.L.<linear>.bias                   F32 [rows] (optional)
 * <linear> is q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. */
#include "model_file.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "../tokenizer/tokenizer.h"
#include "../io/container.h"

struct spqr_mwriter {
    spqr_cwriter *cw;
    const spqr_model *m;
    cJSON *layers;
    int64_t q_params, q_bytes, n_outliers;
    double formula_bits_params;
};

const char *spqr_tok_kind_name(int kind) {
    return kind == SPQR_TOK_LLAMA2C ? "llama2c" : kind == SPQR_TOK_HF_JSON ? "hf_json" : kind == SPQR_TOK_SPM ? "spm"
                                                                                                             : "none";
}

static spqr_status add_tensor2(spqr_cwriter *cw, const char *name, spqr_dtype dt, int64_t rows, int64_t cols,
                               const void *data) {
    uint64_t dims[2] = {(uint64_t)rows, (uint64_t)cols};
    size_t nb = (size_t)rows * (size_t)cols * spqr_dtype_size(dt);
    return rows == 1 ? spqr_cwriter_add(cw, name, dt, 1, dims + 1, data, nb)
                     : spqr_cwriter_add(cw, name, dt, 2, dims, data, nb);
}

spqr_status spqr_mwriter_open(const char *path, const spqr_model *m, spqr_mwriter **out) {
    *out = NULL;
    spqr_mwriter *w = calloc(1, sizeof *w);
    if (!w) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    w->m = m;
    w->layers = cJSON_CreateArray();
    spqr_status st = w->layers ? spqr_cwriter_open(path, &w->cw) : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if (st) {
        cJSON_Delete(w->layers);
        free(w);
        return st;
    }
    const spqr_config *c = &m->cfg;
    if (m->tok) {
        size_t n = 0;
        const void *raw = spqr_tokenizer_raw(m->tok, &n);
        uint64_t d = n;
        st = spqr_cwriter_add(w->cw, "tokenizer", SPQR_DT_U8, 1, &d, raw, n);
    }
    if (!st) st = add_tensor2(w->cw, "token_embd", m->tok_emb.dt, c->vocab_size, c->dim, m->tok_emb.data);
    if (!st) st = add_tensor2(w->cw, "output_norm", SPQR_DT_F32, 1, c->dim, m->final_norm);
    const spqr_dense *head = spqr_linear_dense(&m->head);
    if (!head) st = spqr_fail(SPQR_ERR_UNSUPPORTED, "a compressed output head cannot be written yet");
    else if (head->data != m->tok_emb.data)
        st = add_tensor2(w->cw, "output", head->dt, c->vocab_size, c->dim, head->data);
    if (st) {
        spqr_mwriter_abort(w);
        return st;
    }
    *out = w;
    return SPQR_OK;
}

spqr_status spqr_mwriter_add_linear(spqr_mwriter *w, int block, int which, const spqr_linear *l) {
    spqr_qsection sec[SPQR_QFORMAT_MAX_SECTIONS];
    int n = l->fmt->sections(l->payload, sec, SPQR_QFORMAT_MAX_SECTIONS);
    if (n < 0) return spqr_fail(SPQR_ERR_INTERNAL, "format %s: too many sections", l->fmt->name);
    spqr_status st = SPQR_OK;
    char name[128];
    for (int i = 0; i < n && !st; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.%s", block, spqr_linear_names[which], sec[i].name);
        size_t es = spqr_dtype_size(sec[i].dtype);
        if (!strcmp(sec[i].name, "weight")) /* dense weights keep their matrix shape */
            st = add_tensor2(w->cw, name, sec[i].dtype, l->rows, l->cols, sec[i].data);
        else {
            uint64_t d = sec[i].bytes / es;
            st = spqr_cwriter_add(w->cw, name, sec[i].dtype, 1, &d, sec[i].data, sec[i].bytes);
        }
    }
    if (!st && l->bias) {
        snprintf(name, sizeof name, "blk.%d.%s.bias", block, spqr_linear_names[which]);
        st = add_tensor2(w->cw, name, SPQR_DT_F32, 1, l->rows, l->bias);
    }
    if (st || !l->fmt->quantized) return st;
    /* per-layer metadata: the format's name and geometry, size and bits */
    size_t bytes = l->fmt->bytes(l->payload);
    double params = (double)l->rows * (double)l->cols;
    double fb = l->fmt->formula_bits(l->payload);
    int64_t n_ol = l->fmt->n_outliers ? l->fmt->n_outliers(l->payload) : 0;
    cJSON *o = cJSON_CreateObject();
    if (!o) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    snprintf(name, sizeof name, "blk.%d.%s", block, spqr_linear_names[which]);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddNumberToObject(o, "block", block);
    cJSON_AddStringToObject(o, "linear", spqr_linear_names[which]);
    cJSON_AddStringToObject(o, "layout", l->fmt->name);
    st = l->fmt->write_geometry(l->payload, o);
    cJSON_AddNumberToObject(o, "bytes", (double)bytes);
    cJSON_AddNumberToObject(o, "formula_bits", fb);
    cJSON_AddNumberToObject(o, "real_bits", 8.0 * (double)bytes / params);
    cJSON_AddItemToArray(w->layers, o);
    if (st) return st;
    w->q_params += (int64_t)params;
    w->q_bytes += (int64_t)bytes;
    w->n_outliers += n_ol;
    w->formula_bits_params += fb * params;
    return SPQR_OK;
}

spqr_status spqr_mwriter_finish(spqr_mwriter *w, const char *provenance_json) {
    const spqr_config *c = &w->m->cfg;
    /* the blocks' norms as they are now (block tuning may have retrained them) */
    for (int l = 0; l < c->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.attn_norm", l);
        spqr_status st = add_tensor2(w->cw, name, SPQR_DT_F32, 1, c->dim, w->m->blocks[l].attn_norm);
        snprintf(name, sizeof name, "blk.%d.ffn_norm", l);
        if (!st) st = add_tensor2(w->cw, name, SPQR_DT_F32, 1, c->dim, w->m->blocks[l].ffn_norm);
        if (st) {
            spqr_mwriter_abort(w);
            return st;
        }
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "spqr-model");
    cJSON_AddNumberToObject(root, "model_format_version", SPQR_MODEL_FORMAT_VERSION);
    cJSON *cfg = cJSON_AddObjectToObject(root, "config");
    cJSON_AddStringToObject(cfg, "architecture", "llama");
    cJSON_AddNumberToObject(cfg, "dim", c->dim);
    cJSON_AddNumberToObject(cfg, "hidden_dim", c->hidden_dim);
    cJSON_AddNumberToObject(cfg, "n_layers", c->n_layers);
    cJSON_AddNumberToObject(cfg, "n_heads", c->n_heads);
    cJSON_AddNumberToObject(cfg, "n_kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(cfg, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(cfg, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(cfg, "max_seq_len", c->max_seq_len);
    cJSON_AddNumberToObject(cfg, "norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(cfg, "rope_theta", c->rope_theta);
    cJSON_AddBoolToObject(cfg, "rope_interleaved", c->rope_interleaved);
    const spqr_dense *head = spqr_linear_dense(&w->m->head);
    cJSON_AddBoolToObject(cfg, "tied_embeddings", head && head->data == w->m->tok_emb.data);
    cJSON_AddNumberToObject(cfg, "bos_id", c->bos_id);
    cJSON_AddNumberToObject(cfg, "eos_id", c->eos_id);
    cJSON *tk = cJSON_AddObjectToObject(root, "tokenizer");
    cJSON_AddStringToObject(tk, "kind", spqr_tok_kind_name(w->m->tok ? (int)spqr_tokenizer_kind(w->m->tok) : 0));
    cJSON_AddStringToObject(tk, "tensor", w->m->tok ? "tokenizer" : "");
    cJSON *prov = provenance_json ? cJSON_Parse(provenance_json) : NULL;
    if (prov) cJSON_AddItemToObject(root, "provenance", prov);
    cJSON *sum = cJSON_AddObjectToObject(root, "summary");
    cJSON_AddNumberToObject(sum, "quantized_params", (double)w->q_params);
    cJSON_AddNumberToObject(sum, "quantized_bytes", (double)w->q_bytes);
    cJSON_AddNumberToObject(sum, "n_outliers", (double)w->n_outliers);
    cJSON_AddNumberToObject(sum, "avg_bits_formula", w->q_params ? w->formula_bits_params / (double)w->q_params : 0);
    cJSON_AddNumberToObject(sum, "avg_bits_real", w->q_params ? 8.0 * (double)w->q_bytes / (double)w->q_params : 0);
    cJSON_AddItemToObject(root, "layers", w->layers);
    w->layers = NULL;
    char *txt = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    spqr_status st = txt ? spqr_cwriter_set_metadata(w->cw, txt) : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    free(txt);
    if (st) {
        spqr_mwriter_abort(w);
        return st;
    }
    st = spqr_cwriter_finish(w->cw);
    free(w);
    return st;
}

void spqr_mwriter_abort(spqr_mwriter *w) {
    if (!w) return;
    spqr_cwriter_abort(w->cw);
    cJSON_Delete(w->layers);
    free(w);
}
