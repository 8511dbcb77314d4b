/* calibrate.c - whole-model quantization driven by calibration text.
 *
 * Block by block: the calibration activations X (N windows of S tokens) go
 * through block i; the inputs of each group of linears (q/k/v share one
 * Hessian, gate/up share one) are accumulated into H = 2/N_tok X^T X (float32
 * products over chunks of tokens, summed in float64); the linears are
 * quantized in the order q,k,v -> o -> gate,up -> down, each stage seeing
 * the outputs of the already-quantized ones ("true sequential"); finally X
 * is propagated through the quantized block to feed block i+1. Only one
 * block's weights (float32) and the activations are ever in memory.
 *
 * Any registered method runs here (quantizer.h): the Hessians are computed
 * only for methods that need them, and for methods with a tune_block hook a
 * second activation stream (the fp model's, on fp inputs) gives the hook the
 * fp block's output as its target. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#include "../model/model_file.h"
#include "pipeline.h"
#include "../kernels/cpu/blas_fixed.h"

#define SEQ_BATCH_TOKENS 4096 /* tokens per forward batch during calibration */
#define HESS_CHUNK 256

void spqr_quant_opts_default(spqr_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->nsamples = 128;
    o->seqlen = 0; /* min(2048, context) */
    o->seed = 0;
}

/* ---- Hessian accumulation ------------------------------------------------ */

typedef struct {
    int which;        /* stage: SPQR_LIN_Q / O / GATE / DOWN */
    int cols;
    double *H;        /* [cols][cols] sum of x x^T           */
    float *XtX;         /* float32 chunk product                */
    int64_t ntok;
} hess_acc;

static int hess_hook(void *user, int which, const float *X, int T, int cols) {
    hess_acc *a = user;
    if (which != a->which) return 0;
    size_t C = (size_t)cols;
    for (int t0 = 0; t0 < T; t0 += HESS_CHUNK) {
        int n = T - t0 < HESS_CHUNK ? T - t0 : HESS_CHUNK;
        spqr_ssyrk_fixed(cols, n, 1.0f, X + (size_t)t0 * C, cols, 0.0f, a->XtX,
                    cols);
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads())
        for (size_t i = 0; i < C; i++)
            for (size_t j = i; j < C; j++) a->H[i * C + j] += (double)a->XtX[i * C + j];
    }
    a->ntok += T;
    return 1; /* stop the block forward here */
}

/* ---- calibration windows ----------------------------------------------------- */

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
        size_t start = 1 + (size_t)(spqr_splitmix64(&rng) % (uint64_t)(have - (size_t)S + 1));
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
    float *Xfp;      /* [N*S][dim] the fp model's activations (tune_block) */
    float *Xs;       /* scratch copy for partial forwards                 */
    int N, S, per;   /* windows, window length, windows per batch          */
    double t0;
    int layers_done, layers_total;
    spqr_quant_summary *sum;
    double formula_bits_params;
    spqr_mwriter *w;
    int cur_block;
} pipe_t;

