/* cluster_gmm.c - diagonal-covariance Gaussian mixture fitted by EM.
 *
 * Model: p(x) = sum_j pi_j N(x; mu_j, diag(var_j)). Point weights w_i are
 * supported: EM maximises sum_i w_i log p(x_i) (weighted responsibilities in
 * the M-step); the trace reports the weighted mean log-likelihood
 * sum_i w_i log p(x_i) / sum_i w_i.
 *
 * Initialisation: k-means with the same seeding and seed for
 * CL_GMM_KMEANS_ITERS(iters) = min(iters, 10) Lloyd iterations; from its hard
 * assignment mu_j = cluster mean, var_j = cluster variance (floored),
 * pi_j = cluster weight share (an empty cluster gets the global variance and
 * a small share, 1e-3 of the smallest non-empty one, so it can still win
 * points).
 *
 * Iteration t = 1..iters: E-step at theta_{t-1} (responsibilities), M-step
 * -> theta_t; the E-step at theta_t then gives trace[t-1] = mean
 * log-likelihood of theta_t, so iters + 1 E-steps run in all. The last one
 * gives the result: codeword j = mu_j (rounded to float), assign = the
 * component of maximum posterior (NOT the nearest codeword in L2: a wide
 * component can own points nearer to a narrow one's mean), stats->sse = the
 * exact weighted SSE of that assignment to the float codewords.
 *
 * E-step, per point: l_j = log pi_j - 1/2 sum_t [log(2 pi var_jt) +
 * (x_t - mu_jt)^2 / var_jt] for all j, in double with direct differences (no
 * ||x||^2 - 2 x.mu expansion: the per-dimension terms can be ~1e7 when a
 * variance sits at the floor, and the expansion would cancel in the
 * log-likelihood), vectorised over components (SoA parameters).
 * log p(x) = m + log sum_j exp(l_j - m), m = max_j l_j (log-sum-exp).
 * Only the window l_j >= m - (25 + ln k) enters the sum and the M-step: the
 * components left out weigh < k e^-(25 + ln k) = e^-25 ~ 1.4e-11 of p(x)
 * together, so log p(x) is exact to ~1.4e-11 (absolute) and the
 * responsibilities to the same relative amount - far below what the
 * monotonicity check needs - while the exp and M-step work scales with the
 * components that matter (on weight-like data with k = 4096, d = 4: 350 per
 * point after the k-means start, ~900 after 10 EM iterations).
 * With AVX-512 four points go through the parameters together, keeping l in
 * registers and compressing the window candidates straight into lists; the
 * threshold is not known before the pass, so the kernel uses the point's
 * previous component's l (computed first, bit-identically) minus the window,
 * a lower bound, and the lists are trimmed afterwards when the maximum turned
 * out larger. exp is a vectorisable polynomial (exp_neg, ~2 ulp).
 * Memory: per thread a few rows of k doubles, never N x k.
 *
 * M-step: N_j = sum_i w_i r_ij, pi_j = N_j / sum N, mu_j = S1_j / N_j,
 * var_jt = max(S2_jt / N_j - mu_jt^2, floor_t). A component with N_j = 0
 * gets pi_j = 0 (it is dead: that is the maximiser) and keeps mu_j, var_j.
 *
 * Variance floor: floor_t = 1e-6 * (global variance of dim t) +
 * 1e-9 * (mean global variance) + 1e-30, fixed for the run; it stops
 * components collapsing onto single (or duplicated) points. Because the
 * floor is the same constraint in every iteration and max(s, floor) is the
 * exact maximiser of the M-step's variance term under it, EM stays monotone
 * with the floor; what remains are rounding effects (E[x^2] - mu^2 in
 * double, the truncated tail above): the log-likelihood can drop by about
 * 1e-11 (absolute), which the tests allow (1e-9 relative).
 *
 * Determinism: the points are cut into a fixed number of chunks (it depends
 * on N, k and d, never on the thread count); each chunk accumulates its own
 * M-step sums serially in point order and the chunk sums are added in chunk
 * order. Chunks are limited to 32 and to 32 MiB of sums in all. (The
 * AVX-512 and the portable E-step round differently, so results depend on
 * the CPU kernel variant, like every SIMD path in the library.)
 *
 * Cost: the E-step evaluates all N k pairs (~4d flops each, double) plus
 * exp and 2d + 1 sums per window pair; on 2 Zen 5 cores, N = 1M, k = 4096,
 * d = 4: ~0.5 s per E-step after the start, ~3 s once the windows widen,
 * about 10-20x a Lloyd iteration.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/cpu.h"
#include "cluster_internal.h"

#define MAXCH 32
#define CH_BYTES ((size_t)32 << 20)
/* E-step window: components more than CL_GMM_WINDOW + ln k below the best are
 * skipped (their total share of p(x) is < e^-25 ~ 1.4e-11) */
