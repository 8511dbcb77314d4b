/* calibrate.c - whole-model quantization driven by calibration text.
 *
 * Block by block: the calibration activations X (N windows of S tokens) go
 * through block i; the inputs of each group of linears (q/k/v share one
 * Hessian, gate/up share one) are accumulated into H = 2/N_tok X^T X (float32
 * products over chunks of tokens, summed in float64); the linears are
 * quantized in the order q,k,v -> o -> gate,up -> down, each stage seeing
 * the outputs of the already-quantized ones ("true sequential"); finally X
 * is propagated through the quantized block to feed block i+1. Only one
 * block's weights (float32) and the activations are ever in memory. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#include "../eval/eval.h"
#include "../format/model_file.h"
#include "../format/packed.h"
#include "pipeline.h"

#define SEQ_BATCH_TOKENS 4096 /* tokens per forward batch during calibration */
#define HESS_CHUNK 256

void spqr_quant_opts_default(spqr_quant_opts *o) {
    memset(o, 0, sizeof *o);
    spqr_qparams_default(&o->qp, SPQR_METHOD_SPQR);
    o->nsamples = 128;
    o->seqlen = 0; /* min(2048, context) */
    o->seed = 0;
}

/* ---- Hessian accumulation ------------------------------------------------ */

typedef struct {
    int which;        /* stage: SPQR_LIN_Q / O / GATE / DOWN */
    int cols;
    double *H;        /* [cols][cols] sum of x x^T           */
    float *G;         /* float32 chunk product                */
    int64_t ntok;
} hess_acc;

static int hess_hook(void *user, int which, const float *X, int T, int cols) {
    hess_acc *a = user;
    if (which != a->which) return 0;
    size_t C = (size_t)cols;
    for (int t0 = 0; t0 < T; t0 += HESS_CHUNK) {
        int n = T - t0 < HESS_CHUNK ? T - t0 : HESS_CHUNK;
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, n, 1.0f, X + (size_t)t0 * C, cols, 0.0f, a->G,
                    cols);
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
        for (size_t i = 0; i < C; i++)
            for (size_t j = i; j < C; j++) a->H[i * C + j] += (double)a->G[i * C + j];
    }
    a->ntok += T;
    return 1; /* stop the block forward here */
}

/* ---- calibration windows ----------------------------------------------------- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static spqr_status calib_tokens(spqr_model *m, const spqr_quant_opts *o, int S, int32_t **out, uint64_t *hash) {
    char *text = NULL;
    size_t len = 0;
    spqr_status st = spqr_read_file(o->calib_path, &text, &len);
    if (st) return st;
    *hash = XXH3_64bits(text, len);
    int32_t *ids = NULL;
    size_t n = 0;
    if (len == 0) st = spqr_fail(SPQR_ERR_INVALID_ARG, "%s: the calibration text is empty", o->calib_path);
    if (!st) st = spqr_eval_tokenize(m, text, len, &ids, &n);
    free(text);
    if (st) return st;
    /* drop the BOS that tokenize() put first: windows are raw text */
    size_t have = n - 1;
    size_t need = (size_t)o->nsamples * (size_t)S;
    if (have < need) {
        free(ids);
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "%s: calibration text has %zu tokens, fewer than --nsamples %d x --seqlen %d = %zu",
                         o->calib_path, have, o->nsamples, S, need);
    }
    int32_t *w = spqr_malloc_array(need, sizeof(int32_t));
    if (!w) {
        free(ids);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    uint64_t rng = o->seed;
    for (int i = 0; i < o->nsamples; i++) {
        size_t start = 1 + (size_t)(splitmix(&rng) % (uint64_t)(have - (size_t)S + 1));
        memcpy(w + (size_t)i * S, ids + start, sizeof(int32_t) * (size_t)S);
    }
    free(ids);
    *out = w;
    return SPQR_OK;
}

/* ---- the pipeline ------------------------------------------------------------ */

typedef struct {
    spqr_model *m;
    const spqr_quant_opts *o;
    float *X;        /* [N*S][dim] activations entering the current block */
    float *Xs;       /* scratch copy for partial forwards                 */
    int N, S, per;   /* windows, window length, windows per batch          */
    double t0;
    int layers_done, layers_total;
    spqr_quant_summary *sum;
    double formula_bits_params;
    spqr_mwriter *w;
} pipe_t;

