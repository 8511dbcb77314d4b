/* block_tune.h - the block-tuning options a method shares (--tune-epochs,
 * --tune-lr, ...) and the tune_block hook body that runs the tuner
 * (train/tune.h) on a block of the calibration pipeline. */
#ifndef SPQR_BLOCK_TUNE_H
#define SPQR_BLOCK_TUNE_H

#include <stddef.h>

#include "../train/tune.h"
#include "quantizer.h"

typedef struct spqr_btune_params {
    int epochs;    /* --tune-epochs                              */
    double lr, wd; /* --tune-lr, --tune-wd                       */
    int schedule;  /* --tune-schedule constant|cosine            */
    int batch;     /* --tune-batch: windows per optimizer step   */
    int norms;     /* --tune-norms yes|no: retrain the RMSNorms   */
    int device;    /* --tune-device cpu|gpu                      */
} spqr_btune_params;

/* Option table entries of a params struct `type` holding a
 * spqr_btune_params at member `field`; the help strings give the defaults. */
#define SPQR_BTUNE_OPTIONS(type, field, epochs_help, lr_help, wd_help, norms_help)                                   \
    {"tune-epochs", SPQR_QOPT_INT, offsetof(type, field.epochs), 0, 100000, NULL, epochs_help, NULL},               \
        {"tune-lr", SPQR_QOPT_DOUBLE, offsetof(type, field.lr), 0, 10, NULL, lr_help, NULL},                         \
        {"tune-wd", SPQR_QOPT_DOUBLE, offsetof(type, field.wd), 0, 100, NULL, wd_help, NULL},                        \
        {"tune-schedule", SPQR_QOPT_CHOICE, offsetof(type, field.schedule), 0, 0, "constant|cosine",                 \
         "block tuning learning-rate schedule (constant)", NULL},                                                    \
        {"tune-batch", SPQR_QOPT_INT, offsetof(type, field.batch), 1, 1 << 20, NULL,                                 \
         "block tuning: calibration windows per optimizer step (1)", NULL},                                           \
        {"tune-norms", SPQR_QOPT_CHOICE, offsetof(type, field.norms), 0, 0, "no|yes", norms_help, NULL},             \
        {"tune-device", SPQR_QOPT_CHOICE, offsetof(type, field.device), 0, 0, "cpu|gpu",                             \
         "block tuning: forward/backward on the cpu or a CUDA gpu (cpu)", NULL}

/* Run the tuner on ctx's block with these options (the hook body). */
spqr_status spqr_btune_run(const spqr_btune_params *bp, spqr_block_ctx *ctx);
/* The options as provenance keys (tune_epochs, tune_lr, ...). */
bool spqr_btune_provenance(const spqr_btune_params *bp, cJSON *o);

#endif
