/* cluster_hier.c - hierarchical clustering by divisive bisecting k-means.
 *
 * Why divisive: exact agglomerative clustering (Ward) needs O(N^2) memory or
 * time, hopeless at N = 1e5..1e8 sub-vectors; Ward on a subsample would
 * cluster only the sample and reach the other points by a final assignment.
 * Bisecting k-means is a genuine top-down hierarchy over all points, costs
 * O(N d (d + iters) log k) for balanced splits (each level of the tree
 * touches every point a constant number of times) and needs O(N d) extra
 * memory, and it is a different algorithm from flat k-means: clusters are
 * never re-joined, a point's cluster is decided once per level.
 *
 * The algorithm:
 *   start with one cluster holding every point;
 *   repeat until there are k clusters: take the cluster with the largest
 *     (weighted) SSE (ties: more points, then position) and split it in two:
 *       - principal direction v of its (weighted) covariance by power
 *         iteration; first split by the sign of (x - mean) . v (PDDP), whose
 *         two halves seed
 *       - 2-means (Lloyd, exact double distances) for at most
 *         CL_BISECT_ITERS(iters) = min(iters, 10) iterations, stopping early
 *         when the two centroids stop moving or an iteration improves the
 *         split's objective by less than CL_BISECT_TOL = 1e-4 (relative;
 *         on weight-like data this saves a third of the iterations at no
 *         measurable cost in SSE);
 *       - a split that leaves a side empty falls back to the sign split, and
 *         a cluster of identical (or zero-weight) points is cut in half by
 *         position, so there are always exactly k clusters;
 *   codewords = the (weighted) means of the k leaves, in the order of the
 *   leaves' positions; finally assign = nearest codeword of every point
 *   (cl_assign_pass), so assign is consistent with C like k-means; no Lloyd
 *   iteration follows (that would turn the result into k-means).
 *
 * The points are kept in a permuted copy (and the weights beside it), each
 * cluster a contiguous range, so every pass over a cluster is sequential;
 * a split partitions its range in place.
 *
 * Parallelism and determinism: a cluster of >= cl_hier_parallel_min (2^20)
 * points is split alone with its passes cut into 64 fixed chunks (partial
 * sums reduced in chunk order); smaller clusters are split up to 64 at a
 * time, one per thread, each serially - one parallel region per batch: every
 * region ends in a barrier, and on a busy machine a barrier can cost a
 * scheduler time slice (with 32k-point "big" clusters and batches of 8 the
 * tree took 7x longer on 2 threads than on 1 on 2 shared cores). A split's
 * result depends only on the cluster's points in their range order, so
 * splitting ahead of the greedy order (a batch takes the next clusters of
 * the queue, no more than the splits still needed) commits exactly the
 * splits the one-at-a-time greedy order would: the result does not depend
 * on the thread count. stats->iters_run = number of splits (k - 1); the trace
 * records the total SSE of the leaves after each split (never increasing).
 *
 * Memory: N*d floats (+ N floats with weights) for the permuted copy, O(k d)
 * for the tree.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"

#define BATCH 64 /* most splits computed by one parallel region */

/* clusters at least this large are split with parallel passes (a knob for tests) */
int64_t cl_hier_parallel_min = (int64_t)1 << 20;
#define NCH 64     /* chunks of a parallel pass                                    */
/* a 2-means split stops when an iteration improves its objective by less than this (relative) */
#define CL_BISECT_TOL 1e-4

typedef struct hnode {
    int64_t start, n;
    double W, sse;
    int ready;    /* split computed, children below         */
    int child[2];
} hnode;

typedef struct htree {
    float *Xp; /* [N][d] permuted points */
    float *wp; /* [N] permuted weights or NULL */
    int d;
    hnode *nodes;
    double *mean; /* [cap][d] */
    int cap, used;
} htree;

/* ---- passes over a range (serial, or NCH chunks in parallel) ------------------------------- */

static inline int nchunks(int64_t n) { return n >= cl_hier_parallel_min ? NCH : 1; }
static inline int64_t chunk_lo(int64_t n, int nch, int c) { return n * c / nch; }

