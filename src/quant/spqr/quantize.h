/* quantize.h - per-layer quantization algorithms (RTN, GPTQ, SpQR). */
#ifndef SPQR_QUANTIZE_H
#define SPQR_QUANTIZE_H

#include "../../formats/spqr/qlayer.h"
#include "../block_tune.h"
#include "../quantizer.h"

typedef enum spqr_qmethod {
    SPQR_METHOD_RTN = 0,
    SPQR_METHOD_GPTQ = 1,
    SPQR_METHOD_SPQR = 2
} spqr_qmethod;

typedef struct spqr_qparams {
    spqr_qmethod method;
    int wbits;             /* 2..8                                            */
    int beta1;             /* group size; 0 = one group per row (per-channel) */
    int beta2;             /* stat row-block size; 0 = fp16 stats             */
    int sbits, zbits;      /* bits for scale / zero codes when beta2 > 0      */
    int statq;             /* quantizer of the bilevel statistics (spqr_statq:
                              minmax, uniform, kmeans; qlayer.h)               */
    double tau;            /* outlier relative threshold; <= 0 = no outliers  */
    int simplified_outliers; /* 1: no leave-one-out stat fitting             */
    int act_order;         /* 1: permute columns by descending diag(H)       */
    double percdamp;       /* dampening, fraction of mean diag(H) (0.01)     */
    int blocksize;         /* GPTQ lazy-batch block (128)                    */
    int tune;              /* --tune none|block: retrain the 16-bit values of
                              each block (statistics, outliers, norms)        */
    spqr_btune_params bt;  /* --tune-epochs, --tune-lr, ...                  */
} spqr_qparams;

/* Defaults. SpQR: the paper's near-lossless group sizes and bits (bw=4,
 * bs=bz=3, beta1=beta2=16, tau 0.2), act-order, blocksize 128, and GPTQ's
 * percdamp 0.01 (the authors' README runs this configuration with 1.0; see
 * docs/ALGORITHM.md, D7). GPTQ: 4 bits, g128, fp16 statistics, act-order.
 * RTN: 4 bits, g128, fp16 statistics. */
void spqr_qparams_default(spqr_qparams *p, spqr_qmethod method);

/* Check p for consistency against a layer with `cols` input columns.
 * Fails with SPQR_ERR_INVALID_ARG and a message naming the bad option. */
spqr_status spqr_qparams_validate(const spqr_qparams *p, int cols);

/* Quantize W [rows][cols] (row-major float32, original column order).
 * H [cols][cols] (row-major float64, symmetric) is the input Hessian
 * 2/N X X^T; it is required for GPTQ and SpQR and ignored by RTN (may be
 * NULL). Neither W nor H is modified. On success *out holds a new layer
 * (free with spqr_qlayer_free) and *rep (if non-NULL) its errors. */
spqr_status spqr_quantize_layer(const float *W, int rows, int cols,
                                const double *H, const spqr_qparams *p,
                                spqr_qlayer *out, spqr_qlayer_report *rep);

#endif
