/* cluster.h - clustering of short vectors for codebook quantization
 * (ClusComp): k-means (random or k-means++ seeding), a scalable hierarchical
 * method and diagonal-covariance Gaussian mixtures, all producing exactly k
 * codewords and a hard assignment of every point.
 *
 * Points X [N][d] float32 (N up to ~1e8 on 70B layers, d <= 64), k <= N.
 * Nearest-codeword search uses ||x||^2 - 2 x.c + ||c||^2 in tiles (sgemm),
 * multithreaded with OpenMP; memory beyond X, C and assign is bounded
 * (tiles), independent of N*k.
 */
#ifndef SPQR_CLUSTER_H
#define SPQR_CLUSTER_H

#include <stdint.h>

#include "../../util/common.h"

typedef enum spqr_cluster_algo {
    SPQR_CLUSTER_KMEANS = 0,
    SPQR_CLUSTER_HIERARCHICAL = 1,
    SPQR_CLUSTER_GMM = 2
} spqr_cluster_algo;

typedef enum spqr_cluster_init {
    SPQR_CLUSTER_INIT_RANDOM = 0,   /* k distinct random points (the authors') */
    SPQR_CLUSTER_INIT_PLUSPLUS = 1  /* k-means++ (D^2 sampling)                 */
} spqr_cluster_init;

typedef struct spqr_cluster_opts {
    spqr_cluster_algo algo;
    spqr_cluster_init init;
    int iters;          /* Lloyd / EM iterations (ClusComp: 20)                  */
    uint64_t seed;
    const float *weights; /* [N] point weights >= 0, or NULL (all 1)             */
    /* optional trace: objective after each iteration (k-means: weighted SSE;
     * GMM: mean log-likelihood); *trace_len set to the number written */
    double *trace;
    int trace_cap;
    int *trace_len;
} spqr_cluster_opts;

typedef struct spqr_cluster_stats {
    double sse;         /* final sum of (weighted) squared distances to the assigned codeword */
    int iters_run;
    int64_t reseeded;   /* empty clusters re-seeded over the run                 */
    double seconds;
} spqr_cluster_stats;

void spqr_cluster_opts_default(spqr_cluster_opts *o); /* k-means, random init, 20 iters, seed 0 */

/* Cluster X [N][d] into k codewords C [k][d]; assign [N] gets each point's
 * codeword (nearest in L2 for k-means/hierarchical, maximum posterior for
 * GMM). Errors: SPQR_ERR_INVALID_ARG (k > N, k < 1, d out of range, bad
 * options) with a message; SPQR_ERR_NOMEM. stats may be NULL.
 *
 * Per algorithm (details at the top of cluster.c, cluster_hier.c,
 * cluster_gmm.c):
 *   KMEANS: Lloyd; trace[t] = weighted SSE after iteration t + 1 (never
 *     increases); stops early when no point moves (iters_run < iters).
 *   HIERARCHICAL: divisive bisecting k-means (always splits the cluster of
 *     largest SSE), then nearest-codeword assignment; deterministic, the
 *     seed and init are unused; iters bounds each 2-means split
 *     (min(iters, 10)); iters_run = k - 1 splits; trace[s] = total SSE of
 *     the leaves after split s + 1.
 *   GMM: diagonal Gaussians by EM from min(iters, 10) k-means iterations
 *     (init and seed as given); trace[t] = weighted mean log-likelihood after
 *     EM iteration t + 1 (never decreases, up to ~1e-11); C = the means.
 * Point weights are supported by all three. o may be NULL (the defaults).
 * Results depend on the seed and the CPU kernel variant (SIMD rounding),
 * never on the thread count. */
spqr_status spqr_cluster(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, float *C,
                         uint32_t *assign, spqr_cluster_stats *stats);

/* Nearest codeword (L2) of every point; *sse (may be NULL) gets the sum of
 * (weighted, weights may be NULL) squared distances. */
spqr_status spqr_cluster_assign(const float *X, int64_t N, int d, const float *C, int k, const float *weights,
                                uint32_t *assign, double *sse);

#endif
