/* bench_train.c - forward + backward of one LLaMA block in float32
 * (train/train.h) on random weights.
 *
 *   bench_train [small|7b] [T] [nseq] [reps] [--gpu]
 *
 * small: the ref-40m block (dim 512, hidden 1408, 8 heads / 4 kv heads of
 * 64, T = 512); 7b: a LLaMA-7B block (4096, 11008, 32 / 32 heads of 128,
 * T = 2048). Prints the best of `reps` runs (after one warm-up run):
 * ms per window of nseq x T tokens for the forward (with tape) and
 * the backward, GFLOP/s (attention counted as the full T x T products the
 * code computes), the rate of one plain sgemm of the gate projection's shape
 * measured right after (the machine's rate at that moment), and the memory:
 * tape, backward workspace, weights+grads.
 *
 * --gpu times the CUDA path instead (train/cuda/train_cuda.h; the CPU is not
 * run): the forward (input upload, output download) and the backward (dY
 * upload, dX download, and the parameter gradients downloaded and added into
 * host arrays), each a whole API call timed on the host, plus a backward
 * with no parameter gradients (neither the dW products nor their download)
 * and the upload of all weights. Without a CUDA device (or in a build
 * without CUDA) it prints a SKIP line and exits with status 0. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_rt.h"
#include "train/cuda/train_cuda.h"
#include "train/train.h"
#include "util/common.h"

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static float urand(void) { /* xorshift64*, uniform in [-1, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((g_rng * 2685821657736338717ull) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

static float *rand_array(size_t n, float scale) {
    float *p = spqr_malloc_array(n, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = scale * urand();
    return p;
}

static double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

static int bench_gpu(const spqr_config *c, const char *which, int nseq, int T1, int reps, const spqr_tblock *b,
                     spqr_tgrads *g, const float *X, float *Y, const float *dY, float *dX, double params);

int main(int argc, char **argv) {
    int gpu = 0, na = 1;
    for (int i = 1; i < argc; i++) { /* take --gpu out of the positional arguments */
        if (!strcmp(argv[i], "--gpu"))
            gpu = 1;
        else
            argv[na++] = argv[i];
    }
    argc = na;
    const char *which = argc > 1 ? argv[1] : "small";
    spqr_config c = {0};
    int T1;
    if (!strcmp(which, "small")) {
        c = (spqr_config){.dim = 512, .hidden_dim = 1408, .n_heads = 8, .n_kv_heads = 4, .head_dim = 64};
        T1 = 512;
    } else if (!strcmp(which, "7b")) {
        c = (spqr_config){.dim = 4096, .hidden_dim = 11008, .n_heads = 32, .n_kv_heads = 32, .head_dim = 128};
        T1 = 2048;
    } else {
        fprintf(stderr, "usage: bench_train [small|7b] [T] [nseq] [reps] [--gpu]\n");
        return 2;
    }
    c.n_layers = 1;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.vocab_size = 32000;
    if (argc > 2) T1 = atoi(argv[2]);
    int nseq = argc > 3 ? atoi(argv[3]) : 1;
    int reps = argc > 4 ? atoi(argv[4]) : (!strcmp(which, "7b") ? 1 : 5);
    c.max_seq_len = T1;
    if (T1 <= 0 || nseq <= 0 || reps <= 0) {
        fprintf(stderr, "bad T, nseq or reps\n");
        return 2;
    }
    const size_t N = (size_t)nseq * (size_t)T1, D = (size_t)c.dim;
    int64_t shape[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(&c, shape);

    spqr_tblock b = {0};
    spqr_tgrads g = {0};
    float *norms = rand_array(2 * D, 0.1f), *gn = calloc(2 * D, sizeof(float));
    for (size_t i = 0; i < 2 * D; i++) norms[i] += 1.0f;
    b.attn_norm = norms;
    b.ffn_norm = norms + D;
    g.attn_norm = gn;
    g.ffn_norm = gn + D;
    double params = 0.0;
    for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) {
        size_t n = (size_t)(shape[l][0] * shape[l][1]);
        b.W[l] = rand_array(n, sqrtf(3.0f / (float)shape[l][1]));
        g.W[l] = calloc(n, sizeof(float));
        if (!g.W[l]) return fprintf(stderr, "out of memory\n"), 1;
        params += (double)n;
    }
    float *X = rand_array(N * D, 1.0f), *Y = rand_array(N * D, 0.0f), *dY = rand_array(N * D, 1.0f);
    float *dX = rand_array(N * D, 0.0f);
    if (gpu) {
        int rc = bench_gpu(&c, which, nseq, T1, reps, &b, &g, X, Y, dY, dX, params);
        for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) free((void *)b.W[l]), free(g.W[l]);
        free(norms), free(gn), free(X), free(Y), free(dY), free(dX);
        return rc;
    }
    spqr_ttape *tape;
    if (spqr_ttape_new(&c, nseq, T1, &tape)) return fprintf(stderr, "%s\n", spqr_last_error()), 1;

    double qd = (double)c.n_heads * c.head_dim, T2 = (double)T1 * T1 * nseq;
    double fwd_flop = 2.0 * (double)N * params + 4.0 * T2 * qd;
    double bwd_flop = 4.0 * (double)N * params + 10.0 * T2 * qd;
    double best_f = 1e30, best_b = 1e30;
    for (int r = -1; r < reps; r++) {
        double t0 = spqr_now();
        if (spqr_tblock_forward(&c, &b, X, nseq, T1, Y, tape)) return fprintf(stderr, "%s\n", spqr_last_error()), 1;
        double t1 = spqr_now();
        if (spqr_tblock_backward(&c, &b, tape, dY, dX, &g)) return fprintf(stderr, "%s\n", spqr_last_error()), 1;
        double t2 = spqr_now();
        if (r < 0) continue; /* warm-up */
        best_f = fmin(best_f, t1 - t0);
        best_b = fmin(best_b, t2 - t1);
    }
    /* the machine's sgemm rate right now, on the gate projection's shape */
    double best_s = 1e30, s_flop = 2.0 * (double)N * (double)c.hidden_dim * (double)D;
    float *Cs = rand_array(N * (size_t)c.hidden_dim, 0.0f);
    for (int r = 0; r < 3; r++) {
        double t0 = spqr_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, c.hidden_dim, c.dim, 1.0f, X, c.dim,
                    b.W[SPQR_LIN_GATE], c.dim, 0.0f, Cs, c.hidden_dim);
        best_s = fmin(best_s, spqr_now() - t0);
    }
    double tape_b = (double)spqr_ttape_bytes(&c, nseq, T1), work_b = (double)spqr_tblock_work_bytes(&c, nseq, T1);
    double wg_b = 2.0 * 4.0 * (params + 2.0 * (double)D);
    printf("block %s: dim %d hidden %d heads %d/%d hd %d, %d x %d tokens, %d threads, best of %d\n", which, c.dim,
           c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim, nseq, T1, spqr_num_threads(), reps);
    printf("%-10s %12s %12s %10s\n", "pass", "ms/window", "GFLOP", "GFLOP/s");
    printf("%-10s %12.1f %12.1f %10.1f\n", "forward", best_f * 1e3, fwd_flop * 1e-9, fwd_flop * 1e-9 / best_f);
    printf("%-10s %12.1f %12.1f %10.1f\n", "backward", best_b * 1e3, bwd_flop * 1e-9, bwd_flop * 1e-9 / best_b);
    printf("%-10s %12.1f %12.1f %10.1f\n", "fwd+bwd", (best_f + best_b) * 1e3, (fwd_flop + bwd_flop) * 1e-9,
           (fwd_flop + bwd_flop) * 1e-9 / (best_f + best_b));
    printf("%-10s %12.1f %12.1f %10.1f  (the machine's sgemm now, %zu x %d x %d; fwd+bwd at %.0f%%)\n", "sgemm",
           best_s * 1e3, s_flop * 1e-9, s_flop * 1e-9 / best_s, N, c.hidden_dim, c.dim,
           100.0 * (fwd_flop + bwd_flop) / (best_f + best_b) / (s_flop / best_s));
    printf("memory: tape %.1f MiB, backward workspace %.1f MiB, peak activations %.1f MiB; weights+grads %.1f MiB\n",
           mib(tape_b), mib(work_b), mib(tape_b + work_b), mib(wg_b));
    spqr_ttape_free(tape);
    for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) free((void *)b.W[l]), free(g.W[l]);
    free(norms), free(gn), free(X), free(Y), free(dY), free(dX), free(Cs);
    return 0;
}

