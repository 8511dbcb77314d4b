/* methods.c - RTN, GPTQ and SpQR as registered quantization methods: their
 * options, defaults, and the layer step (quantize.c's engine, then the
 * packed SpQR format of formats/spqr). All three share spqr_qparams and
 * write the "spqr" format (RTN and GPTQ with fp16 or bilevel statistics and
 * no outliers). */
#include <stddef.h>
#include <stdlib.h>

#include "../../formats/spqr/packed.h"
#include "../quantizer.h"
#include "quant_internal.h"

extern const spqr_qformat spqr_qformat_spqr;

#define QP(f) offsetof(spqr_qparams, f)

static spqr_status set_stat_bits(void *p, double v) {
    spqr_qparams *q = p;
    q->sbits = q->zbits = (int)v;
    return SPQR_OK;
}
static spqr_status set_perm(void *p, double v) { /* 0 = act-order, 1 = identity */
    spqr_qparams *q = p;
    q->act_order = q->method != SPQR_METHOD_RTN && v == 0;
    return SPQR_OK;
}
static spqr_status set_tau_spqr(void *p, double v) {
    ((spqr_qparams *)p)->tau = v;
    return SPQR_OK;
}
static spqr_status set_tau_other(void *p, double v) {
    (void)p;
    if (v > 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "--outlier-threshold needs --method spqr");
    return SPQR_OK;
}

#define COMMON_OPTIONS(group_default, b2_default)                                                                    \
    {"bits", SPQR_QOPT_INT, QP(wbits), 2, 8, NULL, "weight bits 2..8 (4)", NULL},                                    \
        {"group-size", SPQR_QOPT_INT, QP(beta1), 0, 1 << 30, NULL,                                                   \
         "first-level group size beta1 (" group_default "; 0 = one group per row)", NULL},                           \
        {"stat-bits", SPQR_QOPT_INT, 0, 1, 8, NULL, "bits of the quantized scales/zeros (3)", set_stat_bits},        \
        {"stat-group-size", SPQR_QOPT_INT, QP(beta2), 0, 1 << 30, NULL,                                              \
         "second-level group beta2 (" b2_default "; 0 = fp16 statistics)", NULL},                                    \
        {"stat-quantizer", SPQR_QOPT_CHOICE, QP(statq), 0, 0, "minmax|uniform|kmeans",                               \
         "quantizer of the bilevel statistics: minmax (asymmetric per beta2 block), uniform (symmetric absmax per "  \
         "block, mid-point zero) or kmeans (Lloyd codebook per layer) (minmax)", NULL},                              \
        {"perm", SPQR_QOPT_CHOICE, 0, 0, 0, "act-order|identity", "column order: act-order or identity (act-order; rtn always identity)",        \
         set_perm},                                                                                                  \
        {"percdamp", SPQR_QOPT_DOUBLE, QP(percdamp), 0, 1, NULL, "Hessian dampening, fraction of mean diag (0.01)", \
         NULL},                                                                                                      \
        {"tune", SPQR_QOPT_CHOICE, QP(tune), 0, 0, "none|block",                                                     \
         "block tuning of the 16-bit values (statistics, outliers, RMSNorms), codes fixed: none or block (none)",    \
         NULL},                                                                                                      \
        SPQR_BTUNE_OPTIONS(spqr_qparams, bt, "block tuning: epochs over the calibration windows (20)",              \
                           "block tuning: AdamW learning rate, relative to each value's magnitude (3e-3)",          \
                           "block tuning: AdamW weight decay (0)",                                                  \
                           "block tuning: also retrain the blocks' RMSNorm weights (yes)")

static const spqr_qopt k_opts_spqr[] = {
    COMMON_OPTIONS("16", "16"),
    {"outlier-threshold", SPQR_QOPT_DOUBLE, 0, 0, 1e30, NULL, "outlier threshold tau (0.2; 0 = no outliers)",
     set_tau_spqr},
    {"simplified-outliers", SPQR_QOPT_FLAG, QP(simplified_outliers), 0, 1, NULL,
     "skip the leave-one-out statistics fitting", NULL},
};
static const spqr_qopt k_opts_other[] = {
    COMMON_OPTIONS("128", "0"),
    {"outlier-threshold", SPQR_QOPT_DOUBLE, 0, 0, 1e30, NULL, "only 0 (outliers need --method spqr)", set_tau_other},
    {"simplified-outliers", SPQR_QOPT_FLAG, QP(simplified_outliers), 0, 1, NULL, "no effect without outliers", NULL},
};