/* H for stage `which` of block l, from the current X. */
static spqr_status stage_hessian(pipe_t *p, int l, int which, int cols, double **Hout) {
    size_t C = (size_t)cols, D = (size_t)p->m->cfg.dim;
    hess_acc a = {which, cols, spqr_calloc_array(C * C, sizeof(double)), spqr_malloc_array(C * C, sizeof(float)), 0};
    spqr_status st = SPQR_OK;
    if (!a.H || !a.G) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for a %d x %d Hessian", cols, cols);
    for (int s0 = 0; s0 < p->N && !st; s0 += p->per) {
        int ns = p->N - s0 < p->per ? p->N - s0 : p->per;
        memcpy(p->Xs, p->X + (size_t)s0 * p->S * D, sizeof(float) * (size_t)ns * p->S * D);
        st = spqr_block_forward(p->m, l, p->Xs, ns, p->S, hess_hook, &a);
    }
    free(a.G);
    if (st) {
        free(a.H);
        return st;
    }
    double scale = 2.0 / (double)a.ntok;
    for (size_t i = 0; i < C; i++)
        for (size_t j = i; j < C; j++) {
            double v = a.H[i * C + j] * scale;
            if (!isfinite(v)) {
                free(a.H);
                return spqr_fail(SPQR_ERR_NUMERIC, "block %d: the Hessian of %s has NaN/Inf entries (activations "
                                                   "overflowed or weights hold NaN)", l, spqr_linear_names[which]);
            }
            a.H[i * C + j] = a.H[j * C + i] = v;
        }
    *Hout = a.H;
    return SPQR_OK;
}

static spqr_status quantize_linear(pipe_t *p, int l, int k, const double *H, float **deq_out) {
    spqr_linear *lin = &p->m->blocks[l].lin[k];
    size_t R = (size_t)lin->rows, C = (size_t)lin->cols;
    float *W = spqr_malloc_array(R * C, sizeof(float));
    if (!W) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_to_f32(lin->w.data, lin->w.dt, R * C, W);
    double t0 = spqr_now();
    spqr_qlayer q;
    spqr_qlayer_report rep;
    memset(&q, 0, sizeof q);
    spqr_status st = spqr_quantize_layer(W, (int)R, (int)C, H, &p->o->qp, &q, &rep);
    if (st) {
        free(W);
        char why[512];
        snprintf(why, sizeof why, "%s", spqr_last_error());
        return spqr_fail(st, "block %d %s: %s", l, spqr_linear_names[k], why);
    }
    spqr_qlayer_dequantize(&q, W); /* W now holds the simulated weights */
    spqr_packed pk;
    memset(&pk, 0, sizeof pk);
    st = spqr_pack(&q, &pk);
    spqr_qlayer_free(&q);
    if (!st && p->w) st = spqr_mwriter_add_packed(p->w, l, k, &pk, lin->bias);
    double real_bits = 8.0 * (double)spqr_packed_bytes(&pk) / (double)(R * C);
    if (!st) {
        p->sum->quantized_params += (int64_t)(R * C);
        p->sum->quantized_bytes += (int64_t)spqr_packed_bytes(&pk);
        p->sum->n_outliers += rep.n_outliers;
        p->formula_bits_params += rep.formula_bits * (double)(R * C);
    }
    spqr_packed_free(&pk);
    if (st) {
        free(W);
        return st;
    }
    p->layers_done++;
    if (p->o->on_layer) {
        spqr_layer_done d;
        d.block = l;
        d.n_blocks = p->m->cfg.n_layers;
        d.name = spqr_linear_names[k];
        d.rows = (int)R;
        d.cols = (int)C;
        d.rep = rep;
        d.real_bits = real_bits;
        d.seconds = spqr_now() - t0;
        d.elapsed = spqr_now() - p->t0;
        d.eta = d.elapsed / p->layers_done * (p->layers_total - p->layers_done);
        p->o->on_layer(p->o->user, &d);
    }
    *deq_out = W;
    return SPQR_OK;
}

static const int k_stage_first[4] = {SPQR_LIN_Q, SPQR_LIN_O, SPQR_LIN_GATE, SPQR_LIN_DOWN};
static const int k_stage_last[4] = {SPQR_LIN_V, SPQR_LIN_O, SPQR_LIN_UP, SPQR_LIN_DOWN};
static const char *const k_stage_name[4] = {"attention q/k/v", "o_proj", "mlp gate/up", "down_proj"};