#define CL_GMM_WINDOW 25.0

typedef struct gparams {
    int k, d, kp;      /* kp = k rounded up to 32                                    */
    double *muT;       /* [d][kp] means                                              */
    double *hT;        /* [d][kp] -1 / (2 var)                                        */
    double *cst;       /* [kp] log pi - 1/2 sum log(2 pi var); -inf for dead/padding  */
    double *mu, *var;  /* [k][d]                                                       */
    double *pi;        /* [k]                                                          */
    float *Cf;         /* [k][d] float means (codewords)                              */
} gparams;

static void gp_free(gparams *g) {
    free(g->muT);
    free(g->hT);
    free(g->cst);
    free(g->mu);
    free(g->var);
    free(g->pi);
    free(g->Cf);
}

static spqr_status gp_alloc(gparams *g, int k, int d) {
    memset(g, 0, sizeof *g);
    g->k = k;
    g->d = d;
    g->kp = (k + 31) & ~31;
    g->muT = spqr_aligned_alloc(sizeof(double) * (size_t)d * g->kp);
    g->hT = spqr_aligned_alloc(sizeof(double) * (size_t)d * g->kp);
    g->cst = spqr_aligned_alloc(sizeof(double) * (size_t)g->kp);
    g->mu = spqr_malloc_array((size_t)k * d, sizeof(double));
    g->var = spqr_malloc_array((size_t)k * d, sizeof(double));
    g->pi = spqr_malloc_array((size_t)k, sizeof(double));
    g->Cf = spqr_malloc_array((size_t)k * d, sizeof(float));
    if (!g->muT || !g->hT || !g->cst || !g->mu || !g->var || !g->pi || !g->Cf) {
        gp_free(g);
        return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (GMM of %d components)", k);
    }
    return SPQR_OK;
}

/* Derived SoA tables from mu, var, pi. */
static void gp_prepare(gparams *g) {
    const int k = g->k, d = g->d, kp = g->kp;
    const double l2pi = log(2.0 * M_PI);
    for (int j = 0; j < kp; j++) {
        if (j >= k) {
            for (int t = 0; t < d; t++) {
                g->muT[(size_t)t * kp + j] = 0;
                g->hT[(size_t)t * kp + j] = 0;
            }
            g->cst[j] = -INFINITY;
            continue;
        }
        double c = g->pi[j] > 0 ? log(g->pi[j]) : -INFINITY;
        for (int t = 0; t < d; t++) {
            const double v = g->var[(size_t)j * d + t];
            g->muT[(size_t)t * kp + j] = g->mu[(size_t)j * d + t];
            g->hT[(size_t)t * kp + j] = -0.5 / v;
            c -= 0.5 * (l2pi + log(v));
            g->Cf[(size_t)j * d + t] = (float)g->mu[(size_t)j * d + t];
        }
        g->cst[j] = c;
    }
}

/* ---- E-step kernels ------------------------------------------------------------------------- */

