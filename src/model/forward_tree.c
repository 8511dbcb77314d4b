/* forward_tree.c - the LLaMA forward pass of forward.c over packed prefix
 * trees (see forward_tree.h): the same RMSNorm, linears, SwiGLU and
 * residuals on all n tokens at once, RoPE at per-token positions, and
 * attention restricted to a token's segment, its own branch and the shared
 * prefix. Logits are computed only for the requested rows. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "../kernels/cpu/cpu.h"
#include "forward_tree.h"
#include "../kernels/cpu/blas_fixed.h"

#define SCORE_CHUNK 512

spqr_status spqr_tree_batch_check(const spqr_config *c, const spqr_tree_batch *b) {
    if (!b || b->n <= 0 || !b->tokens || !b->pos || !b->branch || b->n_seg <= 0 || !b->seg_off || b->n_rows < 0 ||
        b->n_pairs < 0 || (b->n_rows && !b->rows) || (b->n_pairs && (!b->pair_row || !b->pair_tgt)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: bad arguments");
    if (b->seg_off[0] != 0 || b->seg_off[b->n_seg] != b->n)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: segments do not cover the %d tokens", b->n);
    for (int s = 0; s < b->n_seg; s++) {
        int L = b->seg_off[s + 1] - b->seg_off[s];
        if (L <= 0 || L > c->max_seq_len)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: segment %d has %d tokens (context %d)", s, L,
                             c->max_seq_len);
    }
    for (int i = 0; i < b->n; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= c->vocab_size)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "token id %d at position %d is outside the vocabulary (%d)",
                             b->tokens[i], i, c->vocab_size);
        if (b->pos[i] < 0 || b->pos[i] >= c->max_seq_len || b->branch[i] < 0)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: token %d has position %d, branch %d", i, b->pos[i],
                             b->branch[i]);
    }
    for (int r = 0; r < b->n_rows; r++)
        if (b->rows[r] < 0 || b->rows[r] >= b->n || (r > 0 && b->rows[r] <= b->rows[r - 1]))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: rows are not increasing indices below %d", b->n);
    for (int k = 0; k < b->n_pairs; k++)
        if (b->pair_row[k] < 0 || b->pair_row[k] >= b->n_rows || b->pair_tgt[k] < 0 ||
            b->pair_tgt[k] >= c->vocab_size)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: pair %d (row %d, target %d) is out of range", k,
                             b->pair_row[k], b->pair_tgt[k]);
    return SPQR_OK;
}

/* Masked GQA attention per (segment, head): scores by sgemm, the tree mask,
 * softmax (max, exp, sum, divide as forward.c), output by sgemm. */
static spqr_status tree_attention(const spqr_config *c, const spqr_tree_batch *b, int maxlen, const float *Q,
                                  const float *K, const float *V, float *Out) {
    int hd = c->head_dim, nh = c->n_heads, kvd = c->n_kv_heads * hd, qd = nh * hd;
    int kv_mul = nh / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    int nthreads = spqr_num_threads();
    size_t per = (size_t)maxlen * (size_t)maxlen;
    float *scratch = spqr_malloc_array(per, sizeof(float) * (size_t)nthreads);
    if (!scratch) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for attention scores (%d x %d)", maxlen, maxlen);
    int nwork = b->n_seg * nh;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int w = 0; w < nwork; w++) {
        int s = w / nh, h = w % nh;
        int s0 = b->seg_off[s], L = b->seg_off[s + 1] - s0;
        const int32_t *br = b->branch + s0;
        float *P = scratch + (size_t)omp_get_thread_num() * per;
        const float *Qh = Q + (size_t)s0 * qd + (size_t)h * hd;
        const float *Kh = K + (size_t)s0 * kvd + (size_t)(h / kv_mul) * hd;
        const float *Vh = V + (size_t)s0 * kvd + (size_t)(h / kv_mul) * hd;
        spqr_sgemm_fixed(false, true, L, L, hd, scale, Qh, qd, Kh, kvd, 0.0f, P, L);
        for (int i = 0; i < L; i++) {
            float *row = P + (size_t)i * L;
            int bi = br[i];
            float mx = -INFINITY;
            for (int j = 0; j <= i; j++)
                if (br[j] == 0 || br[j] == bi) mx = row[j] > mx ? row[j] : mx;
            float sum = 0.0f;
            for (int j = 0; j <= i; j++) {
                if (br[j] == 0 || br[j] == bi) {
                    row[j] = expf(row[j] - mx);
                    sum += row[j];
                } else {
                    row[j] = 0.0f;
                }
            }
            for (int j = 0; j <= i; j++) row[j] /= sum;
            for (int j = i + 1; j < L; j++) row[j] = 0.0f;
        }
        spqr_sgemm_fixed(false, false, L, hd, L, 1.0f, P, L, Vh, kvd, 0.0f,
                    Out + (size_t)s0 * qd + (size_t)h * hd, qd);
    }
    free(scratch);
    return SPQR_OK;
}

typedef struct tree_bufs {
    float *xb, *q, *k, *v, *a, *g, *u;
} tree_bufs;

