/* tune.c - the block tuner (tune.h). */
#include "tune.h"

#include "cuda/train_cuda.h"

#include <math.h>
#include <stdlib.h>

void spqr_tune_opts_default(spqr_tune_opts *o) {
    memset(o, 0, sizeof *o);
    o->epochs = 20;
    o->lr = 5e-3;
    o->wd = 0.1;
    o->schedule = SPQR_LR_CONSTANT;
    o->batch = 1;
    o->train_layers = 1;
    o->train_norms = 0;
}

/* One trained parameter group: a layer's format parameters or a norm. */
typedef struct {
    int k;            /* linear index, or -1 / -2 for attn / ffn norm */
    size_t n;
    float *theta;     /* master copy (float32)                        */
    float *theta0;    /* the starting values                          */
    float *g;         /* gradient                                     */
    float *scale;     /* per-value step scale (format's train_scale)  */
    spqr_adamw opt;
    double lr_scale;
} group_t;

typedef struct {
    spqr_model *m;
    spqr_block *b;
    const spqr_config *c;
    spqr_tblock tb;
    float *W[SPQR_LIN_PER_BLOCK];  /* dense weights of every linear     */
    float *gW[SPQR_LIN_PER_BLOCK]; /* dL/dW of the trained ones         */
    float *norm[2], *gnorm[2];     /* trained norms (NULL: fixed)        */
    group_t grp[SPQR_LIN_PER_BLOCK + 2];
    int ngrp;
    size_t bytes;
    spqr_tblock_gpu *gpu; /* the GPU path (NULL: CPU)                    */
    int gpu_batch;        /* windows the GPU handle holds                */
} tuner;

static spqr_status fwd(tuner *t, const float *X, int ns, int S, float *Y, spqr_ttape *tape) {
    if (t->gpu) return spqr_tblock_gpu_forward(t->gpu, X, ns, S, Y);
    return spqr_tblock_forward(t->c, &t->tb, X, ns, S, Y, tape);
}

static void *talloc(tuner *t, size_t n, size_t size) {
    void *p = spqr_calloc_array(n, size);
    if (p) t->bytes += n * size;
    return p;
}

/* MSE of the block over windows [0, nseq) with the current parameters. */
static spqr_status eval_loss(tuner *t, const float *X, const float *Yref, int nseq, int S, int per, float *Yb,
                             double *loss) {
    size_t D = (size_t)t->c->dim;
    double sum = 0.0;
    if (t->gpu) per = t->gpu_batch;
    for (int s0 = 0; s0 < nseq; s0 += per) {
        int ns = nseq - s0 < per ? nseq - s0 : per;
        size_t off = (size_t)s0 * (size_t)S * D, n = (size_t)ns * (size_t)S * D;
        spqr_status st = fwd(t, X + off, ns, S, Yb, NULL);
        if (st) return st;
        double part = 0.0;
#pragma omp parallel for reduction(+ : part) schedule(static) num_threads(spqr_num_threads())
        for (size_t i = 0; i < n; i++) {
            double d = (double)Yb[i] - (double)Yref[off + i];
            part += d * d;
        }
        sum += part;
    }
    *loss = sum / ((double)nseq * (double)S * (double)D);
    return SPQR_OK;
}

/* Push the master values of every group into the block (formats round them
 * to their stored precision) and refresh the dense weights. */
static spqr_status apply(tuner *t, int use_start) {
    size_t D = (size_t)t->c->dim;
    for (int i = 0; i < t->ngrp; i++) {
        group_t *g = &t->grp[i];
        const float *v = use_start ? g->theta0 : g->theta;
        if (g->k < 0) {
            memcpy(t->norm[-g->k - 1], v, D * sizeof(float));
            continue;
        }
        spqr_linear *lin = &t->b->lin[g->k];
        spqr_status st = lin->fmt->train_set(lin->payload, v);
        if (!st) st = lin->fmt->dequantize(lin->payload, t->W[g->k]);
        if (!st && t->gpu) st = spqr_tblock_gpu_set_linear(t->gpu, g->k, t->W[g->k]);
        if (st) return st;
    }
    if (t->gpu && (t->norm[0] || t->norm[1])) return spqr_tblock_gpu_set_norms(t->gpu, t->tb.attn_norm, t->tb.ffn_norm);
    return SPQR_OK;
}

