/* bench_zeroshot.c - speed of zero-shot scoring: the packed prefix-tree path
 * (shared contexts, logits only where continuations are scored, many
 * documents per batch) against the naive per-request path (one full forward
 * with logits at every position per request), both measured in this run on
 * the first DOCS documents of each task, plus their largest loglikelihood
 * difference. With --gpu the tree path also runs on the GPU.
 *
 * usage: bench_zeroshot MODEL [--data DIR] [--docs N] [--tasks LIST] [--gpu]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spqr.h"
#include "util/common.h"

static int run(spqr_model *m, const spqr_task *t, int64_t docs, int naive, int gpu, spqr_zeroshot_result *r) {
    spqr_zeroshot_options o;
    spqr_zeroshot_options_init(&o);
    o.limit = docs;
    o.naive = naive;
    o.use_gpu = gpu;
    o.keep_requests = 1;
    spqr_status st = spqr_zeroshot_eval(m, t, &o, r);
    if (st) {
        fprintf(stderr, "bench_zeroshot: %s\n", spqr_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tasks = "arc_easy,arc_challenge,piqa,hellaswag,winogrande,lambada_openai";
    long docs = 20;
    int gpu = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--data") && i + 1 < argc) data = argv[++i];
        else if (!strcmp(argv[i], "--docs") && i + 1 < argc) docs = atol(argv[++i]);
        else if (!strcmp(argv[i], "--tasks") && i + 1 < argc) tasks = argv[++i];
        else if (!strcmp(argv[i], "--gpu")) gpu = 1;
        else if (!model && argv[i][0] != '-') model = argv[i];
        else {
            fprintf(stderr, "usage: bench_zeroshot MODEL [--data DIR] [--docs N] [--tasks LIST] [--gpu]\n");
            return 2;
        }
    }
    if (!model || docs < 1) {
        fprintf(stderr, "usage: bench_zeroshot MODEL [--data DIR] [--docs N] [--tasks LIST] [--gpu]\n");
        return 2;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", data ? data : "");
    const char *sh = getenv("SPQR_SHARED");
    if (!data) snprintf(dir, sizeof dir, "%s/data/zeroshot/requests", sh && *sh ? sh : SPQR_SHARED_DEFAULT);
    spqr_model *m = NULL;
    if (spqr_model_load(model, NULL, &m)) {
        fprintf(stderr, "bench_zeroshot: %s\n", spqr_last_error());
        return 1;
    }
    printf("model %s, first %ld documents per task, %s\n", model, docs, spqr_build_features());
    printf("| task | docs | requests | naive tokens | tree tokens | naive s | tree s | speedup | naive tok/s | "
           "tree tok/s (naive-equivalent) |%s max abs dlogL |\n",
           gpu ? " GPU s | GPU speedup |" : "");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s---:|\n", gpu ? "---:|---:|" : "");
    char *list = strdup(tasks);
    double tn = 0, tt = 0, tg = 0;
    int64_t nn = 0;
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s.jsonl", dir, name);
        spqr_task *t = NULL;
        if (spqr_task_load(path, &t)) {
            fprintf(stderr, "bench_zeroshot: %s\n", spqr_last_error());
            return 1;
        }
        spqr_zeroshot_result a, b, g;
        memset(&g, 0, sizeof g);
        if (run(m, t, docs, 1, 0, &a) || run(m, t, docs, 0, 0, &b)) return 1;
        int have_gpu = gpu && !run(m, t, docs, 0, 1, &g);
        double maxd = 0;
        for (int64_t i = 0; i < a.n_requests; i++) maxd = fmax(maxd, fabs(a.requests[i].loglik - b.requests[i].loglik));
        printf("| %s | %lld | %lld | %lld | %lld | %.2f | %.2f | %.1fx | %.0f | %.0f |", name, (long long)a.n,
               (long long)a.n_requests, (long long)a.tokens_run, (long long)b.tokens_run, a.seconds, b.seconds,
               a.seconds / b.seconds, a.tokens_run / a.seconds, a.tokens_run / b.seconds);
        if (gpu) {
            if (have_gpu) printf(" %.3f | %.0fx |", g.seconds, a.seconds / g.seconds);
            else printf(" - | - |");
        }
        printf(" %.1e |\n", maxd);
        fflush(stdout);
        tn += a.seconds;
        tt += b.seconds;
        tg += g.seconds;
        nn += a.tokens_run;
        spqr_free(a.requests);
        spqr_free(b.requests);
        spqr_free(g.requests);
        spqr_task_free(t);
    }
    printf("total: naive %.1f s, tree %.1f s (%.1fx)%s; naive-equivalent tokens %lld\n", tn, tt, tn / tt,
           gpu ? ", GPU measured above" : "", (long long)nn);
    (void)tg;
    free(list);
    spqr_model_free(m);
    return 0;
}