/* H for stage `which` of block l, from the current X. */
static spqr_status stage_hessian(pipe_t *p, int l, int which, int cols, double **Hout) {
    size_t C = (size_t)cols, D = (size_t)p->m->cfg.dim;
    hess_acc a = {which, cols, spqr_calloc_array(C * C, sizeof(double)), spqr_malloc_array(C * C, sizeof(float)), 0};
    spqr_status st = SPQR_OK;
    if (!a.H || !a.XtX) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for a %d x %d Hessian", cols, cols);
    for (int s0 = 0; s0 < p->N && !st; s0 += p->per) {
        int ns = p->N - s0 < p->per ? p->N - s0 : p->per;
        memcpy(p->Xs, p->X + (size_t)s0 * p->S * D, sizeof(float) * (size_t)ns * p->S * D);
        st = spqr_block_forward(p->m, l, p->Xs, ns, p->S, hess_hook, &a);
    }
    free(a.XtX);
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

static void progress_layer(pipe_t *p, int l, int k, const spqr_linear *lin, const spqr_qlayer_report *rep,
                           double real_bits, double t0) {
    p->layers_done++;
    if (!p->o->progress) return;
    spqr_quant_progress d;
    memset(&d, 0, sizeof d);
    d.block = l;
    d.n_blocks = p->m->cfg.n_layers;
    d.layer = spqr_linear_names[k];
    d.rows = lin->rows;
    d.cols = lin->cols;
    d.weight_rel_err = rep->weight_rel_err;
    d.hessian_rel_err = rep->hessian_rel_err;
    d.outlier_share = rep->outlier_share;
    d.formula_bits = rep->formula_bits;
    d.real_bits = real_bits;
    d.seconds = spqr_now() - t0;
    d.elapsed = spqr_now() - p->t0;
    d.eta = d.elapsed / p->layers_done * (p->layers_total - p->layers_done);
    p->o->progress(p->o->user, &d);
}

/* Quantize linear k of block l with the method; *deq_out receives the
 * committed weights (float32) and *q the layer in the method's format. */
static spqr_status quantize_linear(pipe_t *p, int l, int k, const double *H, float **deq_out, spqr_linear *q) {
    spqr_linear *lin = &p->m->blocks[l].lin[k];
    size_t R = (size_t)lin->rows, C = (size_t)lin->cols;
    float *W = spqr_malloc_array(R * C, sizeof(float));
    float *deq = spqr_malloc_array(R * C, sizeof(float));
    spqr_status st = W && deq ? lin->fmt->dequantize(lin->payload, W) : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    double t0 = spqr_now();
    spqr_qlayer_report rep;
    memset(&rep, 0, sizeof rep);
    const spqr_qformat *fmt = NULL;
    void *payload = NULL;
    const spqr_qlayer_ctx ctx = {p->o->seed, l, k};
    if (!st) st = p->o->method->quantize_layer(p->o->params, W, (int)R, (int)C, H, &ctx, &fmt, &payload, deq, &rep);
    free(W);
    if (st) {
        free(deq);
        char why[512];
        snprintf(why, sizeof why, "%s", spqr_last_error());
        return spqr_fail(st, "block %d %s: %s", l, spqr_linear_names[k], why);
    }
    memset(q, 0, sizeof *q);
    spqr_linear_set(q, fmt, payload, (int)R, (int)C);
    q->bias = lin->bias;
    const size_t bytes = fmt->bytes(payload);
    p->sum->quantized_params += (int64_t)(R * C);
    p->sum->quantized_bytes += (int64_t)bytes;
    p->sum->n_outliers += rep.n_outliers;
    p->formula_bits_params += rep.formula_bits * (double)(R * C);
    progress_layer(p, l, k, lin, &rep, 8.0 * (double)bytes / (double)(R * C), t0);
    *deq_out = deq;
    return SPQR_OK;
}

static const int k_stage_first[4] = {SPQR_LIN_Q, SPQR_LIN_O, SPQR_LIN_GATE, SPQR_LIN_DOWN};
static const int k_stage_last[4] = {SPQR_LIN_V, SPQR_LIN_O, SPQR_LIN_UP, SPQR_LIN_DOWN};
static const char *const k_stage_name[4] = {"attention q/k/v", "o_proj", "mlp gate/up", "down_proj"};

/* Forward the fp stream through block l (original weights): the target of
 * a tune_block hook. */
static spqr_status forward_stream(pipe_t *p, int l, float *X) {
    size_t D = (size_t)p->m->cfg.dim;
    spqr_status st = SPQR_OK;
    for (int s0 = 0; s0 < p->N && !st; s0 += p->per) {
        int ns = p->N - s0 < p->per ? p->N - s0 : p->per;
        st = spqr_block_forward(p->m, l, X + (size_t)s0 * p->S * D, ns, p->S, NULL, NULL);
    }
    return st;
}

/* Point l at dense float32 weights w WITHOUT releasing its payload (the
 * caller keeps the original linears and restores or releases them). */
static spqr_status simulate(spqr_linear *l, float *w) {
    spqr_dense *d = malloc(sizeof *d);
    if (!d) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    *d = (spqr_dense){w, SPQR_DT_F32, l->rows, l->cols};
    l->fmt = &spqr_qformat_dense;
    l->payload = d;
    return SPQR_OK;
}

/* Progress text from a tune_block hook (quantizer.h). */
static void pipe_say(void *user, int note, const char *text) {
    pipe_t *p = user;
    if (!p->o->progress) return;
    spqr_quant_progress d;
    memset(&d, 0, sizeof d);
    d.block = p->cur_block;
    d.n_blocks = p->m->cfg.n_layers;
    if (note) d.note = text;
    else d.stage = text;
    d.elapsed = spqr_now() - p->t0;
    p->o->progress(p->o->user, &d);
}

/* Quantize block l. orig: the block's original linears (kept alive by the
 * caller); on return b->lin holds the simulated (dense f32, deq) weights and
 * ql[k] the quantized layers (also written to the file). */
static spqr_status run_block(pipe_t *p, int l, float **deq, spqr_linear *ql) {
    spqr_block *b = &p->m->blocks[l];
    spqr_status st = SPQR_OK;
    p->cur_block = l;
    const unsigned needs = spqr_quantizer_needs(p->o->method, p->o->params);
    const bool tune = (needs & SPQR_QNEED_BLOCK) && p->X;
    if (tune && p->Xfp) st = forward_stream(p, l, p->Xfp); /* fp target, original weights */
    const bool hess = (needs & SPQR_QNEED_HESSIAN) != 0;
    for (int s = 0; s < 4 && !st; s++) {
        int k0 = k_stage_first[s], k1 = k_stage_last[s];
        if (p->o->progress) {
            spqr_quant_progress d;
            memset(&d, 0, sizeof d);
            d.block = l;
            d.n_blocks = p->m->cfg.n_layers;
            d.stage = k_stage_name[s];
            p->o->progress(p->o->user, &d);
        }
        double *H = NULL;
        if (hess) st = stage_hessian(p, l, k0, b->lin[k0].cols, &H);
        for (int k = k0; k <= k1 && !st; k++) {
            st = quantize_linear(p, l, k, H, &deq[k], &ql[k]);
            /* later stages see this layer quantized: its simulated weights */
            if (!st) st = simulate(&b->lin[k], deq[k]);
        }
        free(H);
    }
    if (!st && tune) {
        /* the hook sees the compressed layers themselves */
        spqr_linear sim[SPQR_LIN_PER_BLOCK];
        memcpy(sim, b->lin, sizeof sim);
        memcpy(b->lin, ql, sizeof sim);
        spqr_block_ctx ctx = {p->m, l, p->X, p->Xfp, p->N, p->S, p->o->seed, pipe_say, p, 0, 0, 0, 0, 0};
        st = p->o->method->tune_block(p->o->params, &ctx);
        if (!st && ctx.tuned) {
            p->sum->tuned_blocks++;
            p->sum->tuned_blocks_kept += ctx.kept;
            p->sum->tune_seconds += ctx.tune_seconds;
            p->sum->tune_loss_before += ctx.loss_before;
            p->sum->tune_loss_after += ctx.kept ? ctx.loss_after : ctx.loss_before;
        }
        memcpy(ql, b->lin, sizeof sim);
        memcpy(b->lin, sim, sizeof sim);
        /* the simulated weights follow what the hook left */
        for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st; k++) st = ql[k].fmt->dequantize(ql[k].payload, deq[k]);
    }
    for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st && p->w; k++) st = spqr_mwriter_add_linear(p->w, l, k, &ql[k]);
    if (st) return st;
    if (!p->X) return SPQR_OK; /* no calibration activations */
    /* propagate the calibration activations through the quantized block */
    if (p->o->progress) {
        spqr_quant_progress d;
        memset(&d, 0, sizeof d);
        d.block = l;
        d.n_blocks = p->m->cfg.n_layers;
        d.stage = "propagate";
        p->o->progress(p->o->user, &d);
    }
    if (l + 1 < p->m->cfg.n_layers) st = forward_stream(p, l, p->X);
    return st;
}

