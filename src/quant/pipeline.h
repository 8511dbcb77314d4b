/* pipeline.h - whole-model quantization: calibration data, block-by-block
 * Hessians, true-sequential quantization of every linear layer, streaming
 * the compressed layers into a .spqr file. */
#ifndef SPQR_PIPELINE_H
#define SPQR_PIPELINE_H

#include "../model/model.h"
#include "quantize.h"

typedef struct spqr_layer_done {
    int block, n_blocks;
    const char *name;          /* "q_proj" ...                            */
    int rows, cols;
    spqr_qlayer_report rep;
    double real_bits;          /* bits per weight in the packed file form */
    double seconds;            /* this layer's quantization time          */
    double elapsed, eta;       /* whole run so far / estimated remaining  */
} spqr_layer_done;

typedef struct spqr_quant_opts {
    spqr_qparams qp;
    const char *calib_path;    /* calibration text                        */
    int nsamples;              /* N windows (128)                         */
    int seqlen;                /* S tokens per window (min(2048, ctx))    */
    uint64_t seed;
    const char *out_path;      /* .spqr output; NULL = keep in memory only */
    int keep_simulated;        /* leave dequantized f32 weights in m      */
    void (*on_layer)(void *user, const spqr_layer_done *d);
    void (*on_stage)(void *user, int block, const char *stage);
    void *user;
} spqr_quant_opts;

typedef struct spqr_quant_summary {
    int64_t quantized_params;
    int64_t quantized_bytes;   /* packed bytes of every quantized layer   */
    int64_t n_outliers;
    double avg_bits_formula;   /* paper formula, parameter-weighted       */
    double avg_bits_real;      /* 8 * quantized_bytes / quantized_params  */
    double outlier_share;
    double seconds;
    double calib_tokens;
} spqr_quant_summary;

void spqr_quant_opts_default(spqr_quant_opts *o);

/* Quantize every linear of every block of m (embeddings, norms and head stay
 * in their stored dtype). With out_path set, writes the .spqr file through a
 * temporary file renamed on success (nothing is left behind on failure). */
spqr_status spqr_quantize_model(spqr_model *m, const spqr_quant_opts *o, spqr_quant_summary *sum);

#endif
