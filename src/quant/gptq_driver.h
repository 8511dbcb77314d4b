/* gptq_driver.h - the GPTQ error-feedback driver, shared by every method
 * that quantizes a layer column by column (RTN, GPTQ, SpQR, and any new
 * method that plugs in a column step).
 *
 * The driver owns what all such methods share: the Hessian preparation
 * (dead columns, act-order permutation, damping with retries, the upper
 * Cholesky factor U of H^-1), the working copy of the weights (transposed
 * and permuted, Wt[j][r] = W[r][perm[j]], so that a column is contiguous),
 * the column blocks with GPTQ's lazy batch update (one sgemm per block),
 * the row tiles worked on in parallel, and the committed weights.
 *
 * The method supplies the column step: for column j and rows [r0, r1) of
 * one tile it replaces Wt[j][r] by the value it commits to (recording its
 * own codes, statistics, outliers as it likes). With feedback the driver
 * then spreads the scaled error (w - q) / U[j][j] over the rest of the
 * block, exactly as GPTQ does; without feedback (RTN) columns are
 * independent. Inside one tile the step is called for j = b, b+1, .., e-1
 * of the block in order, after the updates of the earlier columns, so a
 * step may look ahead at Wt[k][r0..r1) for k in [j, e) (e.g. to fit a
 * group's statistics on the updated weights).
 */
#ifndef SPQR_GPTQ_DRIVER_H
#define SPQR_GPTQ_DRIVER_H

#include "../util/common.h"

typedef struct spqr_gptq_state {
    int rows, cols;
    const int32_t *perm; /* [cols] permuted column j = original column perm[j] */
    float *Wt;           /* [cols][rows] working weights                        */
    const float *ud;     /* [cols] U[j][j] (1 without feedback)                  */
    const float *hw;     /* [cols] 1 / U[j][j]^2, the Hessian weight of column j */
} spqr_gptq_state;

typedef struct spqr_gptq_ops {
    int feedback;        /* 1: GPTQ (needs H); 0: round to nearest (identity perm) */
    int act_order;       /* permute columns by descending diag(H) (feedback only)  */
    double percdamp;     /* damping, fraction of the mean diagonal of H            */
    int blocksize;       /* columns per lazy batch (feedback only)                 */
    int align;           /* a block never ends inside an align-column run that
                            starts in it (e.g. the group size; 1 = no rule)       */
    int tile_rows;       /* rows per parallel work item                            */
    size_t scratch_floats; /* per-thread scratch handed to column()                */
    /* Optional: called once Wt, perm and the Hessian weights are ready. */
    spqr_status (*prepare)(void *user, const spqr_gptq_state *S);
    /* The column step (see above). tile = r0 / tile_rows. Returns nonzero on
     * failure (out of memory): the driver then fails with SPQR_ERR_NOMEM. */
    int (*column)(void *user, const spqr_gptq_state *S, int j, int tile, int r0, int r1, float *scratch);
} spqr_gptq_ops;

/* Run the driver on W [rows][cols] (float32, original column order) with the
 * Hessian H [cols][cols] (float64; required with feedback, ignored
 * otherwise). perm [cols] receives the column order; committed (optional,
 * [rows][cols], original order) the committed weights. Fails with
 * SPQR_ERR_NUMERIC when H cannot be factored even with damping retries or a
 * committed weight is not finite, SPQR_ERR_NOMEM. */
spqr_status spqr_gptq_run(const float *W, int rows, int cols, const double *H, const spqr_gptq_ops *ops, void *user,
                          int32_t *perm, float *committed);

/* Upper Cholesky factor U of A^-1 (A^-1 = U^T U) for a symmetric positive
 * definite A [n][n] row-major (the full matrix must be present). A is
 * overwritten with U (strictly lower part zeroed). Returns SPQR_OK, or
 * SPQR_ERR_NUMERIC (no message recorded) when A is not positive definite,
 * SPQR_ERR_NOMEM. Blocked by hand so that the result has the same bits on
 * any thread count. */
spqr_status spqr_chol_inverse_upper(double *A, int n);
/* The same through LAPACK's dpotrf + dtrtri (threaded: the bits depend on the
 * thread count); the reference of the blocked version above, which gives
 * the same bits on any thread count. */
spqr_status spqr_chol_inverse_upper_ref(double *A, int n);

#endif
