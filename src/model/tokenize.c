/* tokenize.c - the text -> ids step every evaluation and the calibration
 * share: CRLF -> LF, BOS, then the model tokenizer's ids. */
#include <stdlib.h>

#include "../tokenizer/tokenizer.h"
#include "model.h"

static char *crlf_to_lf(const char *text, size_t len, size_t *out_len) {
    char *o = malloc(len + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\r' && i + 1 < len && text[i + 1] == '\n') continue;
        o[k++] = text[i];
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

spqr_status spqr_eval_tokenize(spqr_model *m, const char *text, size_t len, int32_t **ids, size_t *n_ids) {
    if (!m->tok) return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: the model has no tokenizer", m->path);
    if (len == 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "the evaluation text is empty");
    size_t n;
    char *norm = crlf_to_lf(text, len, &n);
    if (!norm) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_status st = spqr_tokenizer_encode(m->tok, norm, n, 1, ids, n_ids);
    free(norm);
    return st;
}

