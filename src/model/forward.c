/* forward.c - the LLaMA forward pass in float32: RMSNorm, RoPE (rotate-half
 * or interleaved), grouped-query causal attention, SwiGLU MLP. One code path
 * serves prefill (T tokens through OpenBLAS sgemm) and KV-cached decoding
 * (T = 1 at position pos0). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "gpu/gpu_model.h"
#include "model.h"
#include "../kernels/cpu/blas_fixed.h"

void spqr_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    ss /= (float)n;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (int i = 0; i < n; i++) out[i] = w[i] * (ss * x[i]);
}

void spqr_rope_tables(const spqr_config *c, int pos0, int T, float *cosv, float *sinv) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* both llama2.c and transformers: 1 / theta^(2i / hd) in float32 */
        float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        for (int t = 0; t < T; t++) {
            float v = (float)(pos0 + t) * freq;
            cosv[(size_t)t * half + i] = cosf(v);
            sinv[(size_t)t * half + i] = sinf(v);
        }
    }
}

void spqr_rope_apply(const spqr_config *c, float *v, int T, int n_heads, int stride, const int32_t *row,
                     const float *cosv, const float *sinv) {
    int hd = c->head_dim, half = hd / 2;
    for (int t = 0; t < T; t++) {
        const size_t tr = (size_t)(row ? row[t] : t) * half;
        const float *cs = cosv + tr, *sn = sinv + tr;
        for (int h = 0; h < n_heads; h++) {
            float *x = v + (size_t)t * stride + (size_t)h * hd;
            if (c->rope_interleaved) {
                for (int i = 0; i < half; i++) {
                    float a = x[2 * i], b = x[2 * i + 1];
                    x[2 * i] = a * cs[i] - b * sn[i];
                    x[2 * i + 1] = a * sn[i] + b * cs[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float a = x[i], b = x[i + half];
                    x[i] = a * cs[i] - b * sn[i];
                    x[i + half] = b * cs[i] + a * sn[i];
                }
            }
        }
    }
}

/* Causal GQA attention. Q [T][n_heads*hd] at positions pos0.., keys/values
 * K,V [pos0+T][kvd] (the cache). Out [T][n_heads*hd].
 * Short queries (decoding) use plain loops (llama2.c's order of operations);
 * longer ones compute scores and outputs per head with sgemm. */
#define ATTN_GEMM_MIN_T 16

void spqr_softmax_row(float *att, int n) {
    float mx = -INFINITY;
    for (int s = 0; s < n; s++) mx = att[s] > mx ? att[s] : mx;
    float sum = 0.0f;
    for (int s = 0; s < n; s++) {
        att[s] = expf(att[s] - mx);
        sum += att[s];
    }
    for (int s = 0; s < n; s++) att[s] /= sum;
}

static spqr_status attention(const spqr_config *c, const float *Q, const float *K, const float *V, int pos0, int T,
                             float *Out) {
    int hd = c->head_dim, nh = c->n_heads, kvd = c->n_kv_heads * hd, qd = nh * hd;
    int kv_mul = nh / c->n_kv_heads;
    int ctx = pos0 + T;
    float sqrt_hd = sqrtf((float)hd), scale = 1.0f / sqrt_hd;
    int nthreads = spqr_num_threads();
    bool gemm = T >= ATTN_GEMM_MIN_T;
    size_t per = gemm ? (size_t)T * (size_t)ctx : (size_t)ctx;
    float *scratch = spqr_malloc_array(per, sizeof(float) * (size_t)nthreads);
    if (!scratch) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for attention scores (%d x %d)", T, ctx);
    if (gemm) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
        for (int h = 0; h < nh; h++) {
            float *P = scratch + (size_t)omp_get_thread_num() * per;
            const float *Kh = K + (size_t)(h / kv_mul) * hd, *Vh = V + (size_t)(h / kv_mul) * hd;
            spqr_sgemm_fixed(false, true, T, ctx, hd, scale, Q + (size_t)h * hd, qd, Kh, kvd,
                        0.0f, P, ctx);
            for (int t = 0; t < T; t++) {
                float *row = P + (size_t)t * ctx;
                int n = pos0 + t + 1;
                spqr_softmax_row(row, n);
                for (int s = n; s < ctx; s++) row[s] = 0.0f;
            }
            spqr_sgemm_fixed(false, false, T, hd, ctx, 1.0f, P, ctx, Vh, kvd, 0.0f,
                        Out + (size_t)h * hd, qd);
        }
        free(scratch);
        return SPQR_OK;
    }
    if ((int64_t)T * ctx < 4096) nthreads = 1;
#pragma omp parallel for schedule(dynamic, 1) collapse(2) num_threads(nthreads)
    for (int h = 0; h < nh; h++) {
        for (int t = 0; t < T; t++) {
            float *att = scratch + (size_t)omp_get_thread_num() * per;
            const float *q = Q + (size_t)t * qd + (size_t)h * hd;
            int kvh = h / kv_mul;
            int n = pos0 + t + 1;
            for (int s = 0; s < n; s++) {
                const float *k = K + (size_t)s * kvd + (size_t)kvh * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += q[i] * k[i];
                att[s] = d / sqrt_hd;
            }
            spqr_softmax_row(att, n);
            float *o = Out + (size_t)t * qd + (size_t)h * hd;
            for (int i = 0; i < hd; i++) o[i] = 0.0f;
            for (int s = 0; s < n; s++) {
                const float *v = V + (size_t)s * kvd + (size_t)kvh * hd;
                float a = att[s];
                for (int i = 0; i < hd; i++) o[i] += a * v[i];
            }
        }
    }
    free(scratch);
    return SPQR_OK;
}

