/* adamw.c - AdamW and the learning-rate schedules (adamw.h). */
#include "adamw.h"

#include <math.h>
#include <stdlib.h>

spqr_status spqr_adamw_init(spqr_adamw *o, size_t n, double wd) {
    memset(o, 0, sizeof *o);
    o->n = n;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->wd = wd;
    if (n == 0) return SPQR_OK;
    o->m = spqr_calloc_array(n, sizeof(float));
    o->v = spqr_calloc_array(n, sizeof(float));
    if (!o->m || !o->v) {
        spqr_adamw_free(o);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for optimizer state (%zu parameters)", n);
    }
    return SPQR_OK;
}

void spqr_adamw_free(spqr_adamw *o) {
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
    o->n = 0;
}

void spqr_adamw_step(spqr_adamw *o, float *theta, const float *g, double lr, const float *scale) {
    o->t++;
    const double c1 = 1.0 - pow(o->beta1, (double)o->t), c2 = 1.0 - pow(o->beta2, (double)o->t);
    const float b1 = (float)o->beta1, b2 = (float)o->beta2;
    const float decay = (float)(1.0 - lr * o->wd), step = (float)(lr / c1), rc2 = (float)(1.0 / sqrt(c2));
    const float eps = (float)o->eps;
    float *m = o->m, *v = o->v;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (o->n > 65536)
    for (size_t i = 0; i < o->n; i++) {
        float gi = g[i];
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        float d = step * m[i] / (sqrtf(v[i]) * rc2 + eps);
        theta[i] = theta[i] * decay - (scale ? scale[i] * d : d);
    }
}

double spqr_lr_at(spqr_lr_schedule s, double lr, int64_t t, int64_t total) {
    if (s == SPQR_LR_CONSTANT || total <= 0) return lr;
    return lr * 0.5 * (1.0 + cos(M_PI * (double)t / (double)total));
}
