/* registry.c - the quantization methods this build knows (one line per
 * method module) plus those registered at run time, and the option parsing
 * every method shares. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quantizer.h"

extern const spqr_quantizer spqr_quantizer_rtn, spqr_quantizer_gptq, spqr_quantizer_spqr, spqr_quantizer_cluscomp;

static const spqr_quantizer *const k_builtin[] = {
    &spqr_quantizer_rtn,  /* quant/spqr */
    &spqr_quantizer_gptq, /* quant/spqr */
    &spqr_quantizer_spqr, /* quant/spqr */
    &spqr_quantizer_cluscomp, /* quant/cluscomp */
};
#define N_BUILTIN ((int)(sizeof k_builtin / sizeof *k_builtin))
#define MAX_EXTRA 32

static const spqr_quantizer *g_extra[MAX_EXTRA];
static int g_n_extra;

int spqr_quantizer_count(void) { return N_BUILTIN + g_n_extra; }

const spqr_quantizer *spqr_quantizer_at(int i) {
    if (i < 0 || i >= spqr_quantizer_count()) return NULL;
    return i < N_BUILTIN ? k_builtin[i] : g_extra[i - N_BUILTIN];
}

const spqr_quantizer *spqr_quantizer_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < spqr_quantizer_count(); i++)
        if (!strcmp(spqr_quantizer_at(i)->name, name)) return spqr_quantizer_at(i);
    return NULL;
}

spqr_status spqr_quantizer_register(const spqr_quantizer *q) {
    if (!q || !q->name || !*q->name || !q->defaults || !q->validate || !q->quantize_layer || !q->provenance ||
        q->params_size == 0 || (q->n_options > 0 && !q->options))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_quantizer_register: a method needs a name and every required "
                                               "function");
    if (spqr_quantizer_find(q->name))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "method '%s' is already registered", q->name);
    if (g_n_extra == MAX_EXTRA) return spqr_fail(SPQR_ERR_NOMEM, "too many registered methods");
    g_extra[g_n_extra++] = q;
    return SPQR_OK;
}

unsigned spqr_quantizer_needs(const spqr_quantizer *q, const void *params) {
    if (q->needs_of) return q->needs_of(params);
    return q->needs | (q->tune_block ? (unsigned)SPQR_QNEED_BLOCK : 0u);
}

const spqr_qopt *spqr_qopt_find(const spqr_quantizer *q, const char *name) {
    for (int i = 0; i < q->n_options; i++)
        if (!strcmp(q->options[i].name, name)) return &q->options[i];
    return NULL;
}

static bool parse_double(const char *s, double *out) {
    if (!s || !*s) return false;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

static int choice_index(const char *choices, const char *v) {
    size_t n = strlen(v);
    int idx = 0;
    for (const char *c = choices; *c; idx++) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && !strncmp(c, v, n)) return idx;
        if (!bar) break;
        c = bar + 1;
    }
    return -1;
}

spqr_status spqr_qopt_set(const spqr_quantizer *q, void *params, const char *name, const char *value) {
    const spqr_qopt *o = spqr_qopt_find(q, name);
    if (!o) return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown option --%s for method %s", name, q->name);
    double v = 1;
    switch (o->kind) {
    case SPQR_QOPT_FLAG: break;
    case SPQR_QOPT_CHOICE:
        v = value ? choice_index(o->choices, value) : -1;
        if (v < 0)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown --%s '%s' (%s)", name, value ? value : "", o->choices);
        break;
    case SPQR_QOPT_INT:
    case SPQR_QOPT_DOUBLE:
        if (!parse_double(value, &v) || (o->kind == SPQR_QOPT_INT && v != floor(v)))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "bad value '%s' for --%s", value ? value : "", name);
        if (v < o->lo || v > o->hi)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "--%s %s is outside %g..%g", name, value, o->lo, o->hi);
        break;
    }
    if (o->set) return o->set(params, v);
    char *field = (char *)params + o->offset;
    if (o->kind == SPQR_QOPT_DOUBLE) memcpy(field, &v, sizeof v);
    else {
        int iv = (int)v;
        memcpy(field, &iv, sizeof iv);
    }
    return SPQR_OK;
}