/* W, sum w x; mean = sum / W (unweighted mean when W == 0). */
static void range_mean(const htree *T, int64_t start, int64_t n, double *W, double *mean) {
    const int d = T->d, nch = nchunks(n);
    double part[NCH][CL_MAX_D + 1];
#pragma omp parallel for num_threads(spqr_num_threads()) schedule(dynamic, 1) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        double *p = part[c];
        for (int t = 0; t <= d; t++) p[t] = 0;
        for (int64_t i = start + chunk_lo(n, nch, c); i < start + chunk_lo(n, nch, c + 1); i++) {
            const float *x = T->Xp + (size_t)i * d;
            const double wi = T->wp ? (double)T->wp[i] : 1.0;
            for (int t = 0; t < d; t++) p[t] += wi * x[t];
            p[d] += wi;
        }
    }
    double acc[CL_MAX_D + 1] = {0};
    for (int c = 0; c < nch; c++)
        for (int t = 0; t <= d; t++) acc[t] += part[c][t];
    *W = acc[d];
    if (acc[d] > 0) {
        for (int t = 0; t < d; t++) mean[t] = acc[t] / acc[d];
    } else { /* all weights zero: plain mean, so the codeword is still a sensible point */
        for (int t = 0; t < d; t++) acc[t] = 0;
        for (int64_t i = start; i < start + n; i++)
            for (int t = 0; t < d; t++) acc[t] += T->Xp[(size_t)i * d + t];
        for (int t = 0; t < d; t++) mean[t] = acc[t] / (double)n;
    }
}

static double range_sse(const htree *T, int64_t start, int64_t n, const double *mean) {
    const int d = T->d, nch = nchunks(n);
    double part[NCH];
#pragma omp parallel for num_threads(spqr_num_threads()) schedule(dynamic, 1) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        double s = 0;
        for (int64_t i = start + chunk_lo(n, nch, c); i < start + chunk_lo(n, nch, c + 1); i++) {
            const float *x = T->Xp + (size_t)i * d;
            double e2 = 0;
            for (int t = 0; t < d; t++) {
                double e = x[t] - mean[t];
                e2 += e * e;
            }
            s += (T->wp ? (double)T->wp[i] : 1.0) * e2;
        }
        part[c] = s;
    }
    double s = 0;
    for (int c = 0; c < nch; c++) s += part[c];
    return s;
}

/* Weighted covariance around mean, full [d][d]. */
static spqr_status range_cov(const htree *T, int64_t start, int64_t n, const double *mean, double *cov) {
    const int d = T->d, nch = nchunks(n), nt = d * (d + 1) / 2;
    double *part = spqr_malloc_array((size_t)nch * nt, sizeof(double));
    if (!part) return spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (covariance)");
#pragma omp parallel for num_threads(spqr_num_threads()) schedule(dynamic, 1) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        double *p = part + (size_t)c * nt;
        double e[CL_MAX_D];
        for (int u = 0; u < nt; u++) p[u] = 0;
        for (int64_t i = start + chunk_lo(n, nch, c); i < start + chunk_lo(n, nch, c + 1); i++) {
            const float *x = T->Xp + (size_t)i * d;
            const double wi = T->wp ? (double)T->wp[i] : 1.0;
            for (int t = 0; t < d; t++) e[t] = x[t] - mean[t];
            int u = 0;
            for (int a = 0; a < d; a++) {
                const double wa = wi * e[a];
                for (int b = a; b < d; b++) p[u++] += wa * e[b];
            }
        }
    }
    int u = 0;
    for (int a = 0; a < d; a++)
        for (int b = a; b < d; b++, u++) {
            double s = 0;
            for (int c = 0; c < nch; c++) s += part[(size_t)c * nt + u];
            cov[a * d + b] = cov[b * d + a] = s;
        }
    free(part);
    return SPQR_OK;
}

/* Side of a point: by projection (c1 == NULL: (x - c0) . v > 0) or by the
 * nearer of two centroids (ties go to side 0). */
static inline int side_of(const float *x, int d, const double *c0, const double *c1, const double *v) {
    double a = 0, b = 0;
    if (!c1) {
        for (int t = 0; t < d; t++) a += (x[t] - c0[t]) * v[t];
        return a > 0;
    }
    for (int t = 0; t < d; t++) {
        double e0 = x[t] - c0[t], e1 = x[t] - c1[t];
        a += e0 * e0;
        b += e1 * e1;
    }
    return b < a;
}

