/* model.c - model handle: detection of the source format, lifetime. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../tokenizer/tokenizer.h"

const char *const spqr_linear_names[SPQR_LIN_PER_BLOCK] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"};

spqr_status spqr_model_alloc(spqr_model **out) {
    *out = calloc(1, sizeof(spqr_model));
    if (!*out) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    return SPQR_OK;
}

spqr_status spqr_model_own(spqr_model *m, void *p) {
    if (!p) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if (m->n_owned == m->cap_owned) {
        int nc = m->cap_owned ? m->cap_owned * 2 : 64;
        void **n = realloc(m->owned, sizeof(void *) * (size_t)nc);
        if (!n) {
            free(p);
            return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
        }
        m->owned = n;
        m->cap_owned = nc;
    }
    m->owned[m->n_owned++] = p;
    return SPQR_OK;
}

spqr_status spqr_model_f32_copy(spqr_model *m, const void *src, spqr_dtype dt, size_t n, const float **out) {
    float *f = spqr_malloc_array(n, sizeof(float));
    spqr_status st = spqr_model_own(m, f);
    if (st) return st;
    spqr_to_f32(src, dt, n, f);
    *out = f;
    return SPQR_OK;
}

int64_t spqr_count_nonfinite(const void *data, spqr_dtype dt, size_t n) {
    int64_t bad = 0;
    if (dt == SPQR_DT_F32) {
        const uint32_t *u = data;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7f800000u) == 0x7f800000u;
    } else if (dt == SPQR_DT_BF16) {
        const uint16_t *u = data;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7f80u) == 0x7f80u;
    } else if (dt == SPQR_DT_F16) {
        const uint16_t *u = data;
        for (size_t i = 0; i < n; i++) bad += (u[i] & 0x7c00u) == 0x7c00u;
    }
    return bad;
}

spqr_status spqr_config_check(const spqr_config *c, const char *path) {
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->vocab_size <= 0 || c->max_seq_len <= 0 || c->head_dim <= 0)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: config has a non-positive size", path);
    if (c->dim > (1 << 20) || c->hidden_dim > (1 << 22) || c->n_layers > 4096 || c->vocab_size > (1 << 24) ||
        c->n_heads > 4096 || c->head_dim > 4096 || c->max_seq_len > (1 << 24))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: config sizes are implausibly large", path);
    if (c->n_heads % c->n_kv_heads != 0)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: %d attention heads are not a multiple of %d key/value heads", path,
                         c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: head_dim %d is odd", path, c->head_dim);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps) || !(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: bad rms_norm_eps or rope_theta", path);
    return SPQR_OK;
}

static bool has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static bool file_starts_with(const char *path, const char *magic, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char buf[16] = {0};
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    return got == n && memcmp(buf, magic, n) == 0;
}

spqr_status spqr_model_load(const char *path, const char *tokenizer_path, spqr_model **out) {
    *out = NULL;
    if (!path) return spqr_fail(SPQR_ERR_INVALID_ARG, "no model path given");
    spqr_model *m;
    spqr_status st = spqr_model_alloc(&m);
    if (st) return st;
    m->path = strdup(path);
    if (!m->path) {
        free(m);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    if (spqr_is_dir(path)) {
        st = spqr_load_hf(path, m);
    } else if (!spqr_file_exists(path)) {
        st = spqr_fail(SPQR_ERR_IO, "%s: no such file or folder", path);
    } else if (file_starts_with(path, "\x89SPQR", 5) || has_suffix(path, ".spqr")) {
        st = spqr_load_spqr(path, m);
    } else if (file_starts_with(path, "GGUF", 4)) {
        st = spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: GGUF files are not supported yet", path);
    } else {
        st = spqr_load_llama2c(path, m);
    }
    if (!st && tokenizer_path) {
        spqr_tokenizer *t = NULL;
        st = spqr_tokenizer_load(tokenizer_path, &t);
        if (!st) {
            spqr_tokenizer_free(m->tok);
            m->tok = t;
        }
    }
    if (!st && m->tok && spqr_tokenizer_vocab_size(m->tok) != m->cfg.vocab_size) {
        st = spqr_fail(SPQR_ERR_MISMATCH, "%s: tokenizer has %d tokens but the model's vocabulary has %d",
                       tokenizer_path ? tokenizer_path : path, spqr_tokenizer_vocab_size(m->tok), m->cfg.vocab_size);
    }
    if (!st && m->nonfinite > 0)
        spqr_log(SPQR_LOG_WARN, "%s: %lld weights are NaN or Inf", path, (long long)m->nonfinite);
    if (st) {
        spqr_model_free(m);
        return st;
    }
    *out = m;
    return SPQR_OK;
}

void spqr_packed_free_ptr(struct spqr_packed *p); /* defined with the packed format */

void spqr_model_free(spqr_model *m) {
    if (!m) return;
    if (m->blocks) {
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++)
                if (m->blocks[l].lin[k].pk) spqr_packed_free_ptr(m->blocks[l].lin[k].pk);
    }
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->blocks);
    spqr_tokenizer_free(m->tok);
    if (m->storage_free) m->storage_free(m->storage);
    free(m->provenance);
    free(m->config_json);
    free(m->path);
    free(m);
}

const spqr_config *spqr_model_config(const spqr_model *m) { return &m->cfg; }
spqr_tokenizer *spqr_model_tokenizer(spqr_model *m) { return m->tok; }
int64_t spqr_model_nonfinite_count(const spqr_model *m) { return m->nonfinite; }