/* l[j] = cst[j] + sum_t hT[t][j] (x_t - muT[t][j])^2 for j < kp. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
logp_all(const double *x, int d, int kp, const double *restrict muT, const double *restrict hT,
         const double *restrict cst, double *restrict l) {
    for (int j = 0; j < kp; j++) l[j] = cst[j];
    for (int t = 0; t < d; t++) {
        const double xt = x[t];
        const double *restrict m = muT + (size_t)t * kp, *restrict h = hT + (size_t)t * kp;
        for (int j = 0; j < kp; j++) {
            const double e = xt - m[j];
            l[j] += h[j] * e * e;
        }
    }
}

#define GP 4 /* points per AVX-512 E-step group */

/* For GP points at once (x [GP][d]): l_j for every component, in registers,
 * and the list of components with l_j >= thr0[p] (ascending: idx, lv) plus
 * the maximum mx[p]. One pass over the parameters per GP points, and no
 * l row in memory: thr0 is a lower bound of the final threshold (see
 * estep_run). Lists have room for kp + 8 entries. */
__attribute__((target("avx512f,avx512vl"))) static void
logp_collect_avx512(const double *x, int d, int kp, const double *restrict muT, const double *restrict hT,
                    const double *restrict cst, const double *thr0, int *const *idx, double *const *lv, int *cnt,
                    double *mx) {
    __m512d M[GP], TH[GP];
    int n[GP];
    for (int p = 0; p < GP; p++) {
        M[p] = _mm512_set1_pd(-INFINITY);
        TH[p] = _mm512_set1_pd(thr0[p]);
        n[p] = 0;
    }
    __m256i jj = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i inc = _mm256_set1_epi32(8);
    for (int j = 0; j < kp; j += 8) {
        __m512d a[GP];
        const __m512d c = _mm512_load_pd(cst + j);
        for (int p = 0; p < GP; p++) a[p] = c;
        for (int t = 0; t < d; t++) {
            const __m512d mu = _mm512_load_pd(muT + (size_t)t * kp + j), h = _mm512_load_pd(hT + (size_t)t * kp + j);
            for (int p = 0; p < GP; p++) {
                const __m512d e = _mm512_sub_pd(_mm512_set1_pd(x[p * d + t]), mu);
                a[p] = _mm512_fmadd_pd(_mm512_mul_pd(h, e), e, a[p]);
            }
        }
        for (int p = 0; p < GP; p++) {
            M[p] = _mm512_max_pd(M[p], a[p]);
            const __mmask8 ge = _mm512_cmp_pd_mask(a[p], TH[p], _CMP_GE_OQ);
            /* compress in registers, then a full store, without a branch: the
             * masked compress-store to memory is microcoded and slow on Zen 4/5 */
            _mm256_storeu_si256((__m256i *)(idx[p] + n[p]), _mm256_maskz_compress_epi32(ge, jj));
            _mm512_storeu_pd(lv[p] + n[p], _mm512_maskz_compress_pd(ge, a[p]));
            n[p] += __builtin_popcount(ge);
        }
        jj = _mm256_add_epi32(jj, inc);
    }
    for (int p = 0; p < GP; p++) {
        cnt[p] = n[p];
        mx[p] = _mm512_reduce_max_pd(M[p]);
    }
}

/* l_j of one point and component, with the kernel's operation order (so it
 * is bit-identical to the kernel's value). */
static double logp_one(const double *x, int d, int kp, const double *muT, const double *hT, const double *cst,
                       int j) {
    double a = cst[j];
    for (int t = 0; t < d; t++) {
        const double e = x[t] - muT[(size_t)t * kp + j];
        a = fma(hT[(size_t)t * kp + j] * e, e, a);
    }
    return a;
}

static double max_scalar(const double *l, int kp) {
    double m = -INFINITY;
    for (int j = 0; j < kp; j++) m = l[j] > m ? l[j] : m;
    return m;
}

/* Components with l[j] >= thr, ascending: idx[u] = j, lv[u] = l[j] (idx and
 * lv have room for kp + 8 entries). */
static int collect_scalar(const double *l, int kp, double thr, int *idx, double *lv) {
    int n = 0;
    for (int j = 0; j < kp; j++)
        if (l[j] >= thr) {
            idx[n] = j;
            lv[n++] = l[j];
        }
    return n;
}