static void def_rtn(void *p) { spqr_qparams_default(p, SPQR_METHOD_RTN); }
static void def_gptq(void *p) { spqr_qparams_default(p, SPQR_METHOD_GPTQ); }
static void def_spqr(void *p) { spqr_qparams_default(p, SPQR_METHOD_SPQR); }

static spqr_status validate(const void *p, int rows, int cols) {
    (void)rows;
    return spqr_qparams_validate(p, cols);
}

static unsigned needs_of(const void *params) {
    const spqr_qparams *q = params;
    return (q->method == SPQR_METHOD_RTN ? 0u : (unsigned)SPQR_QNEED_HESSIAN) | (q->tune ? (unsigned)SPQR_QNEED_BLOCK : 0u);
}

static spqr_status tune_block(const void *params, spqr_block_ctx *ctx) {
    const spqr_qparams *q = params;
    return q->tune ? spqr_btune_run(&q->bt, ctx) : SPQR_OK;
}

static spqr_status quantize_layer(const void *params, const float *W, int rows, int cols, const double *H,
                                  const spqr_qlayer_ctx *ctx, const spqr_qformat **fmt, void **payload, float *committed,
                                  spqr_qlayer_report *rep) {
    (void)ctx; /* deterministic: no seed needed */
    spqr_qlayer q;
    memset(&q, 0, sizeof q);
    spqr_status st = spqr_quantize_layer(W, rows, cols, H, params, &q, rep);
    if (st) return st;
    spqr_qlayer_dequantize(&q, committed);
    spqr_packed *pk = calloc(1, sizeof *pk);
    st = pk ? spqr_pack(&q, pk) : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_qlayer_free(&q);
    if (st) {
        free(pk);
        return st;
    }
    *fmt = &spqr_qformat_spqr;
    *payload = pk;
    return SPQR_OK;
}

static spqr_status provenance(const void *params, cJSON *o) {
    const spqr_qparams *q = params;
    const struct {
        const char *k;
        double v;
    } num[] = {{"wbits", q->wbits}, {"beta1", q->beta1}, {"beta2", q->beta2},
               {"sbits", q->sbits}, {"zbits", q->zbits}, {"tau", q->tau}};
    bool ok = true;
    for (size_t i = 0; i < sizeof num / sizeof *num; i++) ok &= cJSON_AddNumberToObject(o, num[i].k, num[i].v) != NULL;
    ok &= cJSON_AddStringToObject(o, "stat_quantizer", spqr_statq_name(q->statq)) != NULL;
    ok &= cJSON_AddBoolToObject(o, "simplified_outliers", q->simplified_outliers) != NULL;
    ok &= cJSON_AddStringToObject(o, "perm", q->act_order ? "act-order" : "identity") != NULL;
    ok &= cJSON_AddNumberToObject(o, "percdamp", q->percdamp) != NULL;
    ok &= cJSON_AddNumberToObject(o, "blocksize", q->blocksize) != NULL;
    ok &= cJSON_AddStringToObject(o, "tune", q->tune ? "block" : "none") != NULL;
    if (q->tune) ok &= spqr_btune_provenance(&q->bt, o);
    return ok ? SPQR_OK : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
}

#define N_OPTS(a) ((int)(sizeof a / sizeof *a))

const spqr_quantizer spqr_quantizer_rtn = {
    .name = "rtn", .summary = "round to nearest on a min-max grid per group (no calibration)",
    .options = k_opts_other, .n_options = N_OPTS(k_opts_other), .params_size = sizeof(spqr_qparams),
    .defaults = def_rtn, .validate = validate, .needs = 0, .quantize_layer = quantize_layer,
    .needs_of = needs_of, .tune_block = tune_block, .provenance = provenance,
};
const spqr_quantizer spqr_quantizer_gptq = {
    .name = "gptq", .summary = "GPTQ: error feedback through the inverse Hessian (Frantar et al. 2023)",
    .options = k_opts_other, .n_options = N_OPTS(k_opts_other), .params_size = sizeof(spqr_qparams),
    .defaults = def_gptq, .validate = validate, .needs = SPQR_QNEED_HESSIAN, .quantize_layer = quantize_layer,
    .needs_of = needs_of, .tune_block = tune_block, .provenance = provenance,
};
const spqr_quantizer spqr_quantizer_spqr = {
    .name = "spqr", .summary = "SpQR: small groups, bilevel 3-bit statistics, fp16 outliers (Dettmers et al. 2024)",
    .options = k_opts_spqr, .n_options = N_OPTS(k_opts_spqr), .params_size = sizeof(spqr_qparams),
    .defaults = def_spqr, .validate = validate, .needs = SPQR_QNEED_HESSIAN, .quantize_layer = quantize_layer,
    .needs_of = needs_of, .tune_block = tune_block, .provenance = provenance,
};