static spqr_status run_block(pipe_t *p, int l, float **deq) {
    spqr_block *b = &p->m->blocks[l];
    spqr_status st = SPQR_OK;
    for (int s = 0; s < 4 && !st; s++) {
        int k0 = k_stage_first[s], k1 = k_stage_last[s];
        if (p->o->on_stage) p->o->on_stage(p->o->user, l, k_stage_name[s]);
        double *H = NULL;
        if (p->o->qp.method != SPQR_METHOD_RTN) st = stage_hessian(p, l, k0, b->lin[k0].cols, &H);
        for (int k = k0; k <= k1 && !st; k++) {
            st = quantize_linear(p, l, k, H, &deq[k]);
            if (!st) { /* later stages see this layer quantized */
                b->lin[k].w = (spqr_tensor){deq[k], SPQR_DT_F32, b->lin[k].rows, b->lin[k].cols};
            }
        }
        free(H);
    }
    if (st) return st;
    if (!p->X) return SPQR_OK; /* RTN: no calibration activations */
    /* propagate the calibration activations through the quantized block */
    if (p->o->on_stage) p->o->on_stage(p->o->user, l, "propagate");
    size_t D = (size_t)p->m->cfg.dim;
    for (int s0 = 0; s0 < p->N && !st && l + 1 < p->m->cfg.n_layers; s0 += p->per) {
        int ns = p->N - s0 < p->per ? p->N - s0 : p->per;
        st = spqr_block_forward(p->m, l, p->X + (size_t)s0 * p->S * D, ns, p->S, NULL, NULL);
    }
    return st;
}

static char *provenance_json(const spqr_model *m, const spqr_quant_opts *o, int S, uint64_t hash, double secs) {
    const spqr_qparams *q = &o->qp;
    const char *method = q->method == SPQR_METHOD_RTN ? "rtn" : q->method == SPQR_METHOD_GPTQ ? "gptq" : "spqr";
    const char *calib = q->method == SPQR_METHOD_RTN || !o->calib_path ? "" : o->calib_path;
    const char *base = strrchr(calib, '/');
    base = base ? base + 1 : calib;
    const char *src = strrchr(m->path, '/');
    src = (src && src[1]) ? src + 1 : m->path;
    char *buf = malloc(4096);
    if (!buf) return NULL;
    /* names are written through a JSON-safe filter: drop quotes/backslashes/control chars */
    char b1[512], b2[512];
    size_t k = 0;
    for (const char *c = base; *c && k + 1 < sizeof b1; c++)
        if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20) b1[k++] = *c;
    b1[k] = 0;
    k = 0;
    for (const char *c = src; *c && k + 1 < sizeof b2; c++)
        if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20) b2[k++] = *c;
    b2[k] = 0;
    snprintf(buf, 4096,
             "{\"tool\":\"spqr\",\"tool_version\":\"%s\",\"source_model\":\"%s\",\"method\":\"%s\",\"wbits\":%d,"
             "\"beta1\":%d,\"beta2\":%d,\"sbits\":%d,\"zbits\":%d,\"tau\":%.6g,\"simplified_outliers\":%s,"
             "\"perm\":\"%s\",\"percdamp\":%.6g,\"blocksize\":%d,\"calib_file\":\"%s\",\"calib_xxh3\":\"%016llx\","
             "\"nsamples\":%d,\"seqlen\":%d,\"seed\":%llu,\"seconds\":%.2f}",
             SPQR_VERSION_STRING, b2, method, q->wbits, q->beta1, q->beta2, q->sbits, q->zbits, q->tau,
             q->simplified_outliers ? "true" : "false", q->act_order ? "act-order" : "identity", q->percdamp,
             q->blocksize, b1, (unsigned long long)hash, *calib ? o->nsamples : 0, *calib ? S : 0,
             (unsigned long long)o->seed, secs);
    return buf;
}

