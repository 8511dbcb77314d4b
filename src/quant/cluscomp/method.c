/* method.c - ClusComp (Liao et al., 2025) as a registered quantization
 * method: cut each weight matrix into sub-vectors of d consecutive output
 * rows of one input column, cluster them into one codebook of n entries
 * (cluster.h: k-means as the authors do, or a hierarchical method or a
 * Gaussian mixture for the ablation), optionally tune the codebook
 * (tune_layer.c), and store the layer in the "cluscomp" format
 * (formats/cluscomp). The paper mapping and our departures are in
 * docs/ALGORITHM.md. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "../../formats/cluscomp/cluscomp.h"
#include "../quantizer.h"
#include "cluscomp_quant.h"

#define CP(f) offsetof(spqr_cc_params, f)

static const spqr_qopt k_opts[] = {
    {"cluster-dim", SPQR_QOPT_INT, CP(d), 1, SPQR_CC_MAX_D, NULL,
     "sub-vector length d along the output dimension, 1..64 (4)", NULL},
    {"clusters", SPQR_QOPT_INT, CP(n), 1, SPQR_CC_MAX_N, NULL, "codebook entries n per matrix, 1..2^24 (4096)", NULL},
    {"cluster-algo", SPQR_QOPT_CHOICE, CP(algo), 0, 0, "kmeans|hierarchical|gmm",
     "clustering: kmeans, hierarchical (bisecting k-means) or gmm (diagonal Gaussian mixture) (kmeans)", NULL},
    {"cluster-init", SPQR_QOPT_CHOICE, CP(init), 0, 0, "random|kmeans++",
     "k-means seeding: random points (the authors') or kmeans++ (random)", NULL},
    {"cluster-iters", SPQR_QOPT_INT, CP(iters), 0, 1000, NULL, "Lloyd / EM iterations (20)", NULL},
    {"tune", SPQR_QOPT_CHOICE, CP(tune), 0, 0, "none|layer|block|layer+block",
     "codebook tuning: none; layer = exact minimum of each layer's Hessian-weighted output error; block = AdamW "
     "on the codebooks so each block reproduces the fp block's output (the authors'); layer+block = block tuning "
     "from the layer-tuned codebooks (layer)",
     NULL},
    {"tune-iters", SPQR_QOPT_INT, CP(tune_iters), 0, 100000, NULL,
     "conjugate-gradient steps of layer tuning (50)", NULL},
    SPQR_BTUNE_OPTIONS(spqr_cc_params, bt, "block tuning: epochs over the calibration windows (20)",
                       "block tuning: AdamW learning rate (1e-3; the authors' 5e-3 diverged on ref-40m, docs/ALGORITHM.md)", "block tuning: AdamW weight decay (0.1)",
                       "block tuning: also retrain the blocks' RMSNorm weights (no)"),
};
#define N_OPTS ((int)(sizeof k_opts / sizeof *k_opts))

static void defaults(void *params) {
    spqr_cc_params *p = params;
    *p = (spqr_cc_params){.d = 4,
                          .n = 4096,
                          .algo = SPQR_CLUSTER_KMEANS,
                          .init = SPQR_CLUSTER_INIT_RANDOM,
                          .iters = 20,
                          .tune = SPQR_CC_TUNE_LAYER,
                          .tune_iters = 50,
                          .bt = {.epochs = 20, .lr = 1e-3, .wd = 0.1, .batch = 1}};
}

static spqr_status validate(const void *params, int rows, int cols) {
    const spqr_cc_params *p = params;
    if (p->d < 1 || p->d > SPQR_CC_MAX_D)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "--cluster-dim %d: must be 1..%d", p->d, SPQR_CC_MAX_D);
    if (p->n < 1 || p->n > SPQR_CC_MAX_N)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "--clusters %d: must be 1..%d (indices of at most 24 bits)", p->n,
                         SPQR_CC_MAX_N);
    if (p->d > rows)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "--cluster-dim %d is longer than a %dx%d layer's output dimension (sub-vectors run along it)",
                         p->d, rows, cols);
    const int64_t nb = (rows + (int64_t)p->d - 1) / p->d, nsub = nb * (int64_t)cols;
    if (p->n > nsub)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "--clusters %d is more than the %lld sub-vectors of a %dx%d layer at --cluster-dim %d", p->n,
                         (long long)nsub, rows, cols, p->d);
    if (p->iters < 0 || p->tune_iters < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "iteration counts must be >= 0");
    return SPQR_OK;
}

static unsigned needs_of(const void *params) {
    const spqr_cc_params *p = params;
    unsigned need = 0;
    if (p->tune == SPQR_CC_TUNE_LAYER || p->tune == SPQR_CC_TUNE_LAYER_BLOCK) need |= SPQR_QNEED_HESSIAN;
    if (p->tune == SPQR_CC_TUNE_BLOCK || p->tune == SPQR_CC_TUNE_LAYER_BLOCK) need |= SPQR_QNEED_BLOCK;
    return need;
}

static spqr_status tune_block(const void *params, spqr_block_ctx *ctx) {
    const spqr_cc_params *p = params;
    if (p->tune != SPQR_CC_TUNE_BLOCK && p->tune != SPQR_CC_TUNE_LAYER_BLOCK) return SPQR_OK;
    return spqr_btune_run(&p->bt, ctx);
}

/* splitmix64: a layer's clustering seed from the run's seed and its place */
static uint64_t layer_seed(const spqr_qlayer_ctx *ctx) {
    uint64_t z = (ctx ? ctx->seed : 0) ^ (0x9e3779b97f4a7c15ull * (uint64_t)(1 + (ctx ? ctx->block * 64 + ctx->which : 0)));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static spqr_status quantize_layer(const void *params, const float *W, int rows, int cols, const double *H,
                                  const spqr_qlayer_ctx *ctx, const spqr_qformat **fmt, void **payload,
                                  float *committed, spqr_qlayer_report *rep) {
    const spqr_cc_params *p = params;
    spqr_status st = validate(p, rows, cols);
    if (st) return st;
    const int d = p->d, n = p->n, nb = (rows + d - 1) / d;
    const int64_t N = (int64_t)nb * cols;
    /* sub-vector (b, j) = rows b*d .. b*d+d-1 of column j, zero-padded */
    float *X = spqr_calloc_array((size_t)N, (size_t)d * sizeof(float));
    float *C = spqr_malloc_array((size_t)n, (size_t)d * sizeof(float));
    uint32_t *idx = spqr_malloc_array((size_t)N, sizeof(uint32_t));
    spqr_cc_layer *L = NULL;
    if (!X || !C || !idx) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for %lld sub-vectors", (long long)N);
        goto done;
    }
    for (int r = 0; r < rows; r++) {
        const int b = r / d, t = r % d;
        for (int j = 0; j < cols; j++) X[((size_t)b * cols + j) * d + t] = W[(size_t)r * cols + j];
    }
    spqr_cluster_opts o;
    spqr_cluster_opts_default(&o);
    o.algo = (spqr_cluster_algo)p->algo;
    o.init = (spqr_cluster_init)p->init;
    o.iters = p->iters;
    o.seed = layer_seed(ctx);
    st = spqr_cluster(X, N, d, n, &o, C, idx, NULL);
    if (st) goto done;
    free(X);
    X = NULL;
    if (p->tune == SPQR_CC_TUNE_LAYER || p->tune == SPQR_CC_TUNE_LAYER_BLOCK) {
        if (!H) {
            st = spqr_fail(SPQR_ERR_INVALID_ARG, "--tune layer needs calibration data (a Hessian)");
            goto done;
        }
        st = spqr_cc_tune_layer(W, rows, cols, H, d, n, idx, p->tune_iters, C, NULL);
        if (st) goto done;
    }
    st = spqr_cc_layer_build(rows, cols, d, n, C, idx, &L);
    if (!st) st = spqr_qformat_cluscomp.dequantize(L, committed);
    if (st) goto done;
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        const double e = (double)committed[i] - W[i];
        num += e * e;
        den += (double)W[i] * W[i];
    }
    memset(rep, 0, sizeof *rep);
    rep->weight_rel_err = den > 0 ? sqrt(num / den) : 0;
    if (H) {
        double ref = 0;
        st = spqr_cc_hessian_err(W, committed, rows, cols, H, &rep->hessian_err, &ref);
        if (st) goto done;
        rep->hessian_rel_err = ref > 0 ? rep->hessian_err / ref : 0;
    }
    rep->formula_bits = spqr_qformat_cluscomp.formula_bits(L);
    *fmt = &spqr_qformat_cluscomp;
    *payload = L;
    L = NULL;
