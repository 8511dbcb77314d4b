/* model.c - model handle: the loader table (which source a path is),
 * lifetime. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../tokenizer/tokenizer.h"
#include "gpu/gpu_model.h"

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

void spqr_linear_shapes(const spqr_config *c, int64_t shapes[SPQR_LIN_PER_BLOCK][2]) {
    const int64_t D = c->dim, F = c->hidden_dim, qd = (int64_t)c->n_heads * c->head_dim,
                  kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t s[SPQR_LIN_PER_BLOCK][2] = {{qd, D}, {kvd, D}, {kvd, D}, {D, qd}, {F, D}, {F, D}, {D, F}};
    memcpy(shapes, s, sizeof s);
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

static const spqr_loader *const k_loaders[] = {&spqr_loader_hf, &spqr_loader_spqr, &spqr_loader_gguf,
                                               &spqr_loader_llama2c};

const spqr_loader *spqr_loader_for(const char *path) {
    for (size_t i = 0; i < sizeof k_loaders / sizeof *k_loaders; i++)
        if (k_loaders[i]->probe(path)) return k_loaders[i];
    return NULL;
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
    if (!spqr_is_dir(path) && !spqr_file_exists(path)) {
        st = spqr_fail(SPQR_ERR_IO, "%s: no such file or folder", path);
    } else {
        const spqr_loader *ld = spqr_loader_for(path);
        st = ld ? ld->load(path, m) : spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: not a model this build can read", path);
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

void spqr_model_free(spqr_model *m) {
    if (!m) return;
    if (m->blocks) {
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) spqr_linear_release(&m->blocks[l].lin[k]);
    }
    spqr_linear_release(&m->head);
    spqr_gpu_model_free(m->gpu);
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

spqr_status spqr_model_set_device(spqr_model *m, spqr_device dev) {
    if (!m) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_model_set_device: no model");
    if (dev == SPQR_DEVICE_CPU) {
        spqr_gpu_model_free(m->gpu);
        m->gpu = NULL;
        return SPQR_OK;
    }
    if (dev != SPQR_DEVICE_GPU && dev != SPQR_DEVICE_AUTO)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown device %d", (int)dev);
    if (m->gpu) return SPQR_OK;
    spqr_gpu_model *g = NULL;
    spqr_status st = spqr_gpu_model_new(m, &g);
    if (st == SPQR_OK) {
        m->gpu = g;
        return SPQR_OK;
    }
    if (dev == SPQR_DEVICE_AUTO && st == SPQR_ERR_NO_DEVICE) {
        spqr_log(SPQR_LOG_WARN, "%s; running on the CPU", spqr_last_error());
        return SPQR_OK;
    }
    return st;
}

spqr_device spqr_model_device(const spqr_model *m) { return m && m->gpu ? SPQR_DEVICE_GPU : SPQR_DEVICE_CPU; }
