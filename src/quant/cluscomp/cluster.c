/* cluster.c - clustering for codebook quantization: options, validation,
 * seeding, Lloyd k-means and the public entry points (cluster.h).
 *
 * k-means (Lloyd), as ClusComp uses it:
 *   C_0 = seeds (RANDOM: k distinct points chosen uniformly by index with
 *         Floyd's algorithm; PLUSPLUS: k-means++ D^2 sampling, weighted by
 *         the point weights, on a seeded uniform subsample of
 *         max(2^18, 64k) points when N is larger; the seeding is k
 *         sequential passes over the sample, O(sample * k * d) and
 *         memory-bound: measured on 2 shared Zen 5 cores 1 s for k = 4096,
 *         d = 4 (about 3 Lloyd iterations at N = 1M) and 15 s for k = 10000,
 *         d = 8 (about 6 at N = 2.1M); a 16k-point sample is 4x cheaper and
 *         ends 1% worse after 20 Lloyd iterations);
 *   a_0 = nearest codewords of C_0;
 *   iteration t = 1..iters: C_t = weighted means of a_{t-1} (empty clusters:
 *         see below), a_t = nearest codewords of C_t, trace[t-1] = SSE(C_t,
 *         a_t); stop early when no point changed cluster and no cluster
 *         was re-seeded (the next iteration would reproduce C_t and a_t).
 * The result is C_t and a_t, so assign is the nearest-codeword assignment of
 * the returned codebook and stats->sse is its exact objective.
 *
 * The objective never increases: the update step cannot increase it (the
 * mean minimises a cluster's SSE; float rounding of the mean aside), and in
 * the assignment step a point leaves its previous codeword only when the
 * candidate is strictly closer by the exact (double) distance
 * (cl_assign_pass with keep_prev), so float near-ties in the fast search
 * cannot raise it either. The SSE sums run in a fixed order, so a sum of
 * smaller terms is never larger.
 *
 * Empty clusters (total weight 0 after the assignment step): each empty
 * centroid moves onto the point farthest (weighted distance) from its
 * centroid in another cluster, taking donor clusters in decreasing order of
 * SSE, one empty cluster per donor per iteration. This splits the worst
 * clusters, and it cannot raise the objective: the next assignment step is
 * free to keep every point where it was, and it moves the donated point to
 * its new centroid at distance zero. Clusters without a donor keep their
 * old centroid and are tried again the next iteration.
 *
 * Determinism: for a given seed the result does not depend on the thread
 * count: seeding runs on one RNG stream with block sums taken in a fixed
 * order, assignment uses fixed tiles, and cluster sums are accumulated per
 * cluster in point order (threads own ranges of clusters, each scanning the
 * whole assignment).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"

void spqr_cluster_opts_default(spqr_cluster_opts *o) {
    memset(o, 0, sizeof *o);
    o->algo = SPQR_CLUSTER_KMEANS;
    o->init = SPQR_CLUSTER_INIT_RANDOM;
    o->iters = 20;
    o->seed = 0;
}

/* ---- random numbers: xoshiro256** seeded by splitmix64 ------------------------- */

