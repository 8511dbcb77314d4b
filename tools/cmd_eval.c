/* cmd_eval.c - spqr eval MODEL --data FILE [--seqlen S] [--json] */
#include <stdlib.h>
#include <string.h>

#include <errno.h>

#include "cli.h"

static void help(void) {
    printf("usage: spqr eval MODEL --data FILE [--seqlen S] [--max-windows W] [--tokenizer FILE]\n"
           "                 [--threads N] [--gpu] [--json]\n"
           "Perplexity of MODEL on FILE: CRLF->LF, one BOS, non-overlapping windows of S tokens\n"
           "(default 512), every next-token target scored, remainder dropped; nll in nats/token.\n"
           "--max-windows W scores only the first W windows (a partial evaluation).\n"
           "--gpu runs the forward pass on the CUDA device (falls back to the CPU without one).\n"
           "With --json the last stdout line is a JSON object.\n");
}

static void progress(void *user, int64_t done, int64_t total) {
    double t0 = *(double *)user, el = cli_now() - t0;
    double eta = done > 0 ? el * (double)(total - done) / (double)done : 0;
    cli_progress("eval: window %lld/%lld  %.1fs elapsed  ETA %.0fs", (long long)done, (long long)total, el, eta);
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tok = NULL;
    long seqlen = 512, threads = 0, max_windows = 0;
    bool json = false, verbose = false, gpu = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--gpu")) {
            gpu = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--data") || !strcmp(a, "--seqlen") || !strcmp(a, "--tokenizer") ||
                   !strcmp(a, "--threads") || !strcmp(a, "--max-windows")) {
            if (i + 1 >= argc) return cli_usage("eval", "%s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--data")) data = v;
            else if (!strcmp(a, "--tokenizer")) tok = v;
            else if (!strcmp(a, "--max-windows")) {
                if (!cli_parse_int(v, 1, 1L << 40, &max_windows)) return cli_usage("eval", "bad --max-windows '%s'", v);
            } else if (!strcmp(a, "--seqlen")) {
                if (!cli_parse_int(v, 2, 1 << 24, &seqlen)) return cli_usage("eval", "bad --seqlen '%s'", v);
            } else if (!cli_parse_int(v, 0, 4096, &threads))
                return cli_usage("eval", "bad --threads '%s'", v);
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("eval", "unknown option %s", a);
        } else if (!model) {
            model = a;
        } else {
            return cli_usage("eval", "unexpected argument '%s'", a);
        }
    }
    if (!model) return cli_usage("eval", "no MODEL given");
    if (!data) return cli_usage("eval", "no --data FILE given");
    cli_install_log(verbose);
    spqr_set_num_threads((int)threads);
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(model, tok, &m);
    if (st) return cli_fail(st);
    size_t len = 0;
    char *text = cli_read_file(data, &len);
    const spqr_config *cfg = spqr_model_config(m);
    int rc = 0;
    if (!text) rc = cli_error("%s: %s", data, strerror(errno));
    else if (len == 0) rc = cli_error("%s: the evaluation text is empty", data);
    else if (seqlen > cfg->max_seq_len)
        rc = cli_error("--seqlen %ld is longer than the model's context of %d tokens", seqlen, cfg->max_seq_len);
    int32_t *ids = NULL;
    size_t n = 0;
    spqr_ppl_result r;
    memset(&r, 0, sizeof r);
    if (!rc && gpu) st = spqr_model_set_device(m, SPQR_DEVICE_AUTO);
    if (!rc && !st) st = spqr_eval_tokenize(m, text, len, &ids, &n);
    double t0 = cli_now();
    if (!rc && !st) st = spqr_eval_perplexity_ids(m, ids, n, (int)seqlen, max_windows, &r, progress, &t0);
    cli_progress_done();
    free(ids);
    free(text);
    if (rc || st) {
        spqr_model_free(m);
        return rc ? rc : cli_fail(st);
    }
    double tps = r.seconds > 0 ? (double)(r.windows * seqlen) / r.seconds : 0;
    fprintf(stderr, "spqr eval: %s on %s, seqlen %ld: %lld windows, %.1f s (%.0f tokens/s)\n", model, data, seqlen,
            (long long)r.windows, r.seconds, tps);
    printf("nll %.6f  ppl %.4f  tokens_scored %lld  tokens_total %lld\n", r.nll, r.ppl, (long long)r.tokens_scored,
           (long long)r.tokens_total);
    if (json)
        printf("{\"model\":\"%s\",\"data\":\"%s\",\"seqlen\":%ld,\"nll\":%.6f,\"ppl\":%.6f,\"tokens_scored\":%lld,"
               "\"tokens_total\":%lld,\"windows\":%lld,\"seconds\":%.3f}\n",
               model, data, seqlen, r.nll, r.ppl, (long long)r.tokens_scored, (long long)r.tokens_total,
               (long long)r.windows, r.seconds);
    spqr_model_free(m);
    return 0;
}
