/* cuda_timing.c - the median time of a GPU operation over copies of its
 * data (cuda_util.h), shared by the CUDA benchmarks. */
#include <stdlib.h>

#include "cuda_util.h"
#include "kernels/cuda/cuda_rt.h"
#include "util/common.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

spqr_status spqr_bench_median_us(spqr_bench_timer *t, int reps, int ncopies, void (*fn)(void *ctx, int k),
                                 void *ctx, double *us) {
    *us = 0;
    if (reps < 1 || ncopies < 1) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_bench_median_us: bad counts");
    for (int w = 0; w < 3; w++)
        for (int k = 0; k < ncopies; k++) fn(ctx, k);
    spqr_status st = spqr_cuda_synchronize();
    double *s = malloc(sizeof(double) * (size_t)reps);
    if (!s) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    for (int i = 0; i < reps && !st; i++) {
        float ms = 0;
        st = spqr_bench_timer_start(t);
        for (int k = 0; k < ncopies && !st; k++) fn(ctx, k);
        if (!st) st = spqr_bench_timer_stop(t, &ms);
        s[i] = 1000.0 * ms / ncopies;
    }
    if (!st) {
        qsort(s, (size_t)reps, sizeof *s, cmp_double);
        *us = s[reps / 2];
    }
    free(s);
    return st;
}
