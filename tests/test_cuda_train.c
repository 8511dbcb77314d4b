/* test_cuda_train.c - the GPU block forward/backward (train/cuda/train_cuda.h)
 * against the CPU engine (spqr_tblock_forward/backward, train.h), which the
 * train tests check against double precision and finite differences.
 *
 * Shapes: awkward tiny blocks (dim 40, hidden 72, 4 query heads on 2 kv
 * heads of head_dim 10, 2 sequences of T1 = 33 then 7 tokens on the same
 * handle, both RoPE layouts, q/k/v biases on one of them) and a medium one
 * (the ref-40m block: dim 512, hidden 1408, 8 / 4 heads of 64, 2 x 128
 * tokens), random weights (W ~ N(0, 1/cols), norms 1 + N(0, 0.1^2)),
 * X ~ N(0, 1), dY ~ N(0, 1).
 *
 * Compared: the output Y, dX and the gradients of the 7 linears and the 2
 * norms. Bound, for each array a: max_i |gpu_i - cpu_i| / max_i |cpu_i| <
 * 1e-4 (TOL). Both sides are float32 with the same operations in the same
 * order except summation orders (cuBLAS vs OpenBLAS, block reductions) and
 * FMA contraction, so the differences are a few float32 roundings of the
 * largest terms (~1e-6 expected); 1e-4 leaves room for the longest sums
 * (256 tokens, 1408 columns). The GPU kernels avoid --use_fast_math's
 * approximations (train_cuda.cu), which this bound also guards.
 *
 * Also checked: backward ADDS into the gradient arrays (a second backward of
 * the same tape gives twice the gradients), NULL gradients are neither
 * computed nor touched, set_linear / set_norms replace the weights, the
 * argument errors, and the stub's SPQR_ERR_UNSUPPORTED in builds without
 * CUDA. Without a CUDA device the comparisons are skipped.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_rt.h"
#include "testutil.h"
#include "train/cuda/train_cuda.h"
#include "train/train.h"

#define TOL 1e-4


static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}
static float *fnormal(size_t n, float sd) {
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = sd * tu_rand_normal();
    return p;
}
static float *fzeros(size_t n) {
    float *p = xmalloc(n * sizeof(float));
    memset(p, 0, n * sizeof(float));
    return p;
}

/* max |a - b| / max |b| (b the CPU's); `scale` multiplies b */
static double rel_err(const float *a, const float *b, size_t n, double scale) {
    double md = 0.0, mb = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - scale * b[i]);
        md = d > md || isnan(d) ? d : md;
        mb = fmax(mb, fabs(scale * b[i]));
    }
    return mb > 0.0 ? md / mb : md;
}

static spqr_config cfg(int dim, int hidden, int nh, int nkv, int hd, int interleaved) {
    spqr_config c = {0};
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = 1;
    c.n_heads = nh;
    c.n_kv_heads = nkv;
    c.head_dim = hd;
    c.vocab_size = 32;
    c.max_seq_len = 4096;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_interleaved = interleaved;
    return c;
}

/* a block's random weights */
typedef struct wts {
    float *norm[2], *W[SPQR_LIN_PER_BLOCK], *bias[SPQR_LIN_PER_BLOCK];
    size_t nW[SPQR_LIN_PER_BLOCK];
    spqr_tblock b;
} wts;

static void wts_init(wts *w, const spqr_config *c, int with_bias) {
    memset(w, 0, sizeof *w);
    int64_t shape[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(c, shape);
    for (int k = 0; k < 2; k++) {
        w->norm[k] = fnormal((size_t)c->dim, 0.1f);
        for (int i = 0; i < c->dim; i++) w->norm[k][i] += 1.0f;
    }
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        w->nW[k] = (size_t)(shape[k][0] * shape[k][1]);
        w->W[k] = fnormal(w->nW[k], 1.0f / sqrtf((float)shape[k][1]));
        if (with_bias && k <= SPQR_LIN_V) w->bias[k] = fnormal((size_t)shape[k][0], 0.5f);
        w->b.W[k] = w->W[k];
        w->b.bias[k] = w->bias[k];
    }
    w->b.attn_norm = w->norm[0];
    w->b.ffn_norm = w->norm[1];
}

static void wts_free(wts *w) {
    for (int k = 0; k < 2; k++) free(w->norm[k]);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) free(w->W[k]), free(w->bias[k]);
}

typedef struct grads {
    float *n[2], *W[SPQR_LIN_PER_BLOCK];
    spqr_tgrads g;
} grads;

static void grads_init(grads *g, const spqr_config *c, const wts *w) {
    memset(g, 0, sizeof *g);
    for (int k = 0; k < 2; k++) g->n[k] = fzeros((size_t)c->dim);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) g->g.W[k] = g->W[k] = fzeros(w->nW[k]);
    g->g.attn_norm = g->n[0];
    g->g.ffn_norm = g->n[1];
}
static void grads_free(grads *g) {
    for (int k = 0; k < 2; k++) free(g->n[k]);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) free(g->W[k]);
}