static void tuner_free(tuner *t) {
    spqr_tblock_gpu_free(t->gpu);
    for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
        free(t->W[k]);
        free(t->gW[k]);
    }
    for (int i = 0; i < 2; i++) {
        free(t->norm[i]);
        free(t->gnorm[i]);
    }
    for (int i = 0; i < t->ngrp; i++) {
        free(t->grp[i].theta);
        free(t->grp[i].theta0);
        free(t->grp[i].g);
        free(t->grp[i].scale);
        spqr_adamw_free(&t->grp[i].opt);
    }
}

static spqr_status tuner_init(tuner *t, spqr_model *m, int layer, const spqr_tune_opts *o) {
    memset(t, 0, sizeof *t);
    t->m = m;
    t->b = &m->blocks[layer];
    t->c = &m->cfg;
    size_t D = (size_t)m->cfg.dim;
    spqr_status st = SPQR_OK;
    for (int k = 0; k < SPQR_LIN_PER_BLOCK && !st; k++) {
        spqr_linear *lin = &t->b->lin[k];
        size_t R = (size_t)lin->rows, C = (size_t)lin->cols;
        t->W[k] = talloc(t, R * C, sizeof(float));
        if (!t->W[k]) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the block's weights");
        if ((st = lin->fmt->dequantize(lin->payload, t->W[k]))) return st;
        t->tb.W[k] = t->W[k];
        t->tb.bias[k] = lin->bias;
        size_t n = o->train_layers && lin->fmt->train_count ? lin->fmt->train_count(lin->payload) : 0;
        if (n == 0) continue;
        group_t *g = &t->grp[t->ngrp++];
        g->k = k;
        g->n = n;
        g->lr_scale = 1.0;
        g->theta = talloc(t, n, sizeof(float));
        g->theta0 = talloc(t, n, sizeof(float));
        g->g = talloc(t, n, sizeof(float));
        t->gW[k] = talloc(t, R * C, sizeof(float));
        if (!g->theta || !g->theta0 || !g->g || !t->gW[k])
            return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the trained parameters of %s",
                             spqr_linear_names[k]);
        lin->fmt->train_get(lin->payload, g->theta);
        if (lin->fmt->train_scale) {
            if (!(g->scale = talloc(t, n, sizeof(float)))) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
            lin->fmt->train_scale(lin->payload, g->scale);
        }
        memcpy(g->theta0, g->theta, n * sizeof(float));
        if ((st = spqr_adamw_init(&g->opt, n, o->wd))) return st;
        t->bytes += 2 * n * sizeof(float);
    }
    const float *src[2] = {t->b->attn_norm, t->b->ffn_norm};
    for (int i = 0; i < 2; i++) {
        if (!o->train_norms) continue;
        t->norm[i] = talloc(t, D, sizeof(float));
        t->gnorm[i] = talloc(t, D, sizeof(float));
        group_t *g = &t->grp[t->ngrp++];
        g->k = -1 - i;
        g->n = D;
        g->lr_scale = o->norm_lr > 0 ? o->norm_lr / o->lr : 1.0;
        g->theta = talloc(t, D, sizeof(float));
        g->theta0 = talloc(t, D, sizeof(float));
        if (!t->norm[i] || !t->gnorm[i] || !g->theta || !g->theta0)
            return spqr_fail(SPQR_ERR_NOMEM, "out of memory for the norms");
        memcpy(t->norm[i], src[i], D * sizeof(float));
        memcpy(g->theta, src[i], D * sizeof(float));
        memcpy(g->theta0, src[i], D * sizeof(float));
        if ((st = spqr_adamw_init(&g->opt, D, 0.0))) return st; /* no decay on norms */
        t->bytes += 2 * D * sizeof(float);
    }
    t->tb.attn_norm = t->norm[0] ? t->norm[0] : t->b->attn_norm;
    t->tb.ffn_norm = t->norm[1] ? t->norm[1] : t->b->ffn_norm;
    return SPQR_OK;
}