/* One block on nseq independent sequences X[nseq*T1][dim] of T1 tokens each
 * at positions pos0..pos0+T1-1. Kc/Vc hold, for each sequence, a cache of
 * (pos0+T1) rows of kvd floats whose first pos0 rows are filled (pos0 > 0
 * only with nseq == 1). */
static spqr_status block_run(const spqr_model *m, int layer, float *X, int nseq, int T1, int pos0, float *Kc,
                             float *Vc, spqr_block_hook hook, void *user) {
    const int T = nseq * T1;
    const spqr_config *c = &m->cfg;
    const spqr_block *b = &m->blocks[layer];
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t tn = (size_t)T;
    size_t wide = qd > F ? qd : F;
    wide = wide > D ? wide : D;
    float *xb = spqr_malloc_array(tn, D * sizeof(float));
    float *q = spqr_malloc_array(tn, qd * sizeof(float));
    float *a = spqr_malloc_array(tn, wide * sizeof(float));
    float *g = spqr_malloc_array(tn, F * sizeof(float));
    float *u = spqr_malloc_array(tn, F * sizeof(float));
    float *cs = spqr_malloc_array(tn, (size_t)c->head_dim / 2 * sizeof(float));
    float *sn = spqr_malloc_array(tn, (size_t)c->head_dim / 2 * sizeof(float));
    spqr_status st = SPQR_OK;
    if (!xb || !q || !a || !g || !u || !cs || !sn) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory in forward pass (%d tokens)", T);
        goto done;
    }
    for (size_t t = 0; t < tn; t++) spqr_rmsnorm(xb + t * D, X + t * D, b->attn_norm, (int)D, c->norm_eps);
    if (hook && hook(user, SPQR_LIN_Q, xb, T, (int)D)) goto done;
    float *Kn = Kc + (size_t)pos0 * kvd, *Vn = Vc + (size_t)pos0 * kvd; /* == Kc when nseq > 1 */
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_Q], xb, T, q))) goto done;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_K], xb, T, Kn))) goto done;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_V], xb, T, Vn))) goto done;
    spqr_rope_tables(c, pos0, T1, cs, sn);
    for (int sq = 0; sq < nseq; sq++) {
        size_t o = (size_t)sq * T1;
        spqr_rope_apply(c, q + o * qd, T1, c->n_heads, (int)qd, NULL, cs, sn);
        spqr_rope_apply(c, Kn + o * kvd, T1, c->n_kv_heads, (int)kvd, NULL, cs, sn);
        if ((st = attention(c, q + o * qd, Kc + o * kvd, Vc + o * kvd, pos0, T1, a + o * qd))) goto done;
    }
    if (hook && hook(user, SPQR_LIN_O, a, T, (int)qd)) goto done;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_O], a, T, xb))) goto done;
    for (size_t i = 0; i < tn * D; i++) X[i] += xb[i];

    for (size_t t = 0; t < tn; t++) spqr_rmsnorm(xb + t * D, X + t * D, b->ffn_norm, (int)D, c->norm_eps);
    if (hook && hook(user, SPQR_LIN_GATE, xb, T, (int)D)) goto done;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_GATE], xb, T, g))) goto done;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_UP], xb, T, u))) goto done;
    for (size_t i = 0; i < tn * F; i++) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
    if (hook && hook(user, SPQR_LIN_DOWN, g, T, (int)F)) goto done;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_DOWN], g, T, xb))) goto done;
    for (size_t i = 0; i < tn * D; i++) X[i] += xb[i];
done:
    free(xb);
    free(q);
    free(a);
    free(g);
    free(u);
    free(cs);
    free(sn);
    return st;
}

spqr_status spqr_block_forward(const spqr_model *m, int layer, float *X, int nseq, int T1, spqr_block_hook hook,
                               void *user) {
    size_t kvd = (size_t)m->cfg.n_kv_heads * m->cfg.head_dim, T = (size_t)nseq * (size_t)T1;
    float *K = spqr_malloc_array(T, kvd * sizeof(float));
    float *V = spqr_malloc_array(T, kvd * sizeof(float));
    spqr_status st = (K && V) ? block_run(m, layer, X, nseq, T1, 0, K, V, hook, user)
                              : spqr_fail(SPQR_ERR_NOMEM, "out of memory in forward pass (%zu tokens)", T);
    free(K);
    free(V);
    return st;
}