/* exp(x) for -708 < x <= 0 (the E-step needs l_j - max in [-(25 + ln k), 0]):
 * round x / ln 2 with the 1.5 * 2^52 shift trick, reduce by n ln 2 (two-part
 * constant), Taylor polynomial of degree 13 on |r| <= ln 2 / 2, scale by 2^n
 * through the exponent bits. Relative error < 4e-16 (about 2 ulp); plain C
 * so the loop below vectorises. */
static inline double exp_neg(double x) {
    const double log2e = 1.4426950408889634, shift = 6755399441055744.0;
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    const double t = x * log2e + shift;
    const double n = t - shift;
    const double r = (x - n * ln2hi) - n * ln2lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    sb = (tb - 0x4338000000000000ull + 1023) << 52; /* (bits of t) - (bits of shift) = n */
    double sc;
    memcpy(&sc, &sb, sizeof sc);
    return p * sc;
}

/* e[u] = exp(lv[u] - m) for u < n; returns sum_u e[u] (eight partial sums
 * combined in a fixed order). e has room for n rounded up to 8. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static double exp_list(const double *restrict lv, int n,
                                                                                     double m, double *restrict e) {
    const int n8 = (n + 7) & ~7;
    for (int u = 0; u < n; u++) e[u] = exp_neg(lv[u] - m);
    for (int u = n; u < n8; u++) e[u] = 0.0;
    double acc[8] = {0};
    for (int u = 0; u < n8; u += 8)
        for (int q = 0; q < 8; q++) acc[q] += e[u + q];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* M-step sums of one point: N[j] += ws e, S[j][q] += ab[q] e for the listed
 * components (ab = ws x, ws x^2). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
acc_list(int n, const int *idx, const double *ev, double ws, const double *ab, int d2, double *restrict Nk,
         double *restrict S) {
    for (int u = 0; u < n; u++) {
        const int j = idx[u];
        const double e = ev[u];
        double *restrict rec = S + (size_t)j * d2;
        Nk[j] += ws * e;
        for (int q = 0; q < d2; q++) rec[q] += ab[q] * e;
    }
}

/* ---- E-step over all points --------------------------------------------------------------------- */

/* M-step sums of one chunk: N [k], then S [k][2d] with S[j][t] = sum w r x_t
 * and S[j][d + t] = sum w r x_t^2 (one contiguous record per component). */
typedef struct estep {
    int nch;
    double *acc; /* [nch][k * (2d + 1)] */
    double *ll;  /* [nch] sum w log p   */
    double *sse; /* [nch]               */
} estep;

