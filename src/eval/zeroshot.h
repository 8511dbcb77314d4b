/* zeroshot.h - internal pieces of zero-shot evaluation, exposed for tests
 * (the public API is in spqr.h). */
#ifndef SPQR_ZEROSHOT_H
#define SPQR_ZEROSHOT_H

#include "../util/common.h"

/* One request encoded as lm-eval encodes it (see zeroshot.c): ctx = the
 * context's ids (after moving its trailing whitespace to the continuation),
 * cont = joint ids without the first n_ctx; prefix_ok = ctx was a prefix of
 * the joint ids. ctx and cont are malloc'd (free()). */
typedef struct spqr_zs_pair {
    int32_t *ctx, *cont;
    int n_ctx, n_cont;
    int prefix_ok;
} spqr_zs_pair;
spqr_status spqr_zs_encode(const spqr_tokenizer *tk, const char *ctx, const char *cont, int add_bos,
                           spqr_zs_pair *out);

/* Task metrics (n, acc, acc_norm, ppl and their standard errors) of the
 * first nd documents from per-request loglikelihoods and greedy flags. */
spqr_status spqr_zs_metrics(const spqr_task *t, int64_t nd, const double *ll, const uint8_t *greedy,
                            spqr_zeroshot_result *res);

#endif
