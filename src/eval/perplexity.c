/* perplexity.c - perplexity by the non-overlapping-window protocol: text with
 * CRLF -> LF, one BOS then the ids of the whole text, non-overlapping windows
 * of S tokens from the start, every next-token target inside a window scored
 * (S-1 per window), the remainder dropped; nll in nats/token. Several windows
 * go through the blocks together so the linear layers see large batches. */
#include <math.h>
#include <stdlib.h>

#include "../kernels/cpu/cpu.h"
#include "../model/gpu/gpu_model.h"
#include "../model/model.h"
#include "../tokenizer/tokenizer.h"
#include "eval.h"

#define TARGET_BATCH_TOKENS 2048
#define HEAD_CHUNK 512

/* Copy of text with every "\r\n" turned into "\n". */
/* Sum over rows t of -log softmax(logits[t])[target[t]], in double. */
static double nll_rows(const float *logits, int n, int vocab, const int32_t *target) {
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) num_threads(spqr_num_threads())
    for (int t = 0; t < n; t++) {
        const float *l = logits + (size_t)t * vocab;
        total += spqr_logsumexp(l, vocab, NULL) - (double)l[target[t]];
    }
    return total;
}

spqr_status spqr_eval_tokens(spqr_model *m, const int32_t *ids, size_t n_ids, int S, spqr_ppl_result *res,
                             void (*progress)(void *, int64_t, int64_t), void *user) {
    const spqr_config *c = &m->cfg;
    int64_t windows = (int64_t)(n_ids / (size_t)S);
    if (windows == 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "text has %zu tokens, fewer than one window of %d", n_ids, S);
    if (m->gpu) return spqr_gpu_eval_nll(m->gpu, ids, n_ids, S, res);
    int per = TARGET_BATCH_TOKENS / S;
    if (per < 1) per = 1;
    size_t D = (size_t)c->dim, V = (size_t)c->vocab_size;
    float *X = spqr_malloc_array((size_t)per * S, D * sizeof(float));
    float *logits = spqr_malloc_array(HEAD_CHUNK, V * sizeof(float));
    if (!X || !logits) {
        free(X);
        free(logits);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for evaluation buffers");
    }
    double t0 = spqr_now(), nll = 0.0;
    spqr_status st = SPQR_OK;
    for (int64_t w0 = 0; w0 < windows && !st; w0 += per) {
        int nw = (int)((windows - w0) < per ? (windows - w0) : per);
        const int32_t *tok = ids + (size_t)w0 * S;
        spqr_embed(m, tok, nw * S, X);
        for (int l = 0; l < c->n_layers && !st; l++) st = spqr_block_forward(m, l, X, nw, S, NULL, NULL);
        for (int w = 0; w < nw && !st; w++) {
            for (int t0c = 0; t0c < S - 1 && !st; t0c += HEAD_CHUNK) {
                int n = S - 1 - t0c < HEAD_CHUNK ? S - 1 - t0c : HEAD_CHUNK;
                float *x = X + ((size_t)w * S + t0c) * D;
                st = spqr_final_logits(m, x, n, logits);
                if (!st) nll += nll_rows(logits, n, (int)V, tok + (size_t)w * S + t0c + 1);
            }
        }
        if (progress) progress(user, w0 + nw, windows);
    }
    free(X);
    free(logits);
    if (st) return st;
    spqr_ppl_fill(res, nll, windows, S, n_ids, spqr_now() - t0);
    return SPQR_OK;
}

spqr_status spqr_eval_perplexity(spqr_model *m, const char *text, size_t len, int seqlen, spqr_ppl_result *res) {
    if (!m || !text || !res) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_eval_perplexity: bad arguments");
    if (seqlen < 2) return spqr_fail(SPQR_ERR_INVALID_ARG, "seqlen %d is too small (need at least 2)", seqlen);
    if (seqlen > m->cfg.max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "seqlen %d is longer than the model's context of %d tokens", seqlen,
                         m->cfg.max_seq_len);
    int32_t *ids = NULL;
    size_t n = 0;
    spqr_status st = spqr_eval_tokenize(m, text, len, &ids, &n);
    if (!st) st = spqr_eval_tokens(m, ids, n, seqlen, res, NULL, NULL);
    free(ids);
    return st;
}

spqr_status spqr_eval_perplexity_ids(spqr_model *m, const int32_t *ids, size_t n_ids, int seqlen,
                                     int64_t max_windows, spqr_ppl_result *res, spqr_progress_fn progress,
                                     void *user) {
    if (!m || !ids || !res) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_eval_perplexity_ids: bad arguments");
    if (seqlen < 2) return spqr_fail(SPQR_ERR_INVALID_ARG, "seqlen %d is too small (need at least 2)", seqlen);
    if (seqlen > m->cfg.max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "seqlen %d is longer than the model's context of %d tokens", seqlen,
                         m->cfg.max_seq_len);
    size_t n_eval = n_ids;
    if (max_windows > 0 && n_eval / (size_t)seqlen > (size_t)max_windows) n_eval = (size_t)max_windows * (size_t)seqlen;
    spqr_status st = spqr_eval_tokens(m, ids, n_eval, seqlen, res, progress, user);
    res->tokens_total = (int64_t)n_ids;
    return st;
}