static spqr_status estep_run(const float *X, int64_t N, const float *w, const gparams *g, estep *E,
                             uint32_t *assign, double *ll_sum, double *sse_sum, int want_sums) {
    const int k = g->k, d = g->d, kp = g->kp, d2 = 2 * d;
    const size_t per = (size_t)k * (2 * d + 1);
    const int avx512 = spqr_cpu_kind_active() == SPQR_CPU_AVX512;
    const double win = CL_GMM_WINDOW + log((double)k);
    int nomem = 0;
    const int nch = E->nch;
#pragma omp parallel num_threads(spqr_num_threads() < nch ? spqr_num_threads() : nch)
    {
        double *l = spqr_aligned_alloc(sizeof(double) * (size_t)kp);
        double *ev = spqr_aligned_alloc(sizeof(double) * ((size_t)kp + 8));
        double *lvb = spqr_malloc_array((size_t)GP * (kp + 8), sizeof(double));
        int *idxb = spqr_malloc_array((size_t)GP * (kp + 8), sizeof(int));
        const int ok = l && ev && lvb && idxb;
        if (!ok) {
#pragma omp atomic write
            nomem = 1;
        }
        double *lv[GP];
        int *idx[GP];
        for (int p = 0; p < GP && ok; p++) {
            lv[p] = lvb + (size_t)p * (kp + 8);
            idx[p] = idxb + (size_t)p * (kp + 8);
        }
        double xd[GP * CL_MAX_D], ab[2 * CL_MAX_D], thr0[GP], mx[GP];
        int cnt[GP];
#pragma omp for schedule(dynamic, 1)
        for (int c = 0; c < nch; c++) {
            if (!ok) continue;
            double *A = want_sums ? E->acc + (size_t)c * per : NULL;
            double *Nk = A, *S = A ? A + k : NULL;
            if (A) memset(A, 0, sizeof(double) * per);
            double llc = 0, ssec = 0;
            const int64_t i0 = N * c / nch, i1 = N * (c + 1) / nch;
            for (int64_t ig = i0; ig < i1; ig += GP) {
                const int np = i1 - ig < GP ? (int)(i1 - ig) : GP;
                for (int p = 0; p < GP; p++)
                    for (int t = 0; t < d; t++) xd[p * d + t] = X[(size_t)(ig + (p < np ? p : 0)) * d + t];
                if (avx512) {
                    /* lower bound of each point's threshold max_j l_j - win: l of
                     * its previous component (assign holds the k-means or the
                     * previous E-step's answer), computed like the kernel */
                    for (int p = 0; p < GP; p++) {
                        const int64_t i = ig + (p < np ? p : 0);
                        thr0[p] = logp_one(xd + p * d, d, kp, g->muT, g->hT, g->cst, (int)assign[i]) - win;
                    }
                    logp_collect_avx512(xd, d, kp, g->muT, g->hT, g->cst, thr0, idx, lv, cnt, mx);
                } else
                    for (int p = 0; p < np; p++) {
                        logp_all(xd + p * d, d, kp, g->muT, g->hT, g->cst, l);
                        mx[p] = max_scalar(l, kp);
                        thr0[p] = mx[p] - win;
                        cnt[p] = collect_scalar(l, kp, thr0[p], idx[p], lv[p]);
                    }
                for (int p = 0; p < np; p++) {
                    const int64_t i = ig + p;
                    const double m = mx[p], thr = m - win;
                    const double *xp = xd + p * d;
                    int *ix = idx[p];
                    double *lp = lv[p];
                    int n = 0, jm = -1;
                    if (!(thr0[p] < thr)) { /* guessed right (or scalar path): the list is the window */
                        n = cnt[p];
                        for (int u = 0; u < n && jm < 0; u++)
                            if (lp[u] == m) jm = ix[u];
                    } else
                        for (int u = 0; u < cnt[p]; u++) /* the window, and the first component at the max */
                            if (lp[u] >= thr) {
                                if (jm < 0 && lp[u] == m) jm = ix[u];
                                ix[n] = ix[u];
                                lp[n++] = lp[u];
                            }
                    const double wi = w ? (double)w[i] : 1.0;
                    const double s = exp_list(lp, n, m, ev);
                    llc += wi * (m + log(s));
                    assign[i] = (uint32_t)jm;
                    ssec += wi * cl_dist2(X + (size_t)i * d, g->Cf + (size_t)jm * d, d);
                    if (A && wi > 0) {
                        const double ws = wi / s;
                        for (int t = 0; t < d; t++) {
                            ab[t] = ws * xp[t];
                            ab[d + t] = ab[t] * xp[t];
                        }
                        acc_list(n, ix, ev, ws, ab, d2, Nk, S);
                    }
                }
            }
            E->ll[c] = llc;
            E->sse[c] = ssec;
        }
        free(l);
        free(ev);
        free(lvb);
        free(idxb);
    }
    if (nomem) return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (GMM E-step)");
    double a = 0, b = 0;
    for (int c = 0; c < nch; c++) {
        a += E->ll[c];
        b += E->sse[c];
    }
    *ll_sum = a;
    *sse_sum = b;
    if (want_sums && nch > 1) { /* chunk sums into chunk 0, in chunk order, per element */
        double *A0 = E->acc;
#pragma omp parallel for num_threads(spqr_num_threads()) schedule(static)
        for (size_t u = 0; u < per; u++) {
            double s = A0[u];
            for (int c = 1; c < nch; c++) s += E->acc[(size_t)c * per + u];
            A0[u] = s;
        }
    }
    return SPQR_OK;
}

