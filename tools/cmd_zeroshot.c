/* cmd_zeroshot.c - spqr zeroshot MODEL [--tasks LIST] [--data DIR]
 * [--task-file FILE] [--limit N] [--gpu] [--no-bos] [--json] ...
 * Zero-shot accuracy with the LM Evaluation Harness's scoring. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define DEFAULT_TASKS "arc_easy,arc_challenge,piqa,hellaswag,winogrande,lambada_openai"
#define MAX_TASKS 64

static void help(void) {
    printf("usage: spqr zeroshot MODEL [--tasks LIST] [--data DIR] [--task-file FILE] [--limit N]\n"
           "                     [--gpu] [--no-bos] [--json] [--threads N] [--tokenizer FILE]\n"
           "                     [--dump FILE.jsonl] [--naive]\n"
           "Zero-shot accuracy scored as EleutherAI's LM Evaluation Harness (v0.4.9.2+) scores\n"
           "loglikelihood requests: acc, acc_norm (by choice length in characters), ties to the\n"
           "lowest index; LAMBADA-style tasks: greedy accuracy and perplexity.\n"
           "  --tasks LIST      comma-separated task names (default " DEFAULT_TASKS ")\n"
           "                    read from DIR/<task>.jsonl\n"
           "  --data DIR        request files (default $SPQR_SHARED/data/zeroshot/requests,\n"
           "                    else ../shared/data/zeroshot/requests)\n"
           "  --task-file FILE  a task file of your own (repeatable; replaces the default list)\n"
           "  --limit N         only the first N documents of each task\n"
           "  --no-bos          encode without BOS (the older lm-eval behaviour)\n"
           "  --gpu             run on the CUDA device (falls back to the CPU without one)\n"
           "  --dump FILE       write every request's loglikelihood as JSON lines\n"
           "  --naive           score every request with its own full forward pass (slow reference)\n"
           "The mean is over the five tasks of the SpQR paper: acc for winogrande, piqa and\n"
           "arc_easy, acc_norm for arc_challenge and hellaswag. With --json the last stdout line\n"
           "is a JSON object.\n");
}

typedef struct prog {
    const char *task;
    double t0;
} prog;

static void progress(void *user, int64_t done, int64_t total) {
    prog *p = user;
    double el = cli_now() - p->t0;
    double eta = done > 0 ? el * (double)(total - done) / (double)done : 0;
    cli_progress("zeroshot %s: %lld/%lld requests  %.0fs elapsed  ETA %.0fs", p->task, (long long)done,
                 (long long)total, el, eta);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if (*u == '"' || *u == '\\') fprintf(f, "\\%c", *u);
        else if (*u < 0x20) fprintf(f, "\\u%04x", *u);
        else fputc(*u, f);
    }
    fputc('"', f);
}

static const char *default_data_dir(void) {
    static char buf[4096];
    const char *root = getenv("SPQR_SHARED");
    snprintf(buf, sizeof buf, "%s/data/zeroshot/requests", root && *root ? root : "../shared");
    return buf;
}

int cmd_zeroshot(int argc, char **argv) {
    const char *model = NULL, *tok = NULL, *data = NULL, *tasks_arg = NULL, *dump = NULL;
    const char *files[MAX_TASKS];
    int n_files = 0;
    long limit = 0, threads = 0;
    bool json = false, verbose = false, gpu = false, no_bos = false, naive = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--gpu")) {
            gpu = true;
        } else if (!strcmp(a, "--no-bos")) {
            no_bos = true;
        } else if (!strcmp(a, "--naive")) {
            naive = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--tasks") || !strcmp(a, "--data") || !strcmp(a, "--task-file") ||
                   !strcmp(a, "--limit") || !strcmp(a, "--threads") || !strcmp(a, "--tokenizer") ||
                   !strcmp(a, "--dump")) {
            if (i + 1 >= argc) return cli_usage("zeroshot", "%s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--tasks")) tasks_arg = v;
            else if (!strcmp(a, "--data")) data = v;
            else if (!strcmp(a, "--tokenizer")) tok = v;
            else if (!strcmp(a, "--dump")) dump = v;
            else if (!strcmp(a, "--task-file")) {
                if (n_files >= MAX_TASKS) return cli_usage("zeroshot", "at most %d task files", MAX_TASKS);
                files[n_files++] = v;
            } else if (!strcmp(a, "--limit")) {
                if (!cli_parse_int(v, 1, 1L << 40, &limit)) return cli_usage("zeroshot", "bad --limit '%s'", v);
            } else if (!cli_parse_int(v, 0, 4096, &threads))
                return cli_usage("zeroshot", "bad --threads '%s'", v);
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("zeroshot", "unknown option %s", a);
        } else if (!model) {
            model = a;
        } else {
            return cli_usage("zeroshot", "unexpected argument '%s'", a);
        }
    }
    if (!model) return cli_usage("zeroshot", "no MODEL given");
    if (naive && gpu) return cli_usage("zeroshot", "--naive runs on the CPU only");
    /* the task list: named tasks from the data folder, then --task-file files */
    char *names = NULL;
    const char *paths[MAX_TASKS];
    char *owned[MAX_TASKS];
    int n_tasks = 0;
    if (tasks_arg || n_files == 0) {
        names = strdup(tasks_arg ? tasks_arg : DEFAULT_TASKS);
        if (!names) return cli_error("out of memory");
        const char *dir = data ? data : default_data_dir();
        for (char *save = NULL, *t = strtok_r(names, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (!*t) continue;
            if (n_tasks >= MAX_TASKS) {
                free(names);
                for (int k = 0; k < n_tasks; k++) free(owned[k]);
                return cli_usage("zeroshot", "at most %d tasks", MAX_TASKS);
            }
            size_t n = strlen(dir) + strlen(t) + 8;
            owned[n_tasks] = malloc(n);
            if (!owned[n_tasks]) break;
            snprintf(owned[n_tasks], n, "%s/%s.jsonl", dir, t);
            paths[n_tasks] = owned[n_tasks];
            n_tasks++;
        }
        free(names);
    }
    int n_owned = n_tasks;
    for (int k = 0; k < n_files && n_tasks < MAX_TASKS; k++) paths[n_tasks++] = files[k];
    int rc = 0;
    if (n_tasks == 0) {
        rc = cli_usage("zeroshot", "no tasks given");
        goto free_paths;
    }
    cli_install_log(verbose);
    spqr_set_num_threads((int)threads);

    /* load every task first, so a bad file fails before the model runs */
    spqr_task *tasks[MAX_TASKS] = {0};
    spqr_status st = SPQR_OK;
    for (int k = 0; k < n_tasks && !st; k++) st = spqr_task_load(paths[k], &tasks[k]);
    spqr_model *m = NULL;
    if (!st) st = spqr_model_load(model, tok, &m);
    FILE *df = NULL;
    if (!st && dump && !(df = fopen(dump, "w"))) rc = cli_error("%s: cannot open for writing", dump);
    spqr_zeroshot_result res[MAX_TASKS];
    memset(res, 0, sizeof res);
    double t_all = cli_now();
    for (int k = 0; k < n_tasks && !st && !rc; k++) {
        spqr_zeroshot_options o;
        spqr_zeroshot_options_init(&o);
        o.limit = limit;
        o.add_bos = !no_bos;
        o.use_gpu = gpu;
        o.naive = naive;
        o.keep_requests = df != NULL;
        prog p = {spqr_task_name(tasks[k]), cli_now()};
        o.progress = progress;
        o.progress_user = &p;
        st = spqr_zeroshot_eval(m, tasks[k], &o, &res[k]);
        if (st == SPQR_ERR_NO_DEVICE && gpu) {
            cli_progress_done();
            fprintf(stderr, "spqr: warning: %s; running on the CPU\n", spqr_last_error());
            gpu = false;
            o.use_gpu = 0;
            p.t0 = cli_now();
            st = spqr_zeroshot_eval(m, tasks[k], &o, &res[k]);
        }
        cli_progress_done();
        if (st) break;
        const spqr_zeroshot_result *r = &res[k];
        fprintf(stderr, "spqr zeroshot: %s: %lld documents, %lld requests, %lld tokens run (%lld naive), %.1f s (%.0f tokens/s)%s\n",
                spqr_task_name(tasks[k]), (long long)r->n, (long long)r->n_requests, (long long)r->tokens_run,
                (long long)r->tokens_naive, r->seconds, r->seconds > 0 ? (double)r->tokens_run / r->seconds : 0.0,
                gpu ? " on the GPU" : "");
        if (r->nonprefix)
            fprintf(stderr, "spqr zeroshot: %s: %lld requests whose context ids are not a prefix of the joint ids\n",
                    spqr_task_name(tasks[k]), (long long)r->nonprefix);
        if (df) {
            for (int64_t i = 0; i < r->n_requests; i++) {
                const spqr_zeroshot_request *q = &r->requests[i];
                fprintf(df, "{\"task\":");
                json_str(df, spqr_task_name(tasks[k]));
                fprintf(df, ",\"req\":%lld,\"loglik\":%.9g,\"greedy\":%s,\"ctx_tokens\":%d,\"cont_tokens\":%d}\n",
                        (long long)i, q->loglik, q->greedy ? "true" : "false", q->ctx_tokens, q->cont_tokens);
            }
        }
    }
    double seconds = cli_now() - t_all;
    if (df && fclose(df) != 0 && !st && !rc) rc = cli_error("%s: write failed", dump);
    if (st || rc) {
        if (!rc) rc = cli_fail(st);
        goto out;
    }
    /* the mean of the five paper tasks */
    double mean = 0.0;
    int n_paper = 0;
    for (int k = 0; k < n_tasks; k++) {
        int pm = spqr_zeroshot_paper_metric(spqr_task_name(tasks[k]));
        if (pm == 1) mean += res[k].acc;
        else if (pm == 2 && res[k].has_acc_norm) mean += res[k].acc_norm;
        else continue;
        n_paper++;
    }
    bool have_mean = n_paper == 5;
    mean = have_mean ? mean / 5.0 : 0.0;

    printf("model: %s  (%s BOS%s)\n", model, no_bos ? "without" : "with", limit ? ", first documents only" : "");
    printf("%-16s %7s %8s %8s %9s %8s %10s\n", "task", "n", "acc", "stderr", "acc_norm", "stderr", "ppl");
    for (int k = 0; k < n_tasks; k++) {
        const spqr_zeroshot_result *r = &res[k];
        printf("%-16s %7lld %8.4f %8.4f", spqr_task_name(tasks[k]), (long long)r->n, r->acc, r->acc_stderr);
        if (r->has_acc_norm) printf(" %9.4f %8.4f", r->acc_norm, r->acc_norm_stderr);
        else printf(" %9s %8s", "-", "-");
        if (r->has_ppl) printf(" %10.3f\n", r->ppl);
        else printf(" %10s\n", "-");
    }
    if (have_mean)
        printf("mean of the 5 paper tasks: %.4f  (acc: winogrande, piqa, arc_easy; acc_norm: arc_challenge, "
               "hellaswag)\n",
               mean);
    fprintf(stderr, "spqr zeroshot: %d tasks in %.1f s\n", n_tasks, seconds);
    if (json) {
        printf("{\"tasks\":{");
        for (int k = 0; k < n_tasks; k++) {
            const spqr_zeroshot_result *r = &res[k];
            if (k) printf(",");
            json_str(stdout, spqr_task_name(tasks[k]));
            printf(":{\"n\":%lld,\"acc\":%.6f,\"acc_stderr\":%.6f", (long long)r->n, r->acc, r->acc_stderr);
            if (r->has_acc_norm) printf(",\"acc_norm\":%.6f,\"acc_norm_stderr\":%.6f", r->acc_norm, r->acc_norm_stderr);
            if (r->has_ppl) printf(",\"ppl\":%.6f", r->ppl);
            printf("}");
        }
        printf("},\"mean_acc\":");
        if (have_mean) printf("%.6f", mean);
        else printf("null");
        printf(",\"mean_of\":\"acc: winogrande, piqa, arc_easy; acc_norm: arc_challenge, hellaswag\","
               "\"add_bos\":%s,\"limit\":%ld,\"seconds\":%.3f}\n",
               no_bos ? "false" : "true", limit, seconds);
    }
out:
    for (int k = 0; k < n_tasks; k++) {
        spqr_free(res[k].requests);
        spqr_task_free(tasks[k]);
    }
    spqr_model_free(m);
free_paths:
    for (int k = 0; k < n_owned; k++) free(owned[k]);
    return rc;
}