done:
    spqr_cc_layer_free(L);
    free(X);
    free(C);
    free(idx);
    return st;
}

static spqr_status provenance(const void *params, cJSON *o) {
    const spqr_cc_params *p = params;
    static const char *const algo[] = {"kmeans", "hierarchical", "gmm"};
    static const char *const init[] = {"random", "kmeans++"};
    static const char *const tune[] = {"none", "layer", "block", "layer+block"};
    bool ok = cJSON_AddNumberToObject(o, "cluster_dim", p->d) && cJSON_AddNumberToObject(o, "clusters", p->n) &&
              cJSON_AddStringToObject(o, "cluster_algo", algo[p->algo]) &&
              cJSON_AddStringToObject(o, "cluster_init", init[p->init]) &&
              cJSON_AddNumberToObject(o, "cluster_iters", p->iters) &&
              cJSON_AddStringToObject(o, "tune", tune[p->tune]) &&
              cJSON_AddNumberToObject(o, "tune_iters", p->tune_iters) &&
              cJSON_AddStringToObject(o, "codebook_scope", "matrix") &&
              (p->tune < SPQR_CC_TUNE_BLOCK || spqr_btune_provenance(&p->bt, o));
    return ok ? SPQR_OK : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
}

const spqr_quantizer spqr_quantizer_cluscomp = {
    .name = "cluscomp",
    .summary = "ClusComp: sub-vectors clustered into one codebook per matrix (Liao et al. 2025)",
    .options = k_opts,
    .n_options = N_OPTS,
    .params_size = sizeof(spqr_cc_params),
    .defaults = defaults,
    .validate = validate,
    .needs = SPQR_QNEED_HESSIAN,
    .needs_of = needs_of,
    .quantize_layer = quantize_layer,
    .tune_block = tune_block,
    .provenance = provenance,
};
