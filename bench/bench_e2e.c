/* bench_e2e.c - end-to-end speed of a model and its compressed form in the
 * same run: decode tokens/s (KV-cached, one token at a time) and prefill
 * tokens/s (S tokens through spqr_forward).
 *
 *   bench_e2e FP_MODEL SPQR_FILE [S] [DECODE_TOKENS]     (defaults 512, 128)
 */
#include <stdio.h>
#include <stdlib.h>

#include "model/model.h"
#include "util/common.h"

typedef struct {
    double decode_tps, prefill_tps;
} result;

static int measure(const char *path, int S, int ndec, result *r) {
    spqr_model *m = NULL;
    if (spqr_model_load(path, NULL, &m)) {
        fprintf(stderr, "bench_e2e: %s\n", spqr_last_error());
        return 1;
    }
    const spqr_config *c = spqr_model_config(m);
    if (S > c->max_seq_len) S = c->max_seq_len;
    if (ndec > c->max_seq_len) ndec = c->max_seq_len;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)S);
    for (int i = 0; i < S; i++) tok[i] = i == 0 ? c->bos_id : (int32_t)((i * 7919) % c->vocab_size);
    float *logits = malloc(sizeof(float) * (size_t)S * c->vocab_size);
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = spqr_now();
        if (spqr_forward(m, tok, S, logits)) return 1;
        double t = spqr_now() - t0;
        best = t < best ? t : best;
    }
    r->prefill_tps = S / best;
    best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        spqr_session *s = NULL;
        if (spqr_session_new(m, &s)) return 1;
        const float *lg;
        double t0 = spqr_now();
        for (int i = 0; i < ndec; i++)
            if (spqr_session_step(s, tok[i % S], &lg)) return 1;
        double t = spqr_now() - t0;
        best = t < best ? t : best;
        spqr_session_free(s);
    }
    r->decode_tps = ndec / best;
    free(tok);
    free(logits);
    spqr_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_e2e FP_MODEL SPQR_FILE [S] [DECODE_TOKENS]\n");
        return 2;
    }
    int S = argc > 3 ? atoi(argv[3]) : 512, nd = argc > 4 ? atoi(argv[4]) : 128;
    result a, b;
    if (measure(argv[1], S, nd, &a) || measure(argv[2], S, nd, &b)) return 1;
    printf("threads %d, prefill S=%d, decode %d tokens (best of 3)\n\n", spqr_num_threads(), S, nd);
    printf("%-44s %14s %14s\n", "model", "decode tok/s", "prefill tok/s");
    printf("%-44s %14.1f %14.1f\n", argv[1], a.decode_tps, a.prefill_tps);
    printf("%-44s %14.1f %14.1f\n", argv[2], b.decode_tps, b.prefill_tps);
    printf("%-44s %13.2fx %13.2fx\n", "SpQR / fp", b.decode_tps / a.decode_tps, b.prefill_tps / a.prefill_tps);
    return 0;
}