/* Weighted sums of both sides: out[s][0..d-1] = sum w x, out[s][d] = sum w. */
static void range_sides(const htree *T, int64_t start, int64_t n, const double *c0, const double *c1,
                        const double *v, double out[2][CL_MAX_D + 1], double *obj) {
    const int d = T->d, nch = nchunks(n);
    double part[NCH][2][CL_MAX_D + 1], pobj[NCH];
#pragma omp parallel for num_threads(spqr_num_threads()) schedule(dynamic, 1) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        memset(part[c], 0, sizeof part[c]);
        double o = 0;
        for (int64_t i = start + chunk_lo(n, nch, c); i < start + chunk_lo(n, nch, c + 1); i++) {
            const float *x = T->Xp + (size_t)i * d;
            const double wi = T->wp ? (double)T->wp[i] : 1.0;
            int sd;
            if (c1) { /* nearer centroid (ties: side 0), and the 2-means objective */
                double a = 0, b = 0;
                for (int t = 0; t < d; t++) {
                    const double e0 = x[t] - c0[t], e1 = x[t] - c1[t];
                    a += e0 * e0;
                    b += e1 * e1;
                }
                sd = b < a;
                o += wi * (sd ? b : a);
            } else
                sd = side_of(x, d, c0, NULL, v);
            double *p = part[c][sd];
            for (int t = 0; t < d; t++) p[t] += wi * x[t];
            p[d] += wi;
        }
        pobj[c] = o;
    }
    memset(out, 0, sizeof(double) * 2 * (CL_MAX_D + 1));
    double o = 0;
    for (int c = 0; c < nch; c++) o += pobj[c];
    if (obj) *obj = o;
    for (int c = 0; c < nch; c++)
        for (int s = 0; s < 2; s++)
            for (int t = 0; t <= d; t++) out[s][t] += part[c][s][t];
}

/* Partition the range: side 0 first. Returns the size of side 0. */
static int64_t range_partition(htree *T, int64_t start, int64_t n, const double *c0, const double *c1,
                               const double *v) {
    const int d = T->d;
    int64_t i = start, j = start + n - 1;
    float tmp[CL_MAX_D];
    while (i <= j) {
        if (!side_of(T->Xp + (size_t)i * d, d, c0, c1, v)) {
            i++;
            continue;
        }
        if (i != j) {
            memcpy(tmp, T->Xp + (size_t)i * d, sizeof(float) * d);
            memcpy(T->Xp + (size_t)i * d, T->Xp + (size_t)j * d, sizeof(float) * d);
            memcpy(T->Xp + (size_t)j * d, tmp, sizeof(float) * d);
            if (T->wp) {
                float tw = T->wp[i];
                T->wp[i] = T->wp[j];
                T->wp[j] = tw;
            }
        }
        j--;
    }
    return i - start;
}

/* Top eigenvector of the symmetric positive semi-definite A [d][d]. */
static void top_eigvec(const double *A, int d, double *v) {
    int jm = 0;
    for (int t = 1; t < d; t++)
        if (A[t * d + t] > A[jm * d + jm]) jm = t;
    for (int t = 0; t < d; t++) v[t] = t == jm;
    double u[CL_MAX_D];
    for (int it = 0; it < 300; it++) {
        double nn = 0;
        for (int a = 0; a < d; a++) {
            double s = 0;
            for (int b = 0; b < d; b++) s += A[a * d + b] * v[b];
            u[a] = s;
            nn += s * s;
        }
        nn = sqrt(nn);
        if (!(nn > 0)) return;
        double diff = 0;
        for (int a = 0; a < d; a++) {
            double x = u[a] / nn;
            diff += (x - v[a]) * (x - v[a]);
            v[a] = x;
        }
        if (diff < 1e-20) break;
    }
}

