/* bench_cluster.c - speed of the ClusComp clustering (src/quant/cluscomp/).
 *
 * On synthetic weight-like sub-vectors (Gaussian with a shared component per
 * sub-vector and 5% of them 4x wider, scale 0.02), for each shape:
 *   - one nearest-codeword pass with each search engine (fused SIMD kernel,
 *     sgemm tiles + SIMD scan), best of 3: seconds and GFLOP/s counted as
 *     2*N*k*d (the distance products; the scan and the exact recheck of the
 *     winner are not counted);
 *   - k-means (random and k-means++ seeding), hierarchical (bisecting
 *     k-means) and GMM, one run each: total seconds (seeding included),
 *     iterations (hierarchical: splits), total / iterations (hierarchical:
 *     the total), and the final MSE per coordinate (sse / (N d)).
 * "seconds" is wall time, "cpu s" the CPU time of all threads (useful on a
 * shared machine, where the wall clock inflates).
 * Prints a markdown table.
 *
 * Usage: bench_cluster [--n N] [--d D] [--k K[,K...]] [--iters I]
 *                      [--algos kmeans,kmeans++,hier,gmm] [--full] [--quick]
 *   default: N = 1M, d = 4, k = 4096, iters = 20, all algorithms;
 *   --full: the LLaMA-7B 4096x4096 shapes: N = 4.2M (d = 4) and 2.1M (d = 8),
 *           k in {1000, 5000, 10000} (long: several minutes per row on 2 cores);
 *   --quick (or SPQR_BENCH_QUICK=1): N = 200k, k = 1024, iters = 5.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant/cluscomp/cluster.h"
#include "quant/cluscomp/cluster_internal.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static inline uint64_t rng(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}
static float urand(void) { return (float)((rng() >> 40) + 0.5) * (1.0f / 16777216.0f); }
static float nrand(void) { /* Box-Muller, one value */
    float u = urand(), v = urand();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* CPU seconds of the whole process (all threads): on a machine shared with
 * other jobs the wall clock inflates, this much less (spinning OpenMP
 * threads count, though). */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "bench_cluster: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static float *make_data(int64_t N, int d) {
    float *X = xalloc(sizeof(float) * (size_t)N * d);
    for (int64_t i = 0; i < N; i++) {
        float common = nrand(), sc = urand() < 0.05f ? 4.0f : 1.0f;
        for (int t = 0; t < d; t++) X[i * d + t] = 0.02f * sc * (nrand() + 0.5f * common);
    }
    return X;
}

typedef struct shape {
    int64_t N;
    int d, k;
} shape;

