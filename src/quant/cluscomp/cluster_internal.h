/* cluster_internal.h - internals shared by the clustering files
 * (cluster.c: options, validation, seeding, k-means, the public entry
 * points; cluster_assign.c: nearest-codeword search; cluster_hier.c:
 * bisecting k-means; cluster_gmm.c: diagonal Gaussian mixtures). Tests and
 * benchmarks may include it; the rest of the library uses cluster.h only.
 *
 * Determinism: every result depends on the data, k, the options and the
 * seed, never on the number of threads. Work is cut into pieces whose
 * boundaries do not depend on the thread count (tiles of CL_TILE points,
 * fixed chunk counts, per-cluster sums taken in point order) and partial
 * sums are combined in a fixed order.
 */
#ifndef SPQR_CLUSTER_INTERNAL_H
#define SPQR_CLUSTER_INTERNAL_H

#include <stdint.h>

#include "cluster.h"

/* ---- nearest-codeword search --------------------------------------------- */

/* How candidates are found (both use ||c||^2 - 2 x.c in float, so both can
 * mis-order near ties; the distance of the chosen codeword is then computed
 * exactly):
 *   SGEMM: cblas_sgemm on tiles of 128 points x 512 codewords, then a SIMD
 *          (or scalar) arg-min scan of the tile;
 *   FUSED: an AVX-512 (16 codewords) or AVX2 (8 codewords) kernel that keeps
 *          8 points' running minima in registers (no distance tile in
 *          memory); needs AVX2+FMA.
 * AUTO picks FUSED when the CPU kernel variant (kernels/cpu/cpu.h,
 * SPQR_KERNEL) is avx2 or avx512 and SGEMM (with a scalar scan) for "ref". */
typedef enum cl_engine { CL_ENGINE_AUTO = 0, CL_ENGINE_SGEMM = 1, CL_ENGINE_FUSED = 2 } cl_engine;

/* Process-wide override (benchmarks, tests). Not thread-safe against
 * concurrent clustering calls. */
void spqr_cluster_engine_force(cl_engine e);
/* "sgemm+avx512", "fused-avx2", ... for the engine the next call uses. */
const char *spqr_cluster_engine_name(void);

#define CL_MAX_D 64  /* largest point dimension                                  */
#define CL_TILE 256 /* points per tile of the assignment pass (fixed: determinism) */

typedef struct cl_pass {
    int64_t changed; /* points whose assignment changed (keep_prev mode)  */
    double sse;      /* sum of w * ||x - C[assign]||^2, exact (double)    */
} cl_pass;

/* One assignment pass: assign[i] = nearest codeword of X[i] (candidate from
 * the engine, distance recomputed exactly in double). With keep_prev, assign
 * holds the previous assignment on entry and a point moves only when its
 * candidate is strictly closer than its previous codeword by the exact
 * distance, so the objective cannot increase through float near-ties. */
spqr_status cl_assign_pass(const float *X, int64_t N, int d, const float *C, int k, const float *w, int keep_prev,
                           uint32_t *assign, cl_pass *res);

/* ---- small shared helpers ------------------------------------------------- */

typedef struct cl_rng {
    uint64_t s[4];
} cl_rng;
void cl_rng_seed(cl_rng *r, uint64_t seed, uint64_t stream);
uint64_t cl_rng_next(cl_rng *r);
double cl_rng_uniform(cl_rng *r);            /* [0, 1) with 53 bits         */
uint64_t cl_rng_below(cl_rng *r, uint64_t n); /* uniform in [0, n), n >= 1  */

/* Exact (double) squared distance between two float vectors. */
static inline double cl_dist2(const float *x, const float *c, int d) {
    double s = 0;
    for (int t = 0; t < d; t++) {
        double e = (double)x[t] - (double)c[t];
        s += e * e;
    }
    return s;
}

/* Lloyd k-means on X with the given number of iterations; the trace pointer
 * may be NULL. Used by spqr_cluster and as the GMM initialisation. */
spqr_status cl_kmeans(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, int iters, double *trace,
                      int trace_cap, int *trace_len, float *C, uint32_t *assign, spqr_cluster_stats *st);
spqr_status cl_hierarchical(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, float *C,
                            uint32_t *assign, spqr_cluster_stats *st);
spqr_status cl_gmm(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, float *C, uint32_t *assign,
                   spqr_cluster_stats *st);

/* Bisecting k-means: Lloyd iterations of each 2-means split. */
extern int64_t cl_hier_parallel_min; /* clusters this large split with parallel passes (tests lower it) */
#define CL_BISECT_ITERS(iters) ((iters) < 10 ? (iters) : 10)
/* GMM: Lloyd iterations of the k-means initialisation. */
#define CL_GMM_KMEANS_ITERS(iters) ((iters) < 10 ? (iters) : 10)

/* k-means++ seeds on at most this many points (a seeded uniform subsample
 * when N is larger): max(2^18, 64 k). */
int64_t cl_plusplus_sample_size(int64_t N, int k);

#endif