/* Fill node id's children (ids c0, c1 already reserved). */
static spqr_status split_node(htree *T, int id, int iters2) {
    hnode *nd = &T->nodes[id];
    const int d = T->d;
    const int64_t start = nd->start, n = nd->n;
    const double *mu = T->mean + (size_t)id * d;
    int64_t mid = -1;
    if (nd->sse > 0 && nd->W > 0) {
        double cov[CL_MAX_D * CL_MAX_D], v[CL_MAX_D];
        spqr_status rc = range_cov(T, start, n, mu, cov);
        if (rc != SPQR_OK) return rc;
        top_eigvec(cov, d, v);
        double sums[2][CL_MAX_D + 1], c[2][CL_MAX_D];
        range_sides(T, start, n, mu, NULL, v, sums, NULL);
        int ok = sums[0][d] > 0 && sums[1][d] > 0;
        if (ok) {
            for (int s = 0; s < 2; s++)
                for (int t = 0; t < d; t++) c[s][t] = sums[s][t] / sums[s][d];
            double prev = INFINITY;
            for (int it = 0; it < iters2; it++) {
                double obj;
                range_sides(T, start, n, c[0], c[1], NULL, sums, &obj);
                if (!(sums[0][d] > 0 && sums[1][d] > 0)) break; /* keep the last two-sided centroids */
                int same = 1;
                for (int s = 0; s < 2; s++)
                    for (int t = 0; t < d; t++) {
                        double x = sums[s][t] / sums[s][d];
                        if (x != c[s][t]) same = 0;
                        c[s][t] = x;
                    }
                if (same || prev - obj <= CL_BISECT_TOL * obj) break; /* converged */
                prev = obj;
            }
            mid = range_partition(T, start, n, c[0], c[1], NULL);
            if (mid == 0 || mid == n) mid = range_partition(T, start, n, mu, NULL, v);
        }
        if (mid == 0 || mid == n) mid = -1;
    }
    if (mid < 0) mid = n / 2; /* identical or zero-weight points: cut by position */
    const int64_t lo[2] = {start, start + mid}, cnt[2] = {mid, n - mid};
    for (int s = 0; s < 2; s++) {
        const int cid = nd->child[s];
        hnode *ch = &T->nodes[cid];
        double *cm = T->mean + (size_t)cid * d;
        ch->start = lo[s];
        ch->n = cnt[s];
        ch->ready = 0;
        range_mean(T, lo[s], cnt[s], &ch->W, cm);
        ch->sse = ch->W > 0 ? range_sse(T, lo[s], cnt[s], cm) : 0.0;
    }
    nd->ready = 1;
    return SPQR_OK;
}

/* ---- the queue: max-heap of node ids ------------------------------------------------------------- */

static inline int node_before(const hnode *a, const hnode *b) { /* a split before b */
    if (a->sse != b->sse) return a->sse > b->sse;
    if (a->n != b->n) return a->n > b->n;
    return a->start < b->start;
}

static void heap_push(int *h, int *len, const hnode *nodes, int id) {
    int i = (*len)++;
    h[i] = id;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!node_before(&nodes[h[i]], &nodes[h[p]])) break;
        int t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static int heap_pop(int *h, int *len, const hnode *nodes) {
    int top = h[0];
    h[0] = h[--(*len)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, b = i;
        if (l < *len && node_before(&nodes[h[l]], &nodes[h[b]])) b = l;
        if (r < *len && node_before(&nodes[h[r]], &nodes[h[b]])) b = r;
        if (b == i) break;
        int t = h[i];
        h[i] = h[b];
        h[b] = t;
        i = b;
    }
    return top;
}

static int leaf_cmp(const void *pa, const void *pb) {
    const hnode *a = *(hnode *const *)pa, *b = *(hnode *const *)pb;
    return (a->start > b->start) - (a->start < b->start);
}

