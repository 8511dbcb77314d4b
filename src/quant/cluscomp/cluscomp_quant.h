/* cluscomp_quant.h - internals of the ClusComp quantization method
 * (quant/cluscomp): parameters and the layer-wise codebook tuning. */
#ifndef SPQR_CLUSCOMP_QUANT_H
#define SPQR_CLUSCOMP_QUANT_H

#include "../../util/common.h"
#include "../block_tune.h"
#include "cluster.h"

/* --tune: none; layer (tune_layer.c); block (the block tuner, train/tune.h,
 * from the clustered codebooks, as the authors); layer+block (the block
 * tuner from the layer-tuned codebooks) */
typedef enum {
    SPQR_CC_TUNE_NONE = 0,
    SPQR_CC_TUNE_LAYER = 1,
    SPQR_CC_TUNE_BLOCK = 2,
    SPQR_CC_TUNE_LAYER_BLOCK = 3
} spqr_cc_tune;

typedef struct spqr_cc_params {
    int d;          /* --cluster-dim: sub-vector length along the output dim */
    int n;          /* --clusters: codebook entries per matrix              */
    int algo;       /* --cluster-algo: spqr_cluster_algo                    */
    int init;       /* --cluster-init: spqr_cluster_init                    */
    int iters;      /* --cluster-iters: Lloyd / EM iterations               */
    int tune;       /* --tune: spqr_cc_tune                                 */
    int tune_iters; /* --tune-iters: conjugate-gradient steps of layer tuning */
    spqr_btune_params bt; /* --tune-epochs, --tune-lr, ... of block tuning   */
} spqr_cc_params;

typedef struct spqr_cc_tune_report {
    double f_before, f_after; /* tr(E H E^T) with the fp16 codebook before/after */
    int iters;
} spqr_cc_tune_report;

/* Layer-wise tuning (tune_layer.c): minimise tr((What - W) H (What - W)^T)
 * over the codebook C [n][d] (float32, updated in place; the result is
 * representable in fp16) with the indices idx [ceil(rows/d)][cols] fixed;
 * at most `iters` preconditioned CG steps. Never returns a codebook whose
 * fp16 objective is worse than the input's. */
spqr_status spqr_cc_tune_layer(const float *W, int rows, int cols, const double *H, int d, int n,
                               const uint32_t *idx, int iters, float *C, spqr_cc_tune_report *rep);

/* err = tr((Q - W) H (Q - W)^T) and ref = tr(W H W^T) of two [rows][cols]
 * matrices (the layer's output error and output energy on the calibration
 * inputs). */
spqr_status spqr_cc_hessian_err(const float *W, const float *Q, int rows, int cols, const double *H, double *err,
                                double *ref);

#endif
