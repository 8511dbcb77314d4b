/* pipeline.h - whole-model quantization with any registered method
 * (quantizer.h): calibration data, block-by-block Hessians, true-sequential
 * quantization of every linear layer, the optional block-tuning hook, and
 * streaming the compressed layers into a .spqr file. The public entry point
 * is spqr_quantize() (include/spqr.h, quant/api.c). */
#ifndef SPQR_PIPELINE_H
#define SPQR_PIPELINE_H

#include "../model/model.h"
#include "quantizer.h"

typedef struct spqr_quant_opts {
    const spqr_quantizer *method;
    const void *params;        /* the method's parameters                   */
    const char *calib_path;    /* calibration text                          */
    int nsamples;              /* N windows (128)                           */
    int seqlen;                /* S tokens per window (min(2048, ctx))      */
    uint64_t seed;
    const char *out_path;      /* .spqr output; NULL = keep in memory only  */
    int keep_simulated;        /* leave dequantized f32 weights in m        */
    spqr_quant_progress_fn progress;
    void *user;
} spqr_quant_opts;

void spqr_quant_opts_default(spqr_quant_opts *o);

/* Quantize every linear of every block of m (embeddings, norms and head stay
 * in their stored dtype). With out_path set, writes the .spqr file through a
 * temporary file renamed on success (nothing is left behind on failure). */
spqr_status spqr_quantize_model(spqr_model *m, const spqr_quant_opts *o, spqr_quant_summary *sum);

#endif
