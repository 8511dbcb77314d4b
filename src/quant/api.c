/* api.c - the public quantization API (include/spqr.h): method listing,
 * configurations (method options + calibration options), spqr_quantize. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "pipeline.h"

struct spqr_quant_config {
    const spqr_quantizer *method;
    void *params;
    char *calib;
    spqr_quant_opts o;
};

int spqr_quantizer_method_count(void) { return spqr_quantizer_count(); }

const char *spqr_quantizer_method_name(int i) {
    const spqr_quantizer *q = spqr_quantizer_at(i);
    return q ? q->name : NULL;
}

const char *spqr_quantizer_method_summary(int i) {
    const spqr_quantizer *q = spqr_quantizer_at(i);
    return q ? q->summary : NULL;
}

int spqr_quantizer_method_option_count(int i) {
    const spqr_quantizer *q = spqr_quantizer_at(i);
    return q ? q->n_options : 0;
}

spqr_status spqr_quantizer_method_option(int i, int j, const char **name, const char **help, int *takes_value) {
    const spqr_quantizer *q = spqr_quantizer_at(i);
    if (!q || j < 0 || j >= q->n_options) return spqr_fail(SPQR_ERR_INVALID_ARG, "no option %d of method %d", j, i);
    if (name) *name = q->options[j].name;
    if (help) *help = q->options[j].help;
    if (takes_value) *takes_value = q->options[j].kind != SPQR_QOPT_FLAG;
    return SPQR_OK;
}

spqr_status spqr_quant_config_new(const char *method, spqr_quant_config **out) {
    *out = NULL;
    const spqr_quantizer *q = spqr_quantizer_find(method);
    if (!q) {
        char names[256] = "";
        for (int i = 0; i < spqr_quantizer_count(); i++) {
            size_t n = strlen(names);
            snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", spqr_quantizer_at(i)->name);
        }
        return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown method '%s' (%s)", method ? method : "", names);
    }
    spqr_quant_config *c = calloc(1, sizeof *c);
    void *params = calloc(1, q->params_size);
    if (!c || !params) {
        free(c);
        free(params);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    c->method = q;
    c->params = params;
    q->defaults(params);
    spqr_quant_opts_default(&c->o);
    c->o.method = q;
    c->o.params = params;
    *out = c;
    return SPQR_OK;
}

void spqr_quant_config_free(spqr_quant_config *c) {
    if (!c) return;
    free(c->params);
    free(c->calib);
    free(c);
}

static const char *const k_calib_opts[] = {"calib", "nsamples", "seqlen", "seed"};

int spqr_quant_config_takes_value(const spqr_quant_config *c, const char *name) {
    if (!c || !name) return -1;
    for (size_t i = 0; i < sizeof k_calib_opts / sizeof *k_calib_opts; i++)
        if (!strcmp(name, k_calib_opts[i])) return 1;
    const spqr_qopt *o = spqr_qopt_find(c->method, name);
    return o ? o->kind != SPQR_QOPT_FLAG : -1;
}

static bool parse_int(const char *s, long long lo, long long hi, long long *out) {
    if (!s || !*s) return false;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (*end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

spqr_status spqr_quant_config_set(spqr_quant_config *c, const char *name, const char *value) {
    if (!c || !name) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_quant_config_set: bad arguments");
    long long v = 0;
    if (!strcmp(name, "calib")) {
        char *d = value ? strdup(value) : NULL;
        if (!d) return spqr_fail(SPQR_ERR_INVALID_ARG, "--calib needs a file");
        free(c->calib);
        c->calib = d;
        c->o.calib_path = d;
        return SPQR_OK;
    }
    if (!strcmp(name, "nsamples")) {
        if (!parse_int(value, 1, 1 << 24, &v)) return spqr_fail(SPQR_ERR_INVALID_ARG, "bad value '%s' for --nsamples", value ? value : "");
        c->o.nsamples = (int)v;
        return SPQR_OK;
    }
    if (!strcmp(name, "seqlen")) {
        if (!parse_int(value, 2, 1 << 24, &v)) return spqr_fail(SPQR_ERR_INVALID_ARG, "bad value '%s' for --seqlen", value ? value : "");
        c->o.seqlen = (int)v;
        return SPQR_OK;
    }
    if (!strcmp(name, "seed")) {
        if (!parse_int(value, 0, 0x7fffffffffffffffLL, &v)) return spqr_fail(SPQR_ERR_INVALID_ARG, "bad value '%s' for --seed", value ? value : "");
        c->o.seed = (uint64_t)v;
        return SPQR_OK;
    }
    return spqr_qopt_set(c->method, c->params, name, value);
}

void spqr_quant_config_set_progress(spqr_quant_config *c, spqr_quant_progress_fn fn, void *user) {
    c->o.progress = fn;
    c->o.user = user;
}

spqr_status spqr_quant_config_describe(const spqr_quant_config *c, char **json) {
    *json = NULL;
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "method", c->method->name);
    if (ok && c->method->provenance(c->params, o) != SPQR_OK) ok = false;
    ok = ok && cJSON_AddStringToObject(o, "calib", c->o.calib_path ? c->o.calib_path : "") &&
         cJSON_AddNumberToObject(o, "nsamples", c->o.nsamples) && cJSON_AddNumberToObject(o, "seqlen", c->o.seqlen) &&
         cJSON_AddNumberToObject(o, "seed", (double)c->o.seed);
    char *txt = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!txt) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    *json = txt;
    return SPQR_OK;
}

spqr_status spqr_quantize(spqr_model *m, const spqr_quant_config *c, const char *out_path, spqr_quant_summary *sum) {
    if (!m || !c || !sum) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_quantize: bad arguments");
    spqr_quant_opts o = c->o;
    o.out_path = out_path;
    return spqr_quantize_model(m, &o, sum);
}
