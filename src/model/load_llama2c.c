/* load_llama2c.c - llama2.c legacy fp32 checkpoints (run.c's layout):
 * int32 header {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len} (negative vocab_size = separate classifier), then float32
 * token_embedding[vocab][dim], rms_att[L][dim], wq[L][dim][dim],
 * wk[L][kv_dim][dim], wv[L][kv_dim][dim], wo[L][dim][dim], rms_ffn[L][dim],
 * w1[L][hidden][dim], w2[L][dim][hidden], w3[L][hidden][dim], rms_final[dim],
 * freq_cis_real[seq][head/2], freq_cis_imag[seq][head/2], [wcls[vocab][dim]].
 * Weights are used in place from the mapping. */
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

static void map_free(void *p) {
    spqr_mmap_close(p);
    free(p);
}

static spqr_status load_llama2c(const char *path, spqr_model *m) {
    spqr_mmap *mp = calloc(1, sizeof *mp);
    if (!mp) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = spqr_mmap_open(path, mp);
    if (st) {
        free(mp);
        return st;
    }
    m->storage = mp;
    m->storage_free = map_free;
    m->source = SPQR_SRC_LLAMA2C;
    if (mp->size < 28)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: too small for a llama2.c checkpoint (%zu bytes)", path, mp->size);
    int32_t h[7];
    memcpy(h, mp->data, sizeof h);
    spqr_config *c = &m->cfg;
    c->dim = h[0];
    c->hidden_dim = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    int shared = h[5] > 0;
    c->vocab_size = h[5] == INT32_MIN ? 0 : abs(h[5]);
    c->max_seq_len = h[6];
    c->head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->rope_interleaved = 1;
    c->tied_embeddings = shared;
    c->bos_id = 1;
    c->eos_id = 2;
    if ((st = spqr_config_check(c, path))) return st;
    if (c->dim % c->n_heads != 0)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: dim %d is not a multiple of %d heads", path, c->dim, c->n_heads);

    size_t L = (size_t)c->n_layers, D = (size_t)c->dim, F = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t KV = (size_t)c->n_kv_heads * (size_t)c->head_dim, S = (size_t)c->max_seq_len;
    /* all sizes are bounded by config_check, so these products fit in 64 bits */
    size_t n_floats = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D + 3 * L * F * D + D +
                      S * (size_t)c->head_dim + (shared ? 0 : V * D);
    size_t need = 28 + 4 * n_floats;
    if (mp->size < need)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: truncated llama2.c checkpoint (%zu bytes, header implies %zu)", path,
                         mp->size, need);
    if (mp->size > need)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: %zu unexpected trailing bytes after the llama2.c weights", path,
                         mp->size - need);
    const float *p = (const float *)((const char *)mp->data + 28);
    m->tok_emb = (spqr_tensor){p, SPQR_DT_F32, (int64_t)V, (int64_t)D};
    p += V * D;
    const float *rms_att = p; p += L * D;
    const float *wq = p; p += L * D * D;
    const float *wk = p; p += L * KV * D;
    const float *wv = p; p += L * KV * D;
    const float *wo = p; p += L * D * D;
    const float *rms_ffn = p; p += L * D;
    const float *w1 = p; p += L * F * D;
    const float *w2 = p; p += L * D * F;
    const float *w3 = p; p += L * F * D;
    m->final_norm = p; p += D;
    p += S * (size_t)c->head_dim; /* freq_cis_real + freq_cis_imag */
    st = spqr_linear_set_dense(&m->head, shared ? m->tok_emb.data : p, SPQR_DT_F32, (int)V, (int)D);
    if (st) return st;
    m->nonfinite = spqr_count_nonfinite((const char *)mp->data + 28, SPQR_DT_F32, n_floats);

    m->blocks = calloc(L, sizeof(spqr_block));
    if (!m->blocks) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    for (size_t l = 0; l < L; l++) {
        spqr_block *b = &m->blocks[l];
        b->attn_norm = rms_att + l * D;
        b->ffn_norm = rms_ffn + l * D;
        const float *src[SPQR_LIN_PER_BLOCK] = {wq + l * D * D, wk + l * KV * D, wv + l * KV * D, wo + l * D * D,
                                                w1 + l * F * D, w3 + l * F * D, w2 + l * D * F};
        int64_t shp[SPQR_LIN_PER_BLOCK][2];
        spqr_linear_shapes(c, shp);
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++)
            if ((st = spqr_linear_set_dense(&b->lin[k], src[k], SPQR_DT_F32, (int)shp[k][0], (int)shp[k][1])))
                return st;
    }
    return SPQR_OK;
}

/* the fallback: any regular file that no other loader claims */
static bool probe_llama2c(const char *path) { return !spqr_is_dir(path) && spqr_file_exists(path); }

const spqr_loader spqr_loader_llama2c = {"llama2c", probe_llama2c, load_llama2c};
