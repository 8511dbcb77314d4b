/* quantizer.h - the interface every quantization method implements.
 *
 * A method is one of these tables in its own folder under src/quant/ (the
 * RTN/GPTQ/SpQR family lives in quant/spqr/), listed in quant/registry.c or
 * registered at run time (spqr_quantizer_register, as the tests do). The
 * calibration pipeline (pipeline.h) drives any method the same way:
 *  - options: a table of named options ("bits" is --bits on the command
 *    line) that set fields of the method's own parameter struct; the public
 *    API and `spqr quantize --help` list them through the registry;
 *  - what it needs from calibration: SPQR_QNEED_HESSIAN gives each layer its
 *    input Hessian H = 2/N X X^T (the GPTQ driver, gptq_driver.h, turns that
 *    into column steps); a tune_block hook additionally sees, after a block's
 *    layers are quantized, the block's inputs from the compressed earlier
 *    blocks and the fp block's outputs on fp inputs, and may retrain the
 *    continuous parameters of the block's layers;
 *  - quantize_layer: W (float32) -> a layer of some registered format
 *    (format/qformat.h) plus the weights it committed to (what the pipeline
 *    propagates to later layers and blocks).
 */
#ifndef SPQR_QUANTIZER_H
#define SPQR_QUANTIZER_H

#include <cjson/cJSON.h>

#include "../model/model.h"

typedef struct spqr_qlayer_report {
    double weight_rel_err;   /* ||W - Q||_F / ||W||_F                        */
    double hessian_err;      /* tr((W-Q) H (W-Q)^T), 0 when H == NULL        */
    double hessian_rel_err;  /* hessian_err / tr(W H W^T)                    */
    int64_t n_outliers;
    double outlier_share;    /* n_outliers / (rows*cols)                     */
    double formula_bits;     /* bits per weight by the method's formula      */
} spqr_qlayer_report;

typedef enum spqr_qopt_kind {
    SPQR_QOPT_INT,    /* int field, value within [lo, hi]                         */
    SPQR_QOPT_DOUBLE, /* double field, value within [lo, hi]                      */
    SPQR_QOPT_FLAG,   /* int field set to 1, takes no value                       */
    SPQR_QOPT_CHOICE  /* int field = index of the value in choices "a|b|c"        */
} spqr_qopt_kind;

typedef struct spqr_qopt {
    const char *name;     /* without dashes                                       */
    spqr_qopt_kind kind;
    size_t offset;        /* offsetof(params struct, field)                       */
    double lo, hi;
    const char *choices;  /* SPQR_QOPT_CHOICE only                                */
    const char *help;     /* one line, with the default                           */
    /* optional: a custom setter instead of offset/kind (value already parsed
     * as kind says: int/double/index; e.g. one option setting two fields) */
    spqr_status (*set)(void *params, double value);
} spqr_qopt;

enum {
    SPQR_QNEED_HESSIAN = 1, /* quantize_layer gets the layer's input Hessian        */
    SPQR_QNEED_BLOCK = 2    /* tune_block is called (keeps the fp activation stream) */
};

/* Where quantize_layer is called from (the pipeline fills it; tests may pass
 * NULL): the calibration seed and the layer's place in the model, so a
 * randomised method can seed itself per layer reproducibly. */
typedef struct spqr_qlayer_ctx {
    uint64_t seed; /* --seed                                         */
    int block;     /* transformer block                              */
    int which;     /* linear within the block (SPQR_LIN_*)           */
} spqr_qlayer_ctx;

/* What a tune_block hook sees (see above). */
typedef struct spqr_block_ctx {
    spqr_model *m;        /* the block's linears hold their compressed form      */
    int layer;
    const float *X_in;    /* [nseq*seqlen][dim] inputs from the compressed blocks */
    const float *Y_ref;   /* [nseq*seqlen][dim] fp block output on fp inputs      */
    int nseq, seqlen;
    uint64_t seed;        /* --seed                                               */
    /* progress: a transient stage text (note == 0) or a message to keep (1) */
    void (*say)(void *pipe, int note, const char *text);
    void *pipe;
    /* filled by the hook: what block tuning did (quant/block_tune.h) */
    int tuned, kept;
    double tune_seconds, loss_before, loss_after;
} spqr_block_ctx;

typedef struct spqr_quantizer {
    const char *name;     /* --method NAME                                         */
    const char *summary;
    const spqr_qopt *options;
    int n_options;
    size_t params_size;
    void (*defaults)(void *params);
    /* Check the parameters against a rows x cols layer (called for every
     * linear before anything starts); SPQR_ERR_INVALID_ARG with a message. */
    spqr_status (*validate)(const void *params, int rows, int cols);
    unsigned needs;       /* SPQR_QNEED_HESSIAN; SPQR_QNEED_BLOCK is implied by a
                             tune_block hook                                      */
    /* Optional: what these parameters need (SPQR_QNEED_* bits; overrides
     * needs and the tune_block implication), e.g. a Hessian only when a
     * method's tuning option asks for it. */
    unsigned (*needs_of)(const void *params);
    /* Quantize W [rows][cols] (float32, original column order; H [cols][cols]
     * or NULL). On success *fmt / *payload hold the layer (the payload is
     * owned by the caller, release with (*fmt)->free), committed [rows][cols]
     * the weights the layer represents, rep its errors. */
    spqr_status (*quantize_layer)(const void *params, const float *W, int rows, int cols, const double *H,
                                  const spqr_qlayer_ctx *ctx, const spqr_qformat **fmt, void **payload,
                                  float *committed, spqr_qlayer_report *rep);
    /* Optional block-level hook (see above). */
    spqr_status (*tune_block)(const void *params, spqr_block_ctx *ctx);
    /* Add the method's parameters to a provenance JSON object. */
    spqr_status (*provenance)(const void *params, cJSON *obj);
} spqr_quantizer;

/* The SPQR_QNEED_* bits of a method with these parameters. */
unsigned spqr_quantizer_needs(const spqr_quantizer *q, const void *params);

/* ---- registry (quant/registry.c) ------------------------------------------ */
const spqr_quantizer *spqr_quantizer_find(const char *name);
int spqr_quantizer_count(void);
const spqr_quantizer *spqr_quantizer_at(int i);
/* Add a method at run time; SPQR_ERR_INVALID_ARG for a taken name or a
 * missing function. */
spqr_status spqr_quantizer_register(const spqr_quantizer *q);

/* Set option `name` of params from text (the option table's parsing and range
 * check; value is ignored for flags). SPQR_ERR_INVALID_ARG with a message
 * naming the option for an unknown name or a bad value. */
spqr_status spqr_qopt_set(const spqr_quantizer *q, void *params, const char *name, const char *value);
/* The option called name, or NULL. */
const spqr_qopt *spqr_qopt_find(const spqr_quantizer *q, const char *name);

#endif