void spqr_embed(const spqr_model *m, const int32_t *tokens, int T, float *X) {
    size_t D = (size_t)m->cfg.dim, es = spqr_dtype_size(m->tok_emb.dt);
    for (int t = 0; t < T; t++)
        spqr_to_f32((const char *)m->tok_emb.data + (size_t)tokens[t] * D * es, m->tok_emb.dt, D, X + (size_t)t * D);
}

spqr_status spqr_final_logits(const spqr_model *m, float *X, int T, float *logits) {
    size_t D = (size_t)m->cfg.dim;
    for (int t = 0; t < T; t++) spqr_rmsnorm(X + t * D, X + t * D, m->final_norm, (int)D, m->cfg.norm_eps);
    return spqr_linear_forward(&m->head, X, T, logits);
}

static spqr_status check_tokens(const spqr_model *m, const int32_t *tokens, int T) {
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab_size)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "token id %d at position %d is outside the vocabulary (%d)",
                             tokens[t], t, m->cfg.vocab_size);
    return SPQR_OK;
}

spqr_status spqr_forward(spqr_model *m, const int32_t *tokens, int T, float *logits) {
    if (!m || !tokens || !logits || T <= 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_forward: bad arguments");
    if (T > m->cfg.max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%d tokens exceed the model's context of %d", T, m->cfg.max_seq_len);
    spqr_status st = check_tokens(m, tokens, T);
    if (st) return st;
    if (m->gpu) return spqr_gpu_forward(m->gpu, tokens, 1, T, logits);
    float *X = spqr_malloc_array((size_t)T, (size_t)m->cfg.dim * sizeof(float));
    if (!X) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_embed(m, tokens, T, X);
    for (int l = 0; l < m->cfg.n_layers && !st; l++) st = spqr_block_forward(m, l, X, 1, T, NULL, NULL);
    if (!st) st = spqr_final_logits(m, X, T, logits);
    free(X);
    return st;
}

/* ---- KV-cached sessions --------------------------------------------------- */

struct spqr_session {
    spqr_model *m;
    spqr_gpu_session *gs; /* the session runs on the GPU */
    int pos;
    float *kc, *vc; /* [n_layers][max_seq][kvd] */
    float *x, *logits;
};

spqr_status spqr_session_new(spqr_model *m, spqr_session **out) {
    *out = NULL;
    spqr_session *s = calloc(1, sizeof *s);
    if (!s) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    s->m = m;
    if (m->gpu) {
        spqr_status st = spqr_gpu_session_new(m->gpu, &s->gs);
        if (st) {
            free(s);
            return st;
        }
        *out = s;
        return SPQR_OK;
    }
    size_t kvd = (size_t)m->cfg.n_kv_heads * m->cfg.head_dim;
    size_t n = (size_t)m->cfg.n_layers * (size_t)m->cfg.max_seq_len;
    s->m = m;
    s->kc = spqr_malloc_array(n, kvd * sizeof(float));
    s->vc = spqr_malloc_array(n, kvd * sizeof(float));
    s->x = spqr_malloc_array((size_t)m->cfg.dim, sizeof(float));
    s->logits = spqr_malloc_array((size_t)m->cfg.vocab_size, sizeof(float));
    if (!s->kc || !s->vc || !s->x || !s->logits) {
        spqr_session_free(s);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the KV cache (%d layers x %d positions)",
                         m->cfg.n_layers, m->cfg.max_seq_len);
    }
    *out = s;
    return SPQR_OK;
}

void spqr_session_free(spqr_session *s) {
    if (!s) return;
    spqr_gpu_session_free(s->gs);
    free(s->kc);
    free(s->vc);
    free(s->x);
    free(s->logits);
    free(s);
}

int spqr_session_pos(const spqr_session *s) { return s->gs ? spqr_gpu_session_pos(s->gs) : s->pos; }

spqr_status spqr_session_step(spqr_session *s, int32_t token, const float **logits) {
    spqr_model *m = s->m;
    if (s->pos >= m->cfg.max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "context of %d tokens is full", m->cfg.max_seq_len);
    spqr_status st = check_tokens(m, &token, 1);
    if (st) return st;
    if (s->gs) return spqr_gpu_session_step(s->gs, token, logits);
    size_t kvd = (size_t)m->cfg.n_kv_heads * m->cfg.head_dim, S = (size_t)m->cfg.max_seq_len;
    spqr_embed(m, &token, 1, s->x);
    for (int l = 0; l < m->cfg.n_layers && !st; l++)
        st = block_run(m, l, s->x, 1, 1, s->pos, s->kc + (size_t)l * S * kvd, s->vc + (size_t)l * S * kvd, NULL, NULL);
    if (!st) st = spqr_final_logits(m, s->x, 1, s->logits);
    if (st) return st;
    s->pos++;
    *logits = s->logits;
    return SPQR_OK;
}