/* --gpu: the same window on the CUDA path */
static int bench_gpu(const spqr_config *c, const char *which, int nseq, int T1, int reps, const spqr_tblock *b,
                     spqr_tgrads *g, const float *X, float *Y, const float *dY, float *dX, double params) {
    char name[256];
    spqr_status st = spqr_cuda_available(name, sizeof name);
    if (st) {
        printf("SKIP: --gpu: no CUDA device (%s)\n", spqr_last_error());
        return 0;
    }
    spqr_tblock_gpu *h;
    if ((st = spqr_tblock_gpu_new(c, nseq, T1, &h))) {
        fprintf(stderr, "%s\n", spqr_last_error());
        return st == SPQR_ERR_NO_DEVICE ? 0 : 1;
    }
    double t0 = spqr_now();
    if ((st = spqr_tblock_gpu_set_weights(h, b))) return fprintf(stderr, "%s\n", spqr_last_error()), 1;
    const double t_up = spqr_now() - t0;
    const size_t N = (size_t)nseq * (size_t)T1;
    double qd = (double)c->n_heads * c->head_dim, T2 = (double)T1 * T1 * nseq;
    double fwd_flop = 2.0 * (double)N * params + 4.0 * T2 * qd;
    double bwd_flop = 4.0 * (double)N * params + 10.0 * T2 * qd, bwd0_flop = 2.0 * (double)N * params + 10.0 * T2 * qd;
    double best_f = 1e30, best_b = 1e30, best_b0 = 1e30;
    spqr_tgrads none = {0};
    for (int r = -1; r < reps; r++) {
        t0 = spqr_now();
        if (spqr_tblock_gpu_forward(h, X, nseq, T1, Y)) return fprintf(stderr, "%s\n", spqr_last_error()), 1;
        double t1 = spqr_now();
        if (spqr_tblock_gpu_backward(h, dY, dX, g)) return fprintf(stderr, "%s\n", spqr_last_error()), 1;
        double t2 = spqr_now();
        if (spqr_tblock_gpu_backward(h, dY, dX, &none)) return fprintf(stderr, "%s\n", spqr_last_error()), 1;
        double t3 = spqr_now();
        if (r < 0) continue; /* warm-up */
        best_f = fmin(best_f, t1 - t0);
        best_b = fmin(best_b, t2 - t1);
        best_b0 = fmin(best_b0, t3 - t2);
    }
    printf("block %s on the GPU (%s): dim %d hidden %d heads %d/%d hd %d, %d x %d tokens, best of %d\n", which, name,
           c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim, nseq, T1, reps);
    printf("%-10s %12s %12s %10s\n", "pass", "ms/window", "GFLOP", "GFLOP/s");
    printf("%-10s %12.1f %12.1f %10.1f\n", "forward", best_f * 1e3, fwd_flop * 1e-9, fwd_flop * 1e-9 / best_f);
    printf("%-10s %12.1f %12.1f %10.1f\n", "backward", best_b * 1e3, bwd_flop * 1e-9, bwd_flop * 1e-9 / best_b);
    printf("%-10s %12.1f %12.1f %10.1f\n", "fwd+bwd", (best_f + best_b) * 1e3, (fwd_flop + bwd_flop) * 1e-9,
           (fwd_flop + bwd_flop) * 1e-9 / (best_f + best_b));
    printf("%-10s %12.1f %12.1f %10.1f  (backward without parameter gradients: no dW products, no download)\n",
           "bwd-no-dW", best_b0 * 1e3, bwd0_flop * 1e-9, bwd0_flop * 1e-9 / best_b0);
    printf("upload of all weights: %.1f ms; device memory %.1f MiB (weights, grads, tape, workspace)\n", t_up * 1e3,
           mib((double)spqr_tblock_gpu_bytes(c, nseq, T1)));
    spqr_tblock_gpu_free(h);
    return 0;
}