static spqr_status tree_block(const spqr_model *m, int layer, float *X, const spqr_tree_batch *tb, int maxlen,
                              const float *cs, const float *sn, tree_bufs *w) {
    const spqr_config *c = &m->cfg;
    const spqr_block *b = &m->blocks[layer];
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, tn = (size_t)tb->n;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    int T = tb->n;
    spqr_status st;
    int nt = spqr_num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t t = 0; t < tn; t++) spqr_rmsnorm(w->xb + t * D, X + t * D, b->attn_norm, (int)D, c->norm_eps);
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_Q], w->xb, T, w->q))) return st;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_K], w->xb, T, w->k))) return st;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_V], w->xb, T, w->v))) return st;
    spqr_rope_apply(c, w->q, T, c->n_heads, (int)qd, tb->pos, cs, sn);
    spqr_rope_apply(c, w->k, T, c->n_kv_heads, (int)kvd, tb->pos, cs, sn);
    if ((st = tree_attention(c, tb, maxlen, w->q, w->k, w->v, w->a))) return st;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_O], w->a, T, w->xb))) return st;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < tn * D; i++) X[i] += w->xb[i];
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t t = 0; t < tn; t++) spqr_rmsnorm(w->xb + t * D, X + t * D, b->ffn_norm, (int)D, c->norm_eps);
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_GATE], w->xb, T, w->g))) return st;
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_UP], w->xb, T, w->u))) return st;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < tn * F; i++) {
        float v = w->g[i];
        w->g[i] = v / (1.0f + expf(-v)) * w->u[i];
    }
    if ((st = spqr_linear_forward(&b->lin[SPQR_LIN_DOWN], w->g, T, w->xb))) return st;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < tn * D; i++) X[i] += w->xb[i];
    return SPQR_OK;
}

/* Score the pairs of rows r0..r0+nr-1 from their logits [nr][V]; lse and
 * amax are [nr] scratch. */
static void score_rows(const spqr_tree_batch *b, int r0, int nr, const float *logits, int V, double *lse, int *amax,
                       double *logp, uint8_t *greedy, int *pair_cursor) {
#pragma omp parallel for num_threads(spqr_num_threads())
    for (int r = 0; r < nr; r++) {
        lse[r] = spqr_logsumexp(logits + (size_t)r * V, V, &amax[r]);
    }
    int k = *pair_cursor;
    for (; k < b->n_pairs && b->pair_row[k] < r0 + nr; k++) {
        int r = b->pair_row[k] - r0;
        logp[k] = (double)logits[(size_t)r * V + b->pair_tgt[k]] - lse[r];
        greedy[k] = amax[r] == b->pair_tgt[k];
    }
    *pair_cursor = k;
}

spqr_status spqr_tree_score(const spqr_model *m, const spqr_tree_batch *b, double *logp, uint8_t *greedy) {
    if (!m || !b || (b->n_pairs > 0 && (!logp || !greedy)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tree_score: bad arguments");
    const spqr_config *c = &m->cfg;
    spqr_status st = spqr_tree_batch_check(c, b);
    if (st) return st;
    for (int k = 1; k < b->n_pairs; k++)
        if (b->pair_row[k] < b->pair_row[k - 1])
            return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: pairs are not ordered by row");
    int maxlen = 0, maxpos = 0;
    for (int s = 0; s < b->n_seg; s++)
        if (b->seg_off[s + 1] - b->seg_off[s] > maxlen) maxlen = b->seg_off[s + 1] - b->seg_off[s];
    for (int i = 0; i < b->n; i++)
        if (b->pos[i] + 1 > maxpos) maxpos = b->pos[i] + 1;
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, V = (size_t)c->vocab_size, tn = (size_t)b->n;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t half = (size_t)c->head_dim / 2;
    size_t wide = qd > D ? qd : D;
    float *X = spqr_malloc_array(tn, D * sizeof(float));
    float *cs = spqr_malloc_array((size_t)maxpos, half * sizeof(float));
    float *sn = spqr_malloc_array((size_t)maxpos, half * sizeof(float));
    float *H = spqr_malloc_array(SCORE_CHUNK, D * sizeof(float));
    float *logits = spqr_malloc_array(SCORE_CHUNK, V * sizeof(float));
    double *lse = spqr_malloc_array(SCORE_CHUNK, sizeof(double));
    int *amax = spqr_malloc_array(SCORE_CHUNK, sizeof(int));
    tree_bufs w = {spqr_malloc_array(tn, wide * sizeof(float)), spqr_malloc_array(tn, qd * sizeof(float)),
                   spqr_malloc_array(tn, kvd * sizeof(float)), spqr_malloc_array(tn, kvd * sizeof(float)),
                   spqr_malloc_array(tn, qd * sizeof(float)), spqr_malloc_array(tn, F * sizeof(float)),
                   spqr_malloc_array(tn, F * sizeof(float))};
    if (!X || !cs || !sn || !H || !logits || !lse || !amax || !w.xb || !w.q || !w.k || !w.v || !w.a || !w.g || !w.u) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory in the tree forward pass (%d tokens)", b->n);
        goto done;
    }
    spqr_rope_tables(c, 0, maxpos, cs, sn);
    spqr_embed(m, b->tokens, b->n, X);
    for (int l = 0; l < c->n_layers && !st; l++) st = tree_block(m, l, X, b, maxlen, cs, sn, &w);
    int cursor = 0;
    for (int r0 = 0; r0 < b->n_rows && !st; r0 += SCORE_CHUNK) {
        int nr = b->n_rows - r0 < SCORE_CHUNK ? b->n_rows - r0 : SCORE_CHUNK;
        for (int r = 0; r < nr; r++) memcpy(H + (size_t)r * D, X + (size_t)b->rows[r0 + r] * D, D * sizeof(float));
        st = spqr_final_logits(m, H, nr, logits);
        if (!st) score_rows(b, r0, nr, logits, (int)V, lse, amax, logp, greedy, &cursor);
    }
done:
    free(X);
    free(cs);
    free(sn);
    free(H);
    free(logits);
    free(lse);
    free(amax);
    free(w.xb);
    free(w.q);
    free(w.k);
    free(w.v);
    free(w.a);
    free(w.g);
    free(w.u);
    return st;
}
