/* tune.h - block tuning: retrain the continuous parameters of one
 * compressed transformer block so that its output on the compressed stream
 * reproduces the fp block's output on the fp stream (issue 13).
 *
 * Trained: the trainable parameters of every layer whose format has them
 * (qformat.h train_*: ClusComp codebooks, SpQR statistics and outliers), the
 * discrete codes stay fixed; optionally the block's two RMSNorm weight
 * vectors (no weight decay on them). Loss: mean squared error over all
 * tokens and channels. AdamW (adamw.h), `batch` windows per step, windows
 * visited in a seeded random order each epoch.
 *
 * The tuned parameters are kept only if the loss over all calibration
 * windows ends below where it started; otherwise the layers and norms are
 * put back exactly as they were (report.kept = 0).
 */
#ifndef SPQR_TUNE_H
#define SPQR_TUNE_H

#include "adamw.h"
#include "train.h"

typedef struct spqr_tune_opts {
    int epochs;                 /* passes over the windows (20)                 */
    double lr, wd;              /* AdamW learning rate and weight decay         */
    spqr_lr_schedule schedule;  /* constant or cosine over all steps            */
    int batch;                  /* windows per step (1)                         */
    int train_layers;           /* retrain the layers' format parameters        */
    int train_norms;            /* retrain the RMSNorm weights                  */
    double norm_lr;             /* learning rate of the norms (0: lr)           */
    uint64_t seed;              /* window order                                 */
    int gpu;                    /* run forward/backward on the GPU (train/cuda) */
    /* optional: called after each epoch with the mean training loss of that
     * epoch (and with epoch 0 before training, loss = the starting loss) */
    void (*progress)(void *user, int epoch, int epochs, double loss, double elapsed, double eta);
    void *user;
} spqr_tune_opts;

void spqr_tune_opts_default(spqr_tune_opts *o);

typedef struct spqr_tune_report {
    double loss_start, loss_end; /* MSE over all windows before / after     */
    int kept;                    /* 1: tuned values kept; 0: put back        */
    int64_t steps, n_params;     /* optimizer steps, trained parameters      */
    double seconds;
    size_t work_bytes;           /* memory the tuner allocated (weights,
                                    gradients, optimizer, tape, batch)      */
    size_t gpu_bytes;            /* device memory of the GPU path, else 0   */
} spqr_tune_report;

/* Tune block `layer` of m in place. X_in, Y_ref: [nseq*seqlen][dim]. */
spqr_status spqr_tune_block(spqr_model *m, int layer, const float *X_in, const float *Y_ref, int nseq, int seqlen,
                            const spqr_tune_opts *o, spqr_tune_report *rep);

#endif