/* M-step from the summed accumulators (chunk 0). */
static void mstep(gparams *g, const double *A, const double *floor_v) {
    const int k = g->k, d = g->d;
    const double *Nk = A, *S = A + k;
    double tot = 0;
    for (int j = 0; j < k; j++) tot += Nk[j];
    for (int j = 0; j < k; j++) {
        if (!(Nk[j] > 0)) {
            g->pi[j] = 0; /* dead component: keeps its mean and variance */
            continue;
        }
        g->pi[j] = Nk[j] / tot;
        for (int t = 0; t < d; t++) {
            const double m = S[(size_t)j * 2 * d + t] / Nk[j];
            double v = S[(size_t)j * 2 * d + d + t] / Nk[j] - m * m;
            if (!(v >= floor_v[t])) v = floor_v[t];
            g->mu[(size_t)j * d + t] = m;
            g->var[(size_t)j * d + t] = v;
        }
    }
    gp_prepare(g);
}

/* ---- initialisation from a hard assignment --------------------------------------------------------- */

/* Per-cluster sums like the E-step's (threads own ranges of clusters). */
static void hard_sums(const float *X, int64_t N, int d, int k, const float *w, const uint32_t *a, double *A) {
    double *Nk = A, *S = A + k;
    const int nth = spqr_num_threads();
    int R = 2 * nth; /* a few more ranges than threads, taken dynamically: busy cores */
    if (R > k) R = k;
#pragma omp parallel for num_threads(nth < R ? nth : R) schedule(dynamic, 1)
    for (int r = 0; r < R; r++) {
        const uint32_t c0 = (uint32_t)((int64_t)k * r / R), c1 = (uint32_t)((int64_t)k * (r + 1) / R);
        for (uint32_t j = c0; j < c1; j++) {
            Nk[j] = 0;
            for (int q = 0; q < 2 * d; q++) S[(size_t)j * 2 * d + q] = 0;
        }
        for (int64_t i = 0; i < N; i++) {
            const uint32_t j = a[i];
            if (j < c0 || j >= c1) continue;
            const double wi = w ? (double)w[i] : 1.0;
            const float *x = X + (size_t)i * d;
            double *rec = S + (size_t)j * 2 * d;
            Nk[j] += wi;
            for (int t = 0; t < d; t++) {
                rec[t] += wi * x[t];
                rec[d + t] += wi * (double)x[t] * x[t];
            }
        }
    }
}

/* Global weighted variance per dimension (fixed chunks, ordered sums). */
static void global_var(const float *X, int64_t N, int d, const float *w, double *gv) {
    double part[MAXCH][2 * CL_MAX_D + 1];
    const int nch = N >= 65536 ? MAXCH : 1;
#pragma omp parallel for num_threads(spqr_num_threads()) schedule(dynamic, 1) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        double *p = part[c];
        for (int t = 0; t <= 2 * d; t++) p[t] = 0;
        for (int64_t i = N * c / nch; i < N * (c + 1) / nch; i++) {
            const double wi = w ? (double)w[i] : 1.0;
            for (int t = 0; t < d; t++) {
                const double x = X[(size_t)i * d + t];
                p[t] += wi * x;
                p[d + t] += wi * x * x;
            }
            p[2 * d] += wi;
        }
    }
    double s[2 * CL_MAX_D + 1] = {0};
    for (int c = 0; c < nch; c++)
        for (int t = 0; t <= 2 * d; t++) s[t] += part[c][t];
    for (int t = 0; t < d; t++) {
        const double m = s[t] / s[2 * d];
        const double v = s[d + t] / s[2 * d] - m * m;
        gv[t] = v > 0 ? v : 0;
    }
}