/* Provenance: tool, source, method and its parameters, calibration. */
static char *provenance_json(const spqr_model *m, const spqr_quant_opts *o, bool calibrate, int S, uint64_t hash,
                             double secs) {
    const char *calib = calibrate && o->calib_path ? o->calib_path : "";
    const char *base = strrchr(calib, '/');
    base = base ? base + 1 : calib;
    const char *src = strrchr(m->path, '/');
    src = (src && src[1]) ? src + 1 : m->path;
    char hx[17];
    snprintf(hx, sizeof hx, "%016llx", (unsigned long long)hash);
    cJSON *o2 = cJSON_CreateObject();
    if (!o2) return NULL;
    bool ok = cJSON_AddStringToObject(o2, "tool", "spqr") && cJSON_AddStringToObject(o2, "tool_version", SPQR_VERSION_STRING) &&
              cJSON_AddStringToObject(o2, "source_model", src) && cJSON_AddStringToObject(o2, "method", o->method->name);
    if (ok && o->method->provenance(o->params, o2) != SPQR_OK) ok = false;
    ok = ok && cJSON_AddStringToObject(o2, "calib_file", base) && cJSON_AddStringToObject(o2, "calib_xxh3", hx) &&
         cJSON_AddNumberToObject(o2, "nsamples", *calib ? o->nsamples : 0) &&
         cJSON_AddNumberToObject(o2, "seqlen", *calib ? S : 0) && cJSON_AddNumberToObject(o2, "seed", (double)o->seed) &&
         cJSON_AddNumberToObject(o2, "seconds", floor(secs * 100 + 0.5) / 100);
    char *txt = ok ? cJSON_PrintUnformatted(o2) : NULL;
    cJSON_Delete(o2);
    return txt;
}