spqr_status spqr_quantize_model(spqr_model *m, const spqr_quant_opts *o, spqr_quant_summary *sum) {
    memset(sum, 0, sizeof *sum);
    if (m->source == SPQR_SRC_SPQR)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: the model is already quantized", m->path);
    bool calibrate = o->qp.method != SPQR_METHOD_RTN; /* RTN needs no data */
    if (calibrate && !o->calib_path) return spqr_fail(SPQR_ERR_INVALID_ARG, "no calibration text given");
    const spqr_config *c = &m->cfg;
    spqr_status st = SPQR_OK;
    for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st; k++) {
        int cols = m->blocks[0].lin[k].cols;
        st = spqr_qparams_validate(&o->qp, cols);
    }
    if (st) return st;
    int S = o->seqlen > 0 ? o->seqlen : (c->max_seq_len < 2048 ? c->max_seq_len : 2048);
    if (S > c->max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "--seqlen %d is longer than the model's context of %d tokens", S,
                         c->max_seq_len);
    if (o->nsamples < 1 || S < 2) return spqr_fail(SPQR_ERR_INVALID_ARG, "need --nsamples >= 1 and --seqlen >= 2");
    int32_t *tok = NULL;
    uint64_t hash = 0;
    if (calibrate && (st = calib_tokens(m, o, S, &tok, &hash))) return st;

    pipe_t p;
    memset(&p, 0, sizeof p);
    p.m = m;
    p.o = o;
    p.N = o->nsamples;
    p.S = S;
    p.per = SEQ_BATCH_TOKENS / S > 0 ? SEQ_BATCH_TOKENS / S : 1;
    p.sum = sum;
    p.t0 = spqr_now();
    p.layers_total = c->n_layers * SPQR_LIN_PER_BLOCK;
    size_t D = (size_t)c->dim, ntok = (size_t)p.N * (size_t)S;
    if (calibrate) {
        p.X = spqr_malloc_array(ntok, D * sizeof(float));
        p.Xs = spqr_malloc_array((size_t)p.per * S, D * sizeof(float));
        if (!p.X || !p.Xs) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for calibration activations");
    }
    float **deq = calloc((size_t)c->n_layers * SPQR_LIN_PER_BLOCK, sizeof(float *));
    spqr_linear *orig = malloc(sizeof(spqr_linear) * (size_t)c->n_layers * SPQR_LIN_PER_BLOCK);
    if (!st && (!deq || !orig)) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->n_layers && orig; l++)
        memcpy(orig + (size_t)l * SPQR_LIN_PER_BLOCK, m->blocks[l].lin, sizeof(spqr_linear) * SPQR_LIN_PER_BLOCK);
    if (!st && calibrate) {
        spqr_embed(m, tok, (int)ntok, p.X);
        sum->calib_tokens = (double)ntok;
    }
    free(tok);
    if (!st && o->out_path) st = spqr_mwriter_open(o->out_path, m, &p.w);
    for (int l = 0; l < c->n_layers && !st; l++) {
        st = run_block(&p, l, deq + (size_t)l * SPQR_LIN_PER_BLOCK);
        if (!o->keep_simulated) { /* back to the original weights; free this block's copies */
            memcpy(m->blocks[l].lin, orig + (size_t)l * SPQR_LIN_PER_BLOCK, sizeof(spqr_linear) * SPQR_LIN_PER_BLOCK);
            for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
                free(deq[(size_t)l * SPQR_LIN_PER_BLOCK + k]);
                deq[(size_t)l * SPQR_LIN_PER_BLOCK + k] = NULL;
            }
        }
    }
    sum->seconds = spqr_now() - p.t0;
    if (sum->quantized_params > 0) {
        sum->avg_bits_formula = p.formula_bits_params / (double)sum->quantized_params;
        sum->avg_bits_real = 8.0 * (double)sum->quantized_bytes / (double)sum->quantized_params;
        sum->outlier_share = (double)sum->n_outliers / (double)sum->quantized_params;
    }
    if (p.w) {
        if (st) {
            spqr_mwriter_abort(p.w);
        } else {
            char *prov = provenance_json(m, o, S, hash, sum->seconds);
            st = prov ? spqr_mwriter_finish(p.w, prov) : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
            if (!prov) spqr_mwriter_abort(p.w);
            free(prov);
        }
    }
    /* simulated weights stay alive with the model when asked for */
    for (size_t i = 0; i < (size_t)c->n_layers * SPQR_LIN_PER_BLOCK; i++) {
        if (!deq || !deq[i]) continue;
        if (st) {
            free(deq[i]);
        } else if (spqr_model_own(m, deq[i]) != SPQR_OK) {
            st = SPQR_ERR_NOMEM;
        }
    }
    if (st && orig) /* never leave the model pointing at freed buffers */
        for (int l = 0; l < c->n_layers; l++)
            memcpy(m->blocks[l].lin, orig + (size_t)l * SPQR_LIN_PER_BLOCK, sizeof(spqr_linear) * SPQR_LIN_PER_BLOCK);
    free(deq);
    free(orig);
    free(p.X);
    free(p.Xs);
    return st;
}