spqr_status spqr_tune_block(spqr_model *m, int layer, const float *X_in, const float *Y_ref, int nseq, int seqlen,
                            const spqr_tune_opts *o, spqr_tune_report *rep) {
    memset(rep, 0, sizeof *rep);
    if (!m || layer < 0 || layer >= m->cfg.n_layers || !X_in || !Y_ref || nseq < 1 || seqlen < 1 || !o)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tune_block: bad arguments");
    if (o->epochs < 0 || o->batch < 1 || !(o->lr >= 0) || !(o->wd >= 0) || !isfinite(o->lr) || !isfinite(o->wd))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "block tuning: need epochs >= 0, batch >= 1, lr >= 0, wd >= 0");
    const double t0 = spqr_now();
    tuner t;
    spqr_status st = tuner_init(&t, m, layer, o);
    const int B = o->batch < nseq ? o->batch : nseq;
    const int per = 4096 / seqlen > B ? 4096 / seqlen : B; /* windows per evaluation batch */
    const size_t D = (size_t)m->cfg.dim, S = (size_t)seqlen;
    float *Xb = NULL, *Yb = NULL, *Rb = NULL;
    int *order = NULL;
    spqr_ttape *tape = NULL;
    if (!st) {
        Xb = talloc(&t, (size_t)B * S, D * sizeof(float));
        Rb = talloc(&t, (size_t)B * S, D * sizeof(float));
        Yb = talloc(&t, (size_t)per * S, D * sizeof(float));
        order = spqr_malloc_array((size_t)nseq, sizeof(int));
        if (!Xb || !Yb || !Rb || !order) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory for block tuning");
    }
    if (!st && o->gpu) { /* the GPU holds the weights, the tape and the workspace */
        t.gpu_batch = B;
        st = spqr_tblock_gpu_new(&m->cfg, B, seqlen, &t.gpu);
        if (!st) st = spqr_tblock_gpu_set_weights(t.gpu, &t.tb);
        if (!st) rep->gpu_bytes = spqr_tblock_gpu_bytes(&m->cfg, B, seqlen);
    } else if (!st && (st = spqr_ttape_new(&m->cfg, B, seqlen, &tape)) == SPQR_OK) {
        t.bytes += spqr_ttape_bytes(&m->cfg, B, seqlen);
    }
    for (int i = 0; i < t.ngrp && !st; i++) rep->n_params += (int64_t)t.grp[i].n;
    if (!st) st = eval_loss(&t, X_in, Y_ref, nseq, seqlen, per, Yb, &rep->loss_start);
    if (!st && o->progress) o->progress(o->user, 0, o->epochs, rep->loss_start, spqr_now() - t0, 0.0);
    const int64_t steps_per_epoch = (nseq + B - 1) / B, total = steps_per_epoch * (int64_t)o->epochs;
    uint64_t rng = o->seed ^ (0x5851F42D4C957F2Dull * (uint64_t)(layer + 1));
    bool trained = false;
    for (int e = 0; e < o->epochs && !st && t.ngrp > 0; e++) {
        for (int i = 0; i < nseq; i++) order[i] = i;
        for (int i = nseq - 1; i > 0; i--) { /* Fisher-Yates */
            int j = (int)(spqr_splitmix64(&rng) % (uint64_t)(i + 1));
            int tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        double esum = 0.0;
        for (int s0 = 0; s0 < nseq && !st; s0 += B) {
            int ns = nseq - s0 < B ? nseq - s0 : B;
            size_t n = (size_t)ns * S * D;
            for (int i = 0; i < ns; i++) {
                memcpy(Xb + (size_t)i * S * D, X_in + (size_t)order[s0 + i] * S * D, S * D * sizeof(float));
                memcpy(Rb + (size_t)i * S * D, Y_ref + (size_t)order[s0 + i] * S * D, S * D * sizeof(float));
            }
            if ((st = fwd(&t, Xb, ns, seqlen, Yb, tape))) break;
            /* L = mean (Y - R)^2  ->  dL/dY = 2 (Y - R) / n, written over Rb */
            double part = 0.0;
            const float sc = (float)(2.0 / (double)n);
            for (size_t i = 0; i < n; i++) {
                float d = Yb[i] - Rb[i];
                part += (double)d * (double)d;
                Rb[i] = sc * d;
            }
            esum += part / (double)n;
            spqr_tgrads g;
            memset(&g, 0, sizeof g);
            for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++)
                if (t.gW[k]) {
                    size_t R = (size_t)t.b->lin[k].rows, C = (size_t)t.b->lin[k].cols;
                    memset(t.gW[k], 0, R * C * sizeof(float));
                    g.W[k] = t.gW[k];
                }
            for (int i = 0; i < 2; i++)
                if (t.gnorm[i]) memset(t.gnorm[i], 0, D * sizeof(float));
            g.attn_norm = t.gnorm[0];
            g.ffn_norm = t.gnorm[1];
            st = t.gpu ? spqr_tblock_gpu_backward(t.gpu, Rb, NULL, &g)
                       : spqr_tblock_backward(&m->cfg, &t.tb, tape, Rb, NULL, &g);
            if (st) break;
            const double lr = spqr_lr_at(o->schedule, o->lr, rep->steps, total);
            for (int i = 0; i < t.ngrp; i++) {
                group_t *gp = &t.grp[i];
                const float *grad = gp->k < 0 ? t.gnorm[-gp->k - 1] : gp->g;
                if (gp->k >= 0) {
                    const spqr_linear *lin = &t.b->lin[gp->k];
                    memset(gp->g, 0, gp->n * sizeof(float));
                    lin->fmt->train_grad(lin->payload, t.gW[gp->k], gp->g);
                }
                spqr_adamw_step(&gp->opt, gp->theta, grad, lr * gp->lr_scale, gp->scale);
            }
            rep->steps++;
            trained = true;
            /* a value the format cannot store (e.g. beyond fp16) ends the
             * tuning: what the format holds is still the previous step */
            if ((st = apply(&t, 0))) break;
        }
        if (!st && o->progress) {
            double el = spqr_now() - t0;
            o->progress(o->user, e + 1, o->epochs, esum / (double)steps_per_epoch, el,
                        el / (double)(e + 1) * (double)(o->epochs - e - 1));
        }
    }
    if (st == SPQR_ERR_NUMERIC) { /* diverged: keep the start (below) */
        st = SPQR_OK;
        rep->loss_end = INFINITY;
    } else if (!st) {
        st = trained ? eval_loss(&t, X_in, Y_ref, nseq, seqlen, per, Yb, &rep->loss_end) : SPQR_OK;
        if (!trained) rep->loss_end = rep->loss_start;
    }
    if (!st) {
        rep->kept = trained && rep->loss_end < rep->loss_start;
        if (!rep->kept && trained) st = apply(&t, 1); /* exactly the starting values */
    }
    if (!st && rep->kept) { /* the model takes the trained norms */
        for (int i = 0; i < 2 && !st; i++) {
            if (!t.norm[i]) continue;
            if ((st = spqr_model_own(m, t.norm[i])) == SPQR_OK) {
                if (i == 0) t.b->attn_norm = t.norm[i];
                else t.b->ffn_norm = t.norm[i];
            }
            t.norm[i] = NULL;
        }
    }
    rep->work_bytes = t.bytes;
    rep->seconds = spqr_now() - t0;
    spqr_ttape_free(tape);
    free(order);
    free(Xb);
    free(Yb);
    free(Rb);
    tuner_free(&t);
    return st;
}