/* Put back block l's original linears; with keep, keep the simulated ones
 * (their weights then belong to the model) and release the originals. */
static spqr_status restore_block(spqr_model *m, int l, spqr_linear *orig, float **deq, bool keep) {
    spqr_status st = SPQR_OK;
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        spqr_linear *cur = &m->blocks[l].lin[k];
        bool simulated = cur->payload != orig[k].payload;
        if (keep && simulated && st == SPQR_OK) {
            spqr_linear_release(&orig[k]);
            if (spqr_model_own(m, deq[k]) != SPQR_OK) st = SPQR_ERR_NOMEM;
        } else {
            if (simulated) spqr_linear_release(cur);
            *cur = orig[k];
            free(deq[k]);
        }
        deq[k] = NULL;
    }
    return st;
}

spqr_status spqr_quantize_model(spqr_model *m, const spqr_quant_opts *o, spqr_quant_summary *sum) {
    memset(sum, 0, sizeof *sum);
    if (!o->method || !o->params) return spqr_fail(SPQR_ERR_INVALID_ARG, "no quantization method given");
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++)
            if (m->blocks[l].lin[k].fmt != &spqr_qformat_dense)
                return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: the model is already quantized", m->path);
    const unsigned needs = spqr_quantizer_needs(o->method, o->params);
    const bool tune = (needs & SPQR_QNEED_BLOCK) != 0;
    const bool calibrate = (needs & SPQR_QNEED_HESSIAN) || tune; /* RTN needs no data */
    if (calibrate && !o->calib_path) return spqr_fail(SPQR_ERR_INVALID_ARG, "no calibration text given");
    const spqr_config *c = &m->cfg;
    spqr_status st = SPQR_OK;
    for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st; k++)
        st = o->method->validate(o->params, m->blocks[0].lin[k].rows, m->blocks[0].lin[k].cols);
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
    /* the activation streams: in memory, or spilled to a temporary file
     * when together they exceed the cap (spqr_stream_cap_bytes) */
    size_t stream_bytes = 0;
    bool spill = false;
    if (calibrate && ntok > SIZE_MAX / D / sizeof(float) / 2)
        st = spqr_fail(SPQR_ERR_NOMEM, "calibration set too large");
    if (calibrate && !st) {
        stream_bytes = ntok * D * sizeof(float);
        spill = stream_bytes * (tune ? 2 : 1) > spqr_stream_cap_bytes();
        if (spill) {
            void *a = NULL, *b = NULL;
            st = spqr_spill_alloc(stream_bytes, &a);
            if (!st && tune) st = spqr_spill_alloc(stream_bytes, &b);
            p.X = a;
            p.Xfp = b;
            sum->spilled_bytes = (double)stream_bytes * (tune ? 2 : 1);
        } else {
            p.X = spqr_malloc_array(ntok, D * sizeof(float));
            if (tune) p.Xfp = spqr_malloc_array(ntok, D * sizeof(float));
        }
        p.Xs = spqr_malloc_array((size_t)p.per * S, D * sizeof(float));
        if (!st && (!p.X || !p.Xs || (tune && !p.Xfp)))
            st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for calibration activations");
    }
    if (!st && calibrate) {
        spqr_embed(m, tok, (int)ntok, p.X);
        if (p.Xfp) memcpy(p.Xfp, p.X, ntok * D * sizeof(float));
        sum->calib_tokens = (double)ntok;
    }
    free(tok);
    if (!st && o->out_path) st = spqr_mwriter_open(o->out_path, m, &p.w);
    for (int l = 0; l < c->n_layers && !st; l++) {
        spqr_linear orig[SPQR_LIN_PER_BLOCK], ql[SPQR_LIN_PER_BLOCK];
        float *deq[SPQR_LIN_PER_BLOCK] = {0};
        memcpy(orig, m->blocks[l].lin, sizeof orig);
        memset(ql, 0, sizeof ql);
        st = run_block(&p, l, deq, ql);
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) spqr_linear_release(&ql[k]);
        spqr_status rs = restore_block(m, l, orig, deq, o->keep_simulated && !st);
        if (!st) st = rs;
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
            char *prov = provenance_json(m, o, calibrate, S, hash, sum->seconds);
            st = prov ? spqr_mwriter_finish(p.w, prov) : spqr_fail(SPQR_ERR_NOMEM, "out of memory");
            if (!prov) spqr_mwriter_abort(p.w);
            free(prov);
        }
    }
    if (spill) {
        spqr_spill_free(p.X, stream_bytes);
        spqr_spill_free(p.Xfp, stream_bytes);
    } else {
        free(p.X);
        free(p.Xfp);
    }
    free(p.Xs);
    return st;
}