spqr_status cl_gmm(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, float *C, uint32_t *assign,
                   spqr_cluster_stats *st) {
    const float *w = o->weights;
    spqr_cluster_stats kst = {0};
    spqr_status rc = cl_kmeans(X, N, d, k, o, CL_GMM_KMEANS_ITERS(o->iters), NULL, 0, NULL, C, assign, &kst);
    if (rc != SPQR_OK) return rc;

    gparams g;
    rc = gp_alloc(&g, k, d);
    if (rc != SPQR_OK) return rc;
    const size_t per = (size_t)k * (2 * d + 1);
    int nch = (int)(CH_BYTES / (per * sizeof(double)));
    if (nch > MAXCH) nch = MAXCH;
    if ((int64_t)nch > (N + 1023) / 1024) nch = (int)((N + 1023) / 1024);
    if (nch < 1) nch = 1;
    estep E = {nch, spqr_malloc_array((size_t)nch * per, sizeof(double)), spqr_malloc_array((size_t)nch, sizeof(double)),
               spqr_malloc_array((size_t)nch, sizeof(double))};
    if (!E.acc || !E.ll || !E.sse) {
        rc = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (GMM sums, k = %d, d = %d)", k, d);
        goto done;
    }

    double gv[CL_MAX_D], floor_v[CL_MAX_D], gmean = 0;
    global_var(X, N, d, w, gv);
    for (int t = 0; t < d; t++) gmean += gv[t] / d;
    for (int t = 0; t < d; t++) floor_v[t] = 1e-6 * gv[t] + 1e-9 * gmean + 1e-30;

    /* theta_0 from the k-means assignment */
    hard_sums(X, N, d, k, w, assign, E.acc);
    {
        const double *Nk = E.acc, *S = E.acc + k;
        double tot = 0, minpos = INFINITY;
        for (int j = 0; j < k; j++)
            if (Nk[j] > 0) {
                tot += Nk[j];
                if (Nk[j] < minpos) minpos = Nk[j];
            }
        for (int j = 0; j < k; j++) {
            if (Nk[j] > 0) {
                g.pi[j] = Nk[j];
                for (int t = 0; t < d; t++) {
                    const double m = S[(size_t)j * 2 * d + t] / Nk[j];
                    double v = S[(size_t)j * 2 * d + d + t] / Nk[j] - m * m;
                    g.mu[(size_t)j * d + t] = m;
                    g.var[(size_t)j * d + t] = v >= floor_v[t] ? v : floor_v[t];
                }
            } else {
                g.pi[j] = 1e-3 * minpos;
                for (int t = 0; t < d; t++) {
                    g.mu[(size_t)j * d + t] = C[(size_t)j * d + t];
                    g.var[(size_t)j * d + t] = gv[t] >= floor_v[t] ? gv[t] : floor_v[t];
                }
            }
        }
        double ptot = 0;
        for (int j = 0; j < k; j++) ptot += g.pi[j];
        for (int j = 0; j < k; j++) g.pi[j] /= ptot;
        (void)tot;
    }
    gp_prepare(&g);

    double wtot = 0;
    if (w)
        for (int64_t i = 0; i < N; i++) wtot += w[i];
    else
        wtot = (double)N;
    double ll = 0, sse = 0;
    int ntr = 0;
    const int iters = o->iters;
    for (int t = 0; t <= iters; t++) {
        rc = estep_run(X, N, w, &g, &E, assign, &ll, &sse, t < iters);
        if (rc != SPQR_OK) goto done;
        if (t > 0 && o->trace && ntr < o->trace_cap) o->trace[ntr++] = ll / wtot;
        if (t < iters) mstep(&g, E.acc, floor_v);
    }
    memcpy(C, g.Cf, sizeof(float) * (size_t)k * d);
    if (o->trace_len) *o->trace_len = ntr;
    st->sse = sse;
    st->iters_run = iters;
    st->reseeded = kst.reseeded;
done:
    gp_free(&g);
    free(E.acc);
    free(E.ll);
    free(E.sse);
    return rc;
}
