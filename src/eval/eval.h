/* eval.h - internal evaluation entry points (the public one is
 * spqr_eval_perplexity in spqr.h). */
#ifndef SPQR_EVAL_H
#define SPQR_EVAL_H

#include "../model/model.h"

/* Perplexity over already-tokenized ids (ids[0] = BOS), windows of S.
 * progress (optional) is called after each batch with (done, total) windows. */
spqr_status spqr_eval_tokens(spqr_model *m, const int32_t *ids, size_t n_ids, int S, spqr_ppl_result *res,
                             void (*progress)(void *, int64_t, int64_t), void *user);

#endif
