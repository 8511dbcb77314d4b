/* block_tune.c - the tune_block hook body shared by the methods
 * (block_tune.h). */
#include "block_tune.h"

#include <stdio.h>

static void on_epoch(void *user, int epoch, int epochs, double loss, double elapsed, double eta) {
    const spqr_block_ctx *ctx = user;
    if (!ctx->say) return;
    char buf[160];
    if (epoch == 0)
        snprintf(buf, sizeof buf, "block tuning: start loss %.4g, %d epochs", loss, epochs);
    else
        snprintf(buf, sizeof buf, "block tuning: epoch %d/%d  train loss %.4g  %.0fs  ETA %.0fs", epoch, epochs, loss,
                 elapsed, eta);
    ctx->say(ctx->pipe, 0, buf);
}

spqr_status spqr_btune_run(const spqr_btune_params *bp, spqr_block_ctx *ctx) {
    spqr_tune_opts o;
    spqr_tune_opts_default(&o);
    o.epochs = bp->epochs;
    o.lr = bp->lr;
    o.wd = bp->wd;
    o.schedule = bp->schedule ? SPQR_LR_COSINE : SPQR_LR_CONSTANT;
    o.batch = bp->batch;
    o.train_norms = bp->norms;
    o.seed = ctx->seed;
    o.gpu = bp->device == 1;
    o.progress = on_epoch;
    o.user = ctx;
    spqr_tune_report rep;
    spqr_status st = spqr_tune_block(ctx->m, ctx->layer, ctx->X_in, ctx->Y_ref, ctx->nseq, ctx->seqlen, &o, &rep);
    if (st) return st;
    ctx->tuned = 1;
    ctx->kept = rep.kept;
    ctx->tune_seconds = rep.seconds;
    ctx->loss_before = rep.loss_start;
    ctx->loss_after = rep.loss_end;
    if (ctx->say) {
        char buf[200];
        if (rep.kept)
            snprintf(buf, sizeof buf, "block tuning: loss %.4g -> %.4g (%.1f%%), %lld parameters, %.1fs",
                     rep.loss_start, rep.loss_end, 100.0 * (rep.loss_end / rep.loss_start - 1.0),
                     (long long)rep.n_params, rep.seconds);
        else
            snprintf(buf, sizeof buf,
                     "block tuning: loss %.4g -> %.4g did not improve; kept the untuned parameters", rep.loss_start,
                     rep.loss_end);
        ctx->say(ctx->pipe, 1, buf);
    }
    return SPQR_OK;
}

bool spqr_btune_provenance(const spqr_btune_params *bp, cJSON *o) {
    return cJSON_AddNumberToObject(o, "tune_epochs", bp->epochs) && cJSON_AddNumberToObject(o, "tune_lr", bp->lr) &&
           cJSON_AddNumberToObject(o, "tune_wd", bp->wd) &&
           cJSON_AddStringToObject(o, "tune_schedule", bp->schedule ? "cosine" : "constant") &&
           cJSON_AddNumberToObject(o, "tune_batch", bp->batch) &&
           cJSON_AddBoolToObject(o, "tune_norms", bp->norms != 0) &&
           cJSON_AddStringToObject(o, "tune_device", bp->device ? "gpu" : "cpu");
}
