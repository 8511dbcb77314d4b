/* cuda_util.h - GPU helpers for the benchmarks and the CUDA tests (not part
 * of the library): random device data, event timers, the copy-bandwidth
 * probe. cuda_util.cu with nvcc, cuda_util_stub.c otherwise (every call
 * fails with SPQR_ERR_NO_DEVICE). */
#ifndef SPQR_BENCH_CUDA_UTIL_H
#define SPQR_BENCH_CUDA_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "spqr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fill n float32 values with a deterministic pseudo-random normal(0,1)
 * sequence (seeded) on the device. */
spqr_status spqr_bench_fill_normal(float *dptr, size_t n, uint64_t seed);

/* Event timer on the default stream. */
typedef struct spqr_bench_timer spqr_bench_timer;
spqr_status spqr_bench_timer_new(spqr_bench_timer **t);
void spqr_bench_timer_free(spqr_bench_timer *t);
spqr_status spqr_bench_timer_start(spqr_bench_timer *t);
/* Records the stop event, waits for it, returns elapsed milliseconds. */
spqr_status spqr_bench_timer_stop(spqr_bench_timer *t, float *ms);

/* Median microseconds per call of fn(ctx, k), k = 0..ncopies-1 (each k a
 * different copy of the data, so caches do not flatter the result): three
 * warm-up passes, then `reps` timed passes over all copies
 * (bench/cuda_timing.c). */
spqr_status spqr_bench_median_us(spqr_bench_timer *t, int reps, int ncopies, void (*fn)(void *ctx, int k),
                                 void *ctx, double *us);

/* Device copy bandwidth in GB/s (bytes read + bytes written per second), the
 * median of reps copies of `bytes` with cudaMemcpy device-to-device and with
 * a 16-byte-per-thread copy kernel. */
spqr_status spqr_bench_copy_bandwidth(size_t bytes, int reps,
                                     double *memcpy_gbs, double *kernel_gbs);

#ifdef __cplusplus
}
#endif
#endif
