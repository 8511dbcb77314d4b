/* adamw.h - AdamW (Loshchilov & Hutter) over a flat float32 parameter array,
 * as PyTorch's torch.optim.AdamW computes it:
 *
 *   theta <- theta * (1 - lr * wd)                 (decoupled weight decay)
 *   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
 *   theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 *
 * with a constant or cosine learning-rate schedule (spqr_lr_at). The update
 * is element-wise, so the result does not depend on the thread count.
 */
#ifndef SPQR_ADAMW_H
#define SPQR_ADAMW_H

#include "../util/common.h"

typedef struct spqr_adamw {
    size_t n;
    float *m, *v;             /* first and second moments [n]            */
    double beta1, beta2, eps; /* 0.9, 0.999, 1e-8 (PyTorch's defaults)    */
    double wd;                /* decoupled weight decay                   */
    int64_t t;                /* steps taken                              */
} spqr_adamw;

/* Zeroed moments for n parameters, PyTorch's betas and eps, decay wd. */
spqr_status spqr_adamw_init(spqr_adamw *o, size_t n, double wd);
void spqr_adamw_free(spqr_adamw *o); /* accepts a zeroed struct */
/* One step on theta[n] with gradient g[n] at learning rate lr; with
 * scale != NULL the step of value i is lr * scale[i] * (Adam's direction),
 * i.e. Adam on theta / scale (the decay is unchanged). */
void spqr_adamw_step(spqr_adamw *o, float *theta, const float *g, double lr, const float *scale);

typedef enum spqr_lr_schedule { SPQR_LR_CONSTANT = 0, SPQR_LR_COSINE = 1 } spqr_lr_schedule;
/* Learning rate of step t (0-based) of total: lr, or lr * (1 + cos(pi t / total)) / 2. */
double spqr_lr_at(spqr_lr_schedule s, double lr, int64_t t, int64_t total);

#endif
