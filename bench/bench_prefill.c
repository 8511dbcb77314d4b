/* bench_prefill.c - prefill throughput of a model at S tokens and the
 * machine's float32 sgemm rate, measured in the same run.
 *
 *   bench_prefill [MODEL] [S]      (default: $SPQR_SHARED/models/ref-40m, 512)
 *
 * Prints: sgemm GFLOP/s on the model's own linear shapes (M = S), the
 * GFLOP/s our linear layers reach inside the forward pass (each linear timed
 * through spqr_linear_forward, bf16->f32 widening included), their ratio
 * (target >= 50%), and whole-model prefill tokens/s. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "util/common.h"

static double best_of(int reps, double (*fn)(void *), void *arg) {
    double best = 1e30;
    for (int i = 0; i < reps; i++) {
        double t = fn(arg);
        if (t < best) best = t;
    }
    return best;
}

typedef struct {
    int M, N, K;
    float *A, *B, *C;
} gemm_arg;

static double run_sgemm(void *p) {
    gemm_arg *g = p;
    double t0 = spqr_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->M, g->N, g->K, 1.0f, g->A, g->K, g->B, g->K, 0.0f, g->C,
                g->N);
    return spqr_now() - t0;
}

typedef struct {
    const spqr_linear *l;
    const float *X;
    float *Y;
    int T;
} lin_arg;

static double run_linear(void *p) {
    lin_arg *a = p;
    double t0 = spqr_now();
    if (spqr_linear_forward(a->l, a->X, a->T, a->Y)) return 1e30;
    return spqr_now() - t0;
}

int main(int argc, char **argv) {
    char defmodel[4096];
    const char *sh = getenv("SPQR_SHARED");
    snprintf(defmodel, sizeof defmodel, "%s/models/ref-40m", sh && *sh ? sh : SPQR_SHARED_DEFAULT);
    const char *path = argc > 1 ? argv[1] : defmodel;
    int S = argc > 2 ? atoi(argv[2]) : 512;
    spqr_model *m = NULL;
    if (spqr_model_load(path, NULL, &m)) {
        fprintf(stderr, "bench_prefill: %s\n", spqr_last_error());
        return 1;
    }
    const spqr_config *c = &m->cfg;
    if (S > c->max_seq_len) S = c->max_seq_len;
    int maxc = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    int maxr = c->vocab_size > maxc ? c->vocab_size : maxc;
    float *X = malloc(sizeof(float) * (size_t)S * (size_t)maxc);
    float *Y = malloc(sizeof(float) * (size_t)S * (size_t)maxr);
    for (size_t i = 0; i < (size_t)S * maxc; i++) X[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    printf("model %s, S = %d, threads %d\n\n", path, S, spqr_num_threads());
    printf("%-12s %11s %10s %12s %12s %7s\n", "linear", "shape", "GFLOP", "sgemm GF/s", "ours GF/s", "ratio");
    double tot_flop = 0, tot_ours = 0, tot_sgemm = 0;
    for (int k = 0; k < SPQR_LIN_PER_BLOCK + 1; k++) {
        const spqr_linear *l = k < SPQR_LIN_PER_BLOCK ? &m->blocks[0].lin[k] : &m->head;
        int mult = k < SPQR_LIN_PER_BLOCK ? c->n_layers : 1;
        double flop = 2.0 * S * l->rows * (double)l->cols;
        gemm_arg g = {S, l->rows, l->cols, X, malloc(sizeof(float) * (size_t)l->rows * l->cols), Y};
        for (size_t i = 0; i < (size_t)l->rows * l->cols; i++) g.B[i] = 0.01f * (float)(i % 7);
        double ts = best_of(5, run_sgemm, &g);
        lin_arg a = {l, X, Y, S};
        double to = best_of(5, run_linear, &a);
        free(g.B);
        printf("%-12s %5dx%-5d %10.2f %12.1f %12.1f %6.0f%%\n", k < SPQR_LIN_PER_BLOCK ? spqr_linear_names[k] : "lm_head",
               l->rows, l->cols, flop * 1e-9, flop / ts * 1e-9, flop / to * 1e-9, 100 * ts / to);
        tot_flop += flop * mult;
        tot_ours += to * mult;
        tot_sgemm += ts * mult;
    }
    printf("%-12s %11s %10.2f %12.1f %12.1f %6.0f%%   (target >= 50%%)\n", "all linears", "", tot_flop * 1e-9,
           tot_flop / tot_sgemm * 1e-9, tot_flop / tot_ours * 1e-9, 100 * tot_sgemm / tot_ours);

    /* whole prefill */
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)S);
    for (int i = 0; i < S; i++) tok[i] = i == 0 ? c->bos_id : (int32_t)((i * 7919) % c->vocab_size);
    float *logits = malloc(sizeof(float) * (size_t)S * c->vocab_size);
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = spqr_now();
        if (spqr_forward(m, tok, S, logits)) {
            fprintf(stderr, "bench_prefill: %s\n", spqr_last_error());
            return 1;
        }
        double t = spqr_now() - t0;
        if (t < best) best = t;
    }
    printf("\nprefill: %d tokens in %.3f s = %.0f tokens/s (%.1f GFLOP/s over linear FLOPs; linears are %.0f%% of "
           "the time)\n",
           S, best, S / best, tot_flop / best * 1e-9, 100 * tot_ours / best);
    free(tok);
    free(logits);
    free(X);
    free(Y);
    spqr_model_free(m);
    return 0;
}