spqr_status cl_hierarchical(const float *X, int64_t N, int d, int k, const spqr_cluster_opts *o, float *C,
                            uint32_t *assign, spqr_cluster_stats *st) {
    const int nth = spqr_num_threads();
    const int batch = nth > 1 ? BATCH : 1;
    const int iters2 = CL_BISECT_ITERS(o->iters);
    htree T = {0};
    T.d = d;
    T.cap = 2 * (k + batch) + 1;
    T.Xp = spqr_malloc_array((size_t)N * d, sizeof(float));
    T.wp = o->weights ? spqr_malloc_array((size_t)N, sizeof(float)) : NULL;
    T.nodes = spqr_calloc_array((size_t)T.cap, sizeof(hnode));
    T.mean = spqr_malloc_array((size_t)T.cap * d, sizeof(double));
    int *heap = spqr_malloc_array((size_t)k + 2, sizeof(int));
    int *todo = spqr_malloc_array((size_t)batch + 1, sizeof(int));
    hnode **leaves = spqr_malloc_array((size_t)k, sizeof(hnode *));
    spqr_status rc = SPQR_OK;
    if (!T.Xp || (o->weights && !T.wp) || !T.nodes || !T.mean || !heap || !todo || !leaves) {
        rc = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (hierarchical, %lld points)", (long long)N);
        goto done;
    }
    memcpy(T.Xp, X, sizeof(float) * (size_t)N * d);
    if (T.wp) memcpy(T.wp, o->weights, sizeof(float) * (size_t)N);

    hnode *root = &T.nodes[0];
    root->start = 0;
    root->n = N;
    range_mean(&T, 0, N, &root->W, T.mean);
    root->sse = root->W > 0 ? range_sse(&T, 0, N, T.mean) : 0.0;
    T.used = 1;
    int hlen = 0, nleaves = 1, ntr = 0, nready = 0; /* nready: splits computed, not committed */
    heap_push(heap, &hlen, T.nodes, 0);
    double total = root->sse;
    while (nleaves < k) {
        const int top = heap[0];
        if (T.nodes[top].ready) { /* commit the split */
            heap_pop(heap, &hlen, T.nodes);
            nready--;
            const hnode *nd = &T.nodes[top];
            total += T.nodes[nd->child[0]].sse + T.nodes[nd->child[1]].sse - nd->sse;
            heap_push(heap, &hlen, T.nodes, nd->child[0]);
            heap_push(heap, &hlen, T.nodes, nd->child[1]);
            nleaves++;
            if (o->trace && ntr < o->trace_cap) o->trace[ntr++] = total;
            continue;
        }
        if (T.nodes[top].n < 2) {
            rc = spqr_fail(SPQR_ERR_INTERNAL, "cluster: hierarchical ran out of clusters to split");
            goto done;
        }
        /* the clusters to split now: the top one alone when big, else the next
         * few small unsplit ones in queue order */
        int nt = 0;
        if (T.nodes[top].n >= cl_hier_parallel_min)
            todo[nt++] = top;
        else {
            /* splits still needed beyond those computed already, at least the top's */
            int popped[4 * BATCH], np = 0, want = k - nleaves - nready;
            if (want > batch) want = batch;
            if (want < 1) want = 1;
            if (want > (int)(sizeof popped / sizeof popped[0])) want = (int)(sizeof popped / sizeof popped[0]);
            while (hlen > 0 && nt < want && np < (int)(sizeof popped / sizeof popped[0])) {
                const hnode *h = &T.nodes[heap[0]];
                if (!h->ready && (h->n >= cl_hier_parallel_min || h->n < 2)) break;
                int id = heap_pop(heap, &hlen, T.nodes);
                popped[np++] = id;
                if (!T.nodes[id].ready) todo[nt++] = id;
            }
            for (int i = 0; i < np; i++) heap_push(heap, &hlen, T.nodes, popped[i]);
        }
        if (T.used + 2 * nt > T.cap) { /* grow the node pool (not during a split) */
            int ncap = 2 * T.cap > T.used + 2 * nt ? 2 * T.cap : T.used + 2 * nt;
            hnode *nn = realloc(T.nodes, sizeof(hnode) * (size_t)ncap);
            if (nn) T.nodes = nn;
            double *nm = nn ? realloc(T.mean, sizeof(double) * (size_t)ncap * d) : NULL;
            if (nm) T.mean = nm;
            if (!nn || !nm) {
                rc = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (hierarchical tree)");
                goto done;
            }
            memset(T.nodes + T.cap, 0, sizeof(hnode) * (size_t)(ncap - T.cap));
            T.cap = ncap;
        }
        nready += nt;
        for (int i = 0; i < nt; i++) {
            T.nodes[todo[i]].child[0] = T.used++;
            T.nodes[todo[i]].child[1] = T.used++;
        }
        int fail = 0;
        if (nt == 1)
            fail = split_node(&T, todo[0], iters2) != SPQR_OK;
        else {
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1) reduction(| : fail)
            for (int i = 0; i < nt; i++) fail |= split_node(&T, todo[i], iters2) != SPQR_OK;
        }
        if (fail) {
            rc = spqr_fail(SPQR_ERR_NOMEM, "cluster: out of memory (hierarchical split)");
            goto done;
        }
    }
    /* leaves in position order -> codewords */
    for (int i = 0; i < hlen; i++) leaves[i] = &T.nodes[heap[i]];
    qsort(leaves, (size_t)hlen, sizeof(hnode *), leaf_cmp);
    for (int j = 0; j < k; j++) {
        const double *m = T.mean + (size_t)(leaves[j] - T.nodes) * d;
        for (int t = 0; t < d; t++) C[(size_t)j * d + t] = (float)m[t];
    }
    free(T.Xp);
    T.Xp = NULL;
    free(T.wp);
    T.wp = NULL;
    cl_pass pr;
    rc = cl_assign_pass(X, N, d, C, k, o->weights, 0, assign, &pr);
    if (rc != SPQR_OK) goto done;
    if (o->trace_len) *o->trace_len = ntr;
    st->sse = pr.sse;
    st->iters_run = k - 1;
    st->reseeded = 0;
done:
    free(T.Xp);
    free(T.wp);
    free(T.nodes);
    free(T.mean);
    free(heap);
    free(todo);
    free(leaves);
    return rc;
}