/* worst error over the gradients of gg against gc (scale: gg should hold
 * scale x gc); prints each; NULL arrays of gg are skipped */
static double grads_err(const grads *gg, const grads *gc, const spqr_config *c, const wts *w, double scale) {
    double worst = 0.0;
    static const char *nn[2] = {"attn_norm", "ffn_norm"};
    for (int k = 0; k < 2; k++) {
        const float *a = k ? gg->g.ffn_norm : gg->g.attn_norm;
        if (!a) continue;
        double e = rel_err(a, gc->n[k], (size_t)c->dim, scale);
        printf(" %s %.1e", nn[k], e);
        worst = fmax(worst, e);
    }
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        if (!gg->g.W[k]) continue;
        double e = rel_err(gg->g.W[k], gc->W[k], w->nW[k], scale);
        printf(" %s %.1e", spqr_linear_names[k], e);
        worst = fmax(worst, e);
    }
    return worst;
}

/* One window of nseq x T1 on the handle h (made for at least that) against the CPU. */
static void check_window(spqr_tblock_gpu *h, const spqr_config *c, const wts *w, int nseq, int T1, const char *what) {
    const size_t nx = (size_t)nseq * T1 * c->dim;
    float *X = fnormal(nx, 1.0f), *dY = fnormal(nx, 1.0f);
    float *Yc = fzeros(nx), *Yg = fzeros(nx), *dXc = fzeros(nx), *dXg = fzeros(nx);
    grads gc, gg;
    grads_init(&gc, c, w);
    grads_init(&gg, c, w);

    spqr_ttape *tape;
    assert_int_equal(spqr_ttape_new(c, nseq, T1, &tape), SPQR_OK);
    assert_int_equal(spqr_tblock_forward(c, &w->b, X, nseq, T1, Yc, tape), SPQR_OK);
    assert_int_equal(spqr_tblock_backward(c, &w->b, tape, dY, dXc, &gc.g), SPQR_OK);

    spqr_status st = spqr_tblock_gpu_forward(h, X, nseq, T1, Yg);
    if (st) printf("forward: %s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    st = spqr_tblock_gpu_backward(h, dY, dXg, &gg.g);
    if (st) printf("backward: %s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);

    double ey = rel_err(Yg, Yc, nx, 1.0), ex = rel_err(dXg, dXc, nx, 1.0);
    printf("%s, %d x %d: Y %.1e dX %.1e", what, nseq, T1, ey, ex);
    double worst = fmax(fmax(ey, ex), grads_err(&gg, &gc, c, w, 1.0));
    printf("\n");
    assert_true(worst < TOL);

    /* a second backward of the same tape adds as much again */
    assert_int_equal(spqr_tblock_gpu_backward(h, dY, NULL, &gg.g), SPQR_OK);
    printf("  second backward (2x):");
    worst = grads_err(&gg, &gc, c, w, 2.0);
    printf("\n");
    assert_true(worst < TOL);

    /* NULL gradients are neither computed nor touched (and dX is optional) */
    float *keepK = gg.g.W[SPQR_LIN_K], *keepN = gg.g.attn_norm;
    memset(keepK, 0, w->nW[SPQR_LIN_K] * sizeof(float));
    memset(keepN, 0, (size_t)c->dim * sizeof(float));
    gg.g.W[SPQR_LIN_K] = NULL;
    gg.g.attn_norm = NULL;
    assert_int_equal(spqr_tblock_gpu_backward(h, dY, NULL, &gg.g), SPQR_OK);
    for (size_t i = 0; i < w->nW[SPQR_LIN_K]; i++) assert_true(keepK[i] == 0.0f);
    for (int i = 0; i < c->dim; i++) assert_true(keepN[i] == 0.0f);
    printf("  partial backward (3x):");
    worst = grads_err(&gg, &gc, c, w, 3.0);
    printf("\n");
    assert_true(worst < TOL);
    gg.g.W[SPQR_LIN_K] = keepK;
    gg.g.attn_norm = keepN;

    spqr_ttape_free(tape);
    grads_free(&gc);
    grads_free(&gg);
    free(X), free(dY), free(Yc), free(Yg), free(dXc), free(dXg);
}

/* argument errors; the stub in builds without CUDA */
static void test_errors(void **state) {
    (void)state;
    spqr_config c = cfg(40, 72, 4, 2, 10, 0);
    spqr_tblock_gpu *h = (spqr_tblock_gpu *)1;
#ifdef SPQR_HAVE_CUDA
    assert_int_equal(spqr_tblock_gpu_new(&c, 0, 7, &h), SPQR_ERR_INVALID_ARG);
    assert_null(h);
    spqr_config bad = c;
    bad.n_kv_heads = 3;
    assert_int_equal(spqr_tblock_gpu_new(&bad, 1, 7, &h), SPQR_ERR_INVALID_ARG);
    assert_true(spqr_tblock_gpu_bytes(&c, 2, 33) > 0);
    assert_int_equal(spqr_tblock_gpu_forward(NULL, NULL, 1, 1, NULL), SPQR_ERR_INVALID_ARG);
    if (!tu_have_gpu()) {
        assert_int_equal(spqr_tblock_gpu_new(&c, 1, 7, &h), SPQR_ERR_NO_DEVICE);
        assert_null(h);
        return;
    }
    assert_int_equal(spqr_tblock_gpu_new(&c, 1, 7, &h), SPQR_OK);
    float x[8 * 40] = {0}, y[8 * 40];
    spqr_tgrads g = {0};
    /* no forward yet; then windows larger than the handle */
    assert_int_equal(spqr_tblock_gpu_backward(h, x, NULL, &g), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_tblock_gpu_forward(h, x, 1, 8, y), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_tblock_gpu_forward(h, x, 2, 4, y), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_tblock_gpu_set_linear(h, SPQR_LIN_PER_BLOCK, x), SPQR_ERR_INVALID_ARG);
    spqr_tblock_gpu_free(h);
    spqr_tblock_gpu_free(NULL);
#else
    assert_int_equal(spqr_tblock_gpu_new(&c, 1, 7, &h), SPQR_ERR_UNSUPPORTED);
    assert_null(h);
    assert_non_null(strstr(spqr_last_error(), "built without CUDA"));
    printf("SKIP: built without CUDA\n");
#endif
}

/* tiny awkward shapes, both RoPE layouts, q/k/v biases on one */
static void test_tiny(void **state) {
    (void)state;
    if (!tu_have_gpu()) skip();
    tu_seed(1301);
    for (int interleaved = 0; interleaved < 2; interleaved++) {
        spqr_config c = cfg(40, 72, 4, 2, 10, interleaved);
        wts w, other;
        wts_init(&w, &c, interleaved);
        wts_init(&other, &c, 0);
        spqr_tblock_gpu *h = NULL;
        spqr_status st = spqr_tblock_gpu_new(&c, 2, 33, &h);
        if (st) printf("new: %s\n", spqr_last_error());
        assert_int_equal(st, SPQR_OK);
        /* other weights first, then the right ones linear by linear: checks
         * set_linear and set_norms (the biases come from set_weights) */
        other.b.bias[SPQR_LIN_Q] = w.bias[SPQR_LIN_Q];
        other.b.bias[SPQR_LIN_K] = w.bias[SPQR_LIN_K];
        other.b.bias[SPQR_LIN_V] = w.bias[SPQR_LIN_V];
        assert_int_equal(spqr_tblock_gpu_set_weights(h, &other.b), SPQR_OK);
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) assert_int_equal(spqr_tblock_gpu_set_linear(h, k, w.W[k]), SPQR_OK);
        assert_int_equal(spqr_tblock_gpu_set_norms(h, w.norm[0], NULL), SPQR_OK);
        assert_int_equal(spqr_tblock_gpu_set_norms(h, NULL, w.norm[1]), SPQR_OK);
        const char *what = interleaved ? "tiny interleaved qkv-bias" : "tiny rotate-half";
        check_window(h, &c, &w, 2, 33, what);
        check_window(h, &c, &w, 2, 7, what); /* a shorter window on the same handle */
        check_window(h, &c, &w, 1, 33, what);
        spqr_tblock_gpu_free(h);
        other.b.bias[SPQR_LIN_Q] = other.b.bias[SPQR_LIN_K] = other.b.bias[SPQR_LIN_V] = NULL;
        wts_free(&w);
        wts_free(&other);
    }
    /* no kv sharing (the dK/dV shares go straight into dK/dV) */
    spqr_config c = cfg(40, 72, 4, 4, 10, 0);
    wts w;
    wts_init(&w, &c, 0);
    spqr_tblock_gpu *h = NULL;
    assert_int_equal(spqr_tblock_gpu_new(&c, 2, 7, &h), SPQR_OK);
    assert_int_equal(spqr_tblock_gpu_set_weights(h, &w.b), SPQR_OK);
    check_window(h, &c, &w, 2, 7, "tiny 4/4 heads");
    spqr_tblock_gpu_free(h);
    wts_free(&w);
}

/* the ref-40m block */
static void test_medium(void **state) {
    (void)state;
    if (!tu_have_gpu()) skip();
    tu_seed(1302);
    spqr_config c = cfg(512, 1408, 8, 4, 64, 0);
    wts w;
    wts_init(&w, &c, 0);
    spqr_tblock_gpu *h = NULL;
    spqr_status st = spqr_tblock_gpu_new(&c, 2, 128, &h);
    if (st) printf("new: %s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    assert_int_equal(spqr_tblock_gpu_set_weights(h, &w.b), SPQR_OK);
    check_window(h, &c, &w, 2, 128, "medium (ref-40m block)");
    spqr_tblock_gpu_free(h);
    wts_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_tiny),
        cmocka_unit_test(test_medium),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