static void run_shape(const shape *s, int iters, const char *algos) {
    const int64_t N = s->N;
    const int d = s->d, k = s->k;
    float *X = make_data(N, d);
    float *C = xalloc(sizeof(float) * (size_t)k * d);
    uint32_t *a = xalloc(sizeof(uint32_t) * (size_t)N);
    const double flops = 2.0 * (double)N * k * d;
    /* search engines: one pass each on k data points as codewords */
    memcpy(C, X, sizeof(float) * (size_t)k * d);
    const cl_engine eng[2] = {CL_ENGINE_FUSED, CL_ENGINE_SGEMM};
    for (int e = 0; e < 2; e++) {
        spqr_cluster_engine_force(eng[e]);
        double t = 1e30, tc = 0;
        for (int rep = 0; rep < 3; rep++) { /* best of 3 (the first also touches the pages) */
            double sse, t0 = spqr_now(), c0 = cpu_now();
            if (spqr_cluster_assign(X, N, d, C, k, NULL, a, &sse) != SPQR_OK) {
                fprintf(stderr, "assign: %s\n", spqr_last_error());
                exit(1);
            }
            t0 = spqr_now() - t0;
            c0 = cpu_now() - c0;
            if (t0 < t) {
                t = t0;
                tc = c0;
            }
        }
        printf("| %lld | %d | %d | assign pass | %s | 1 | %.3f | %.3f | %.3f | %.1f GFLOP/s |\n", (long long)N, d, k,
               spqr_cluster_engine_name(), t, tc, t, flops / t * 1e-9);
        fflush(stdout);
    }
    spqr_cluster_engine_force(CL_ENGINE_AUTO);
    struct {
        const char *name;
        spqr_cluster_algo algo;
        spqr_cluster_init init;
    } A[] = {{"kmeans", SPQR_CLUSTER_KMEANS, SPQR_CLUSTER_INIT_RANDOM},
             {"kmeans++", SPQR_CLUSTER_KMEANS, SPQR_CLUSTER_INIT_PLUSPLUS},
             {"hier", SPQR_CLUSTER_HIERARCHICAL, SPQR_CLUSTER_INIT_RANDOM},
             {"gmm", SPQR_CLUSTER_GMM, SPQR_CLUSTER_INIT_RANDOM}};
    for (int i = 0; i < 4; i++) {
        /* match whole names in the comma list */
        const char *p = algos;
        int want = 0;
        size_t ln = strlen(A[i].name);
        while (p && *p) {
            if (!strncmp(p, A[i].name, ln) && (p[ln] == ',' || p[ln] == 0)) want = 1;
            p = strchr(p, ',');
            if (p) p++;
        }
        if (!want) continue;
        spqr_cluster_opts o;
        spqr_cluster_opts_default(&o);
        o.algo = A[i].algo;
        o.init = A[i].init;
        o.iters = iters;
        o.seed = 1;
        spqr_cluster_stats st;
        const double c0 = cpu_now();
        if (spqr_cluster(X, N, d, k, &o, C, a, &st) != SPQR_OK) {
            fprintf(stderr, "%s: %s\n", A[i].name, spqr_last_error());
            exit(1);
        }
        const char *unit = A[i].algo == SPQR_CLUSTER_HIERARCHICAL ? "splits" : "iters";
        char note[96];
        snprintf(note, sizeof note, "MSE %.4g (%d %s)", st.sse / ((double)N * d), st.iters_run, unit);
        double per = A[i].algo == SPQR_CLUSTER_HIERARCHICAL || st.iters_run == 0 ? st.seconds
                                                                                  : st.seconds / st.iters_run;
        const double cpu = cpu_now() - c0;
        printf("| %lld | %d | %d | %s | %s | %d | %.2f | %.2f | %.3f | %s |\n", (long long)N, d, k, A[i].name,
               spqr_cluster_engine_name(), st.iters_run, st.seconds, cpu, per, note);
        fflush(stdout);
    }
    free(X);
    free(C);
    free(a);
}

int main(int argc, char **argv) {
    int64_t N = 1 << 20;
    int d = 4, iters = 20, full = 0, quick = getenv("SPQR_BENCH_QUICK") != NULL;
    int ks[16], nk = 0;
    const char *algos = "kmeans,kmeans++,hier,gmm";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--n") && i + 1 < argc)
            N = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--d") && i + 1 < argc)
            d = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--k") && i + 1 < argc) {
            for (char *p = argv[++i]; p && *p && nk < 16;) {
                ks[nk++] = atoi(p);
                p = strchr(p, ',');
                if (p) p++;
            }
        } else if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--algos") && i + 1 < argc)
            algos = argv[++i];
        else if (!strcmp(argv[i], "--full"))
            full = 1;
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr,
                    "usage: bench_cluster [--n N] [--d D] [--k K[,K..]] [--iters I] [--algos a,b] [--full] [--quick]\n");
            return 2;
        }
    }
    shape sh[16];
    int ns = 0;
    if (full) {
        const int fk[3] = {1000, 5000, 10000};
        for (int j = 0; j < 3; j++) sh[ns++] = (shape){4096LL * 4096 / 4, 4, fk[j]};
        for (int j = 0; j < 3; j++) sh[ns++] = (shape){4096LL * 4096 / 8, 8, fk[j]};
    } else {
        if (quick) {
            N = 200000;
            iters = 5;
            if (!nk) ks[nk++] = 1024;
        }
        if (!nk) ks[nk++] = 4096;
        for (int j = 0; j < nk; j++) sh[ns++] = (shape){N, d, ks[j]};
    }
    printf("threads: %d, default engine: %s\n\n", spqr_num_threads(), spqr_cluster_engine_name());
    printf("| N | d | k | algorithm | engine | iters | seconds | cpu s | s/iter | notes |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < ns; s++) run_shape(&sh[s], iters, algos);
    return 0;
}