void cl_rng_seed(cl_rng *r, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++) r->s[i] = spqr_splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cl_rng_next(cl_rng *r) {
    uint64_t *s = r->s;
    const uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

double cl_rng_uniform(cl_rng *r) { return (double)(cl_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

uint64_t cl_rng_below(cl_rng *r, uint64_t n) { /* Lemire's method, unbiased */
    uint64_t x = cl_rng_next(r);
    __uint128_t m = (__uint128_t)x * n;
    uint64_t l = (uint64_t)m;
    if (l < n) {
        uint64_t thr = -n % n;
        while (l < thr) {
            x = cl_rng_next(r);
            m = (__uint128_t)x * n;
            l = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* ---- validation ------------------------------------------------------------------- */

static spqr_status validate(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, const void *C,
                            const uint32_t *assign) {
    if (!X || !C || !assign) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: NULL %s", !X ? "X" : !C ? "C" : "assign");
    if (N < 1) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: no points (N = %lld)", (long long)N);
    if (N > (int64_t)UINT32_MAX)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: N = %lld points is more than 2^32 - 1", (long long)N);
    if (d < 1 || d > CL_MAX_D)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: dimension d = %d out of range [1, %d]", d, CL_MAX_D);
    if (k < 1 || (int64_t)k > N)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: k = %d out of range [1, N = %lld]", k, (long long)N);
    if (o) {
        if ((int)o->algo < SPQR_CLUSTER_KMEANS || (int)o->algo > SPQR_CLUSTER_GMM)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: unknown algorithm %d", (int)o->algo);
        if ((int)o->init < SPQR_CLUSTER_INIT_RANDOM || (int)o->init > SPQR_CLUSTER_INIT_PLUSPLUS)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: unknown initialisation %d", (int)o->init);
        if (o->iters < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: iters = %d is negative", o->iters);
        if (o->trace_cap < 0)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: trace_cap = %d is negative", o->trace_cap);
    }
    /* non-finite coordinates would poison every sum */
    int64_t bad = -1;
    const int64_t nd = N * d;
#pragma omp parallel for num_threads(spqr_num_threads()) reduction(max : bad) schedule(static)
    for (int64_t i = 0; i < nd; i++)
        if (!isfinite(X[i]) && i / d > bad) bad = i / d;
    if (bad >= 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: point %lld has a non-finite coordinate", (long long)bad);
    const float *w = o ? o->weights : NULL;
    if (w) {
        int64_t badw = -1;
        double tot = 0;
#pragma omp parallel for num_threads(spqr_num_threads()) reduction(max : badw) reduction(+ : tot) schedule(static)
        for (int64_t i = 0; i < N; i++) {
            if (!(w[i] >= 0.0f) || !isfinite(w[i])) {
                if (i > badw) badw = i;
            } else
                tot += w[i];
        }
        if (badw >= 0)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: weight %lld is negative or not finite (%g)",
                             (long long)badw, (double)w[badw]);
        if (!(tot > 0)) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster: the point weights are all zero");
    }
    return SPQR_OK;
}

/* ---- seeding ------------------------------------------------------------------------- */

/* k distinct indices in [0, N), Floyd's algorithm with an open-addressing set. */
static spqr_status seed_random(const float *X, int64_t N, int d, int k, cl_rng *rng, float *C) {
    size_t cap = 16;
    while (cap < (size_t)k * 2) cap <<= 1;
    int64_t *set = spqr_malloc_array(cap, sizeof(int64_t));
    if (!set) return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (seeding %d codewords)", k);
    for (size_t i = 0; i < cap; i++) set[i] = -1;
    int n = 0;
    for (int64_t j = N - k; j < N; j++) {
        int64_t t = (int64_t)cl_rng_below(rng, (uint64_t)j + 1);
        for (int pass = 0; pass < 2; pass++) { /* insert t, or j when t is taken */
            size_t h = (size_t)(((uint64_t)t * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
            int found = 0;
            while (set[h] >= 0) {
                if (set[h] == t) {
                    found = 1;
                    break;
                }
                h = (h + 1) & (cap - 1);
            }
            if (!found) {
                set[h] = t;
                memcpy(C + (size_t)n * d, X + (size_t)t * d, sizeof(float) * d);
                n++;
                break;
            }
            t = j; /* j > every earlier draw's range: never in the set */
        }
    }
    free(set);
    return SPQR_OK;
}

int64_t cl_plusplus_sample_size(int64_t N, int k) {
    int64_t m = (int64_t)64 * k;
    if (m < ((int64_t)1 << 18)) m = (int64_t)1 << 18;
    return m < N ? m : N;
}

#define PP_BLOCK 4096
#define PP_PARALLEL ((int64_t)1 << 23) /* sample floats from which k-means++ steps use threads */

/* D[i] = min(D[i], ||x_i - c||^2) on a block of the transposed sample
 * Xt [d][ld]; returns sum_i w_i D[i]. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static double
pp_update_block(const float *Xt, int64_t ld, int64_t i0, int n, int d, const float *c, const float *w, float *D) {
    float acc[PP_BLOCK];
    for (int i = 0; i < n; i++) acc[i] = 0.0f;
    for (int t = 0; t < d; t++) {
        const float *xt = Xt + (size_t)t * ld + i0;
        const float ct = c[t];
        for (int i = 0; i < n; i++) {
            float e = xt[i] - ct;
            acc[i] += e * e;
        }
    }
    float *Db = D + i0;
    for (int i = 0; i < n; i++) Db[i] = acc[i] < Db[i] ? acc[i] : Db[i];
    double s = 0;
    if (w) {
        const float *wb = w + i0;
        for (int i = 0; i < n; i++) s += (double)wb[i] * Db[i];
    } else
        for (int i = 0; i < n; i++) s += Db[i];
    return s;
}

/* k-means++ (D^2 sampling) on a seeded subsample of the points. */
static spqr_status seed_plusplus(const float *X, int64_t N, int d, int k, const float *w, cl_rng *rng, float *C) {
    const int64_t M = cl_plusplus_sample_size(N, k);
    const int64_t nb = (M + PP_BLOCK - 1) / PP_BLOCK;
    float *Xt = spqr_malloc_array((size_t)M * d, sizeof(float));
    float *D = spqr_malloc_array((size_t)M, sizeof(float));
    float *ws = w ? spqr_malloc_array((size_t)M, sizeof(float)) : NULL;
    uint8_t *chosen = calloc((size_t)M, 1);
    double *bsum = spqr_malloc_array((size_t)nb, sizeof(double));
    spqr_status st = SPQR_OK;
    if (!Xt || !D || (w && !ws) || !chosen || !bsum) {
        st = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (k-means++ on %lld points)", (long long)M);
        goto done;
    }
    /* the sample: selection sampling (Knuth's algorithm S), in index order */
    {
        int64_t got = 0;
        for (int64_t i = 0; i < N && got < M; i++) {
            if (M < N && (double)(N - i) * cl_rng_uniform(rng) >= (double)(M - got)) continue;
            for (int t = 0; t < d; t++) Xt[(size_t)t * M + got] = X[(size_t)i * d + t];
            if (ws) ws[got] = w[i];
            got++;
        }
        if (got != M) { /* cannot happen: algorithm S takes exactly M */
            st = spqr_fail(SPQR_ERR_INTERNAL, "cluster: k-means++ sample took %lld of %lld", (long long)got,
                           (long long)M);
            goto done;
        }
    }
    for (int64_t i = 0; i < M; i++) D[i] = INFINITY;
    /* first seed: proportional to the weight (uniform without weights) */
    int64_t pick = 0;
    if (ws) {
        double tot = 0;
        for (int64_t i = 0; i < M; i++) tot += ws[i];
        if (tot > 0) {
            double r = cl_rng_uniform(rng) * tot, cum = 0;
            pick = -1;
            for (int64_t i = 0; i < M; i++) {
                if (ws[i] <= 0) continue;
                cum += ws[i];
                pick = i;
                if (cum > r) break;
            }
        } else
            pick = (int64_t)cl_rng_below(rng, (uint64_t)M);
    } else
        pick = (int64_t)cl_rng_below(rng, (uint64_t)M);
    const int nth = spqr_num_threads();
    for (int c = 0; c < k; c++) {
        chosen[pick] = 1;
        float *cc = C + (size_t)c * d;
        for (int t = 0; t < d; t++) cc[t] = Xt[(size_t)t * M + pick];
        if (c == k - 1) break;
        /* a step is a short pass (~0.1-1 ms): one parallel region per seed pays
         * only for large samples; on a busy machine the barrier per seed can
         * cost a scheduler tick each (measured: 3x slower on 2 shared cores) */
#pragma omp parallel for num_threads(nth) schedule(dynamic, 4) if (M * d >= PP_PARALLEL)
        for (int64_t b = 0; b < nb; b++) {
            int64_t i0 = b * PP_BLOCK;
            int n = (int)(M - i0 < PP_BLOCK ? M - i0 : PP_BLOCK);
            bsum[b] = pp_update_block(Xt, M, i0, n, d, cc, ws, D);
        }
        double tot = 0;
        for (int64_t b = 0; b < nb; b++) tot += bsum[b];
        pick = -1;
        if (tot > 0) {
            double r = cl_rng_uniform(rng) * tot, cum = 0;
            int64_t b = 0;
            for (; b < nb - 1; b++) {
                if (cum + bsum[b] > r) break;
                cum += bsum[b];
            }
            int64_t i1 = (b + 1) * PP_BLOCK < M ? (b + 1) * PP_BLOCK : M;
            for (int64_t i = b * PP_BLOCK; i < i1; i++) {
                double v = (ws ? (double)ws[i] : 1.0) * D[i];
                if (v <= 0) continue;
                cum += v;
                pick = i;
                if (cum > r) break;
            }
            if (pick < 0) /* rounding pushed r past the block: take the last candidate */
                for (int64_t i = M - 1; i >= 0 && pick < 0; i--)
                    if ((ws ? (double)ws[i] : 1.0) * D[i] > 0) pick = i;
        }
        if (pick < 0) { /* every remaining point coincides with a seed: uniform among the unchosen */
            int64_t r = (int64_t)cl_rng_below(rng, (uint64_t)(M - c - 1));
            for (int64_t i = 0; i < M; i++)
                if (!chosen[i] && r-- == 0) {
                    pick = i;
                    break;
                }
        }
    }
done:
    free(Xt);
    free(D);
    free(ws);
    free(chosen);
    free(bsum);
    return st;
}

/* ---- k-means ------------------------------------------------------------------------------ */

typedef struct km_sums {
    double *W;    /* [k] total weight                                */
    double *S;    /* [k][d] weighted coordinate sums                 */
    double *sse;  /* [k] weighted SSE to the assignment's centroids  */
    double *fard; /* [k] largest weighted distance in the cluster    */
    int64_t *fari;/* [k] its point                                   */
} km_sums;

/* Per-cluster sums of the assignment a (centroids Cold). Threads own ranges
 * of clusters and each scans all points, so every sum runs in point order. */
static void km_accumulate(const float *X, int64_t N, int d, int k, const float *w, const uint32_t *a,
                          const float *Cold, km_sums *s) {
    const int nth = spqr_num_threads();
    int R = 2 * nth; /* a few more ranges than threads, taken dynamically: busy cores */
    if (R > k) R = k;
#pragma omp parallel for num_threads(nth < R ? nth : R) schedule(dynamic, 1)
    for (int r = 0; r < R; r++) {
        const uint32_t c0 = (uint32_t)((int64_t)k * r / R), c1 = (uint32_t)((int64_t)k * (r + 1) / R);
        for (uint32_t j = c0; j < c1; j++) {
            s->W[j] = s->sse[j] = 0;
            s->fard[j] = -1;
            s->fari[j] = -1;
            for (int t = 0; t < d; t++) s->S[(size_t)j * d + t] = 0;
        }
        for (int64_t i = 0; i < N; i++) {
            const uint32_t j = a[i];
            if (j < c0 || j >= c1) continue;
            const double wi = w ? (double)w[i] : 1.0;
            const float *x = X + (size_t)i * d;
            double *Sj = s->S + (size_t)j * d;
            s->W[j] += wi;
            for (int t = 0; t < d; t++) Sj[t] += wi * x[t];
            const double dd = wi * cl_dist2(x, Cold + (size_t)j * d, d);
            s->sse[j] += dd;
            if (dd > s->fard[j]) {
                s->fard[j] = dd;
                s->fari[j] = i;
            }
        }
    }
}

typedef struct donor {
    double sse;
    int j;
} donor;

static int donor_cmp(const void *pa, const void *pb) {
    const donor *a = pa, *b = pb;
    if (a->sse != b->sse) return a->sse > b->sse ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

/* C = means of the clusters; empty clusters take donor points (see top).
 * Returns the number of clusters re-seeded, or -1 when out of memory. */
static int64_t km_update(const float *X, int d, int k, const km_sums *s, float *C) {
    int64_t nempty = 0;
    for (int j = 0; j < k; j++) {
        if (s->W[j] > 0) {
            for (int t = 0; t < d; t++) C[(size_t)j * d + t] = (float)(s->S[(size_t)j * d + t] / s->W[j]);
        } else
            nempty++;
    }
    if (!nempty) return 0;
    donor *dn = spqr_malloc_array((size_t)k, sizeof(donor));
    if (!dn) return -1;
    int nd = 0;
    for (int j = 0; j < k; j++)
        if (s->W[j] > 0 && s->fard[j] > 0) dn[nd++] = (donor){s->sse[j], j};
    qsort(dn, (size_t)nd, sizeof(donor), donor_cmp);
    int64_t used = 0;
    for (int j = 0; j < k && used < nd; j++) {
        if (s->W[j] > 0) continue;
        const int64_t p = s->fari[dn[used].j];
        memcpy(C + (size_t)j * d, X + (size_t)p * d, sizeof(float) * d);
        used++;
    }
    free(dn);
    return used;
}

spqr_status cl_kmeans(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, int iters, double *trace,
                      int trace_cap, int *trace_len, float *C, uint32_t *assign, spqr_cluster_stats *st) {
    const float *w = o->weights;
    cl_rng rng;
    cl_rng_seed(&rng, o->seed, 1);
    spqr_status rc = o->init == SPQR_CLUSTER_INIT_PLUSPLUS ? seed_plusplus(X, N, d, k, w, &rng, C)
                                                           : seed_random(X, N, d, k, &rng, C);
    if (rc != SPQR_OK) return rc;
    cl_pass pr;
    rc = cl_assign_pass(X, N, d, C, k, w, 0, assign, &pr);
    if (rc != SPQR_OK) return rc;
    double sse = pr.sse;
    int64_t reseeded = 0;
    int it_run = 0, ntr = 0;
    if (iters > 0) {
        km_sums s = {spqr_malloc_array((size_t)k, sizeof(double)), spqr_malloc_array((size_t)k * d, sizeof(double)),
                     spqr_malloc_array((size_t)k, sizeof(double)), spqr_malloc_array((size_t)k, sizeof(double)),
                     spqr_malloc_array((size_t)k, sizeof(int64_t))};
        float *Cold = spqr_malloc_array((size_t)k * d, sizeof(float));
        if (!s.W || !s.S || !s.sse || !s.fard || !s.fari || !Cold)
            rc = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (k-means sums, k = %d, d = %d)", k, d);
        for (int t = 1; rc == SPQR_OK && t <= iters; t++) {
            memcpy(Cold, C, sizeof(float) * (size_t)k * d);
            km_accumulate(X, N, d, k, w, assign, Cold, &s);
            int64_t r = km_update(X, d, k, &s, C);
            if (r < 0) {
                rc = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (re-seeding)");
                break;
            }
            reseeded += r;
            rc = cl_assign_pass(X, N, d, C, k, w, 1, assign, &pr);
            if (rc != SPQR_OK) break;
            sse = pr.sse;
            it_run = t;
            if (trace && ntr < trace_cap) trace[ntr++] = sse;
            if (pr.changed == 0 && r == 0) break; /* converged: the next iteration would repeat this one */
        }
        free(s.W);
        free(s.S);
        free(s.sse);
        free(s.fard);
        free(s.fari);
        free(Cold);
        if (rc != SPQR_OK) return rc;
    }
    if (trace_len) *trace_len = ntr;
    if (st) {
        st->sse = sse;
        st->iters_run = it_run;
        st->reseeded = reseeded;
    }
    return SPQR_OK;
}

/* ---- public entry points ---------------------------------------------------------------- */

spqr_status spqr_cluster(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, float *C,
                         uint32_t *assign, spqr_cluster_stats *stats) {
    spqr_cluster_opts def;
    if (!o) {
        spqr_cluster_opts_default(&def);
        o = &def;
    }
    if (o->trace_len) *o->trace_len = 0;
    spqr_status rc = validate(X, N, d, k, o, C, assign);
    if (rc != SPQR_OK) return rc;
    const double t0 = spqr_now();
    spqr_cluster_stats ls = {0};
    switch (o->algo) {
    case SPQR_CLUSTER_KMEANS:
        rc = cl_kmeans(X, N, d, k, o, o->iters, o->trace, o->trace ? o->trace_cap : 0, o->trace_len, C, assign, &ls);
        break;
    case SPQR_CLUSTER_HIERARCHICAL: rc = cl_hierarchical(X, N, d, k, o, C, assign, &ls); break;
    case SPQR_CLUSTER_GMM: rc = cl_gmm(X, N, d, k, o, C, assign, &ls); break;
    }
    if (rc != SPQR_OK) return rc;
    ls.seconds = spqr_now() - t0;
    if (stats) *stats = ls;
    return SPQR_OK;
}

spqr_status spqr_cluster_assign(const float *X, int64_t N, int d, const float *C, int k, const float *weights,
                                uint32_t *assign, double *sse) {
    spqr_cluster_opts o;
    spqr_cluster_opts_default(&o);
    o.weights = weights;
    spqr_status rc = validate(X, N, d, 1, &o, C, assign);
    if (rc != SPQR_OK) return rc;
    if (k < 1) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster assign: k = %d codewords", k);
    for (int64_t i = 0; i < (int64_t)k * d; i++)
        if (!isfinite(C[i]))
            return spqr_fail(SPQR_ERR_INVALID_ARG, "cluster assign: codeword %lld is not finite", (long long)(i / d));
    cl_pass pr;
    rc = cl_assign_pass(X, N, d, C, k, weights, 0, assign, &pr);
    if (rc != SPQR_OK) return rc;
    if (sse) *sse = pr.sse;
    return SPQR_OK;
}
