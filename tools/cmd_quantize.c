/* cmd_quantize.c - spqr quantize MODEL --method NAME [method options]
 * [calibration options] -o OUT.spqr: any registered method, its options
 * parsed through the library's option tables (spqr_quant_config_set). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"

static void help(void) {
    printf("usage: spqr quantize MODEL --method METHOD -o OUT.spqr [options]\n"
           "calibration:\n"
           "  --calib FILE             calibration text ($SPQR_SHARED/data/calib/corpus_calib.txt)\n"
           "  --nsamples N             calibration windows (128)\n"
           "  --seqlen S               tokens per window (min(2048, context))\n"
           "  --seed K                 window sampling seed (0)\n"
           "  --threads N, --tokenizer FILE, --quiet, --json\n");
    for (int i = 0; i < spqr_quantizer_method_count(); i++) {
        printf("--method %s: %s\n", spqr_quantizer_method_name(i), spqr_quantizer_method_summary(i));
        for (int j = 0; j < spqr_quantizer_method_option_count(i); j++) {
            const char *name, *h;
            int tv;
            if (spqr_quantizer_method_option(i, j, &name, &h, &tv)) continue;
            char lhs[64];
            snprintf(lhs, sizeof lhs, "--%s%s", name, tv ? " X" : "");
            printf("  %-24s %s\n", lhs, h);
        }
    }
    printf("Progress per layer goes to stderr; with --json the last stdout line is a JSON summary.\n");
}

typedef struct {
    bool quiet;
} ui_t;

static void on_progress(void *user, const spqr_quant_progress *d) {
    ui_t *ui = user;
    if (ui->quiet) return;
    if (d->note) {
        cli_progress_done();
        fprintf(stderr, "block %d: %s\n", d->block + 1, d->note);
        return;
    }
    if (d->stage) {
        cli_progress("block %d: %s ...", d->block + 1, d->stage);
        return;
    }
    cli_progress_done();
    fprintf(stderr,
            "[%2d/%d] %-9s %5dx%-5d  err %.4f  herr %.4f  outliers %.3f%%  bits %.3f (file %.3f)  %.2fs  "
            "elapsed %.0fs  ETA %.0fs\n",
            d->block + 1, d->n_blocks, d->layer, d->rows, d->cols, d->weight_rel_err, d->hessian_rel_err,
            100.0 * d->outlier_share, d->formula_bits, d->real_bits, d->seconds, d->elapsed, d->eta);
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(j) ? j->valuedouble : 0;
}

int cmd_quantize(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *tok = NULL, *method = NULL;
    long threads = 0;
    bool json = false, calib_given = false;
    ui_t ui = {false};
    for (int i = 1; i < argc; i++) { /* the method first: it decides which options exist */
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help();
            return 0;
        }
        if (!strcmp(argv[i], "--method") && i + 1 < argc) method = argv[i + 1];
    }
    if (!method) return cli_usage("quantize", "no --method given (rtn, gptq, spqr or cluscomp; see --help)");
    spqr_quant_config *qc = NULL;
    spqr_status st = spqr_quant_config_new(method, &qc);
    if (st) return cli_usage("quantize", "%s", spqr_last_error());
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            ui.quiet = true;
        } else if (a[0] == '-' && a[1]) {
            const char *name = a + (a[1] == '-' ? 2 : 1);
            bool cli_opt = !strcmp(a, "--method") || !strcmp(a, "-o") || !strcmp(a, "--output") ||
                           !strcmp(a, "--tokenizer") || !strcmp(a, "--threads");
            int tv = cli_opt ? 1 : spqr_quant_config_takes_value(qc, name);
            if (tv < 0) {
                rc = cli_usage("quantize", "unknown option %s for --method %s", a, method);
                break;
            }
            const char *v = NULL;
            if (tv) {
                if (i + 1 >= argc) {
                    rc = cli_usage("quantize", "%s needs a value", a);
                    break;
                }
                v = argv[++i];
            }
            if (!strcmp(a, "--method")) continue;
            if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
            else if (!strcmp(a, "--tokenizer")) tok = v;
            else if (!strcmp(a, "--threads")) {
                if (!cli_parse_int(v, 0, 4096, &threads)) rc = cli_usage("quantize", "bad value '%s' for %s", v, a);
            } else {
                calib_given |= !strcmp(name, "calib");
                if (spqr_quant_config_set(qc, name, v)) rc = cli_usage("quantize", "%s", spqr_last_error());
            }
        } else if (!model) {
            model = a;
        } else {
            rc = cli_usage("quantize", "unexpected argument '%s'", a);
        }
    }
    if (!rc && !model) rc = cli_usage("quantize", "no MODEL given");
    if (!rc && !out) rc = cli_usage("quantize", "no output given (-o OUT.spqr)");
    if (!rc && !calib_given) { /* the CLI's default calibration text */
        char path[4096];
        const char *sh = getenv("SPQR_SHARED");
        snprintf(path, sizeof path, "%s/data/calib/corpus_calib.txt", sh && *sh ? sh : "../shared");
        spqr_quant_config_set(qc, "calib", path);
    }
    if (rc) {
        spqr_quant_config_free(qc);
        return rc;
    }
    spqr_quant_config_set_progress(qc, on_progress, &ui);
    cli_install_log(false);
    spqr_set_num_threads((int)threads);

    spqr_model *m = NULL;
    st = spqr_model_load(model, tok, &m);
    spqr_quant_summary s;
    if (!st) st = spqr_quantize(m, qc, out, &s);
    cli_progress_done();
    spqr_model_free(m);
    char *desc = NULL;
    if (!st) st = spqr_quant_config_describe(qc, &desc);
    spqr_quant_config_free(qc);
    if (st) return cli_fail(st);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = (double)ru.ru_maxrss / 1024.0;
    fprintf(stderr,
            "spqr quantize: %s -> %s: %lld params, avg bits %.4f (formula) / %.4f (file), outliers %.4f%%, %.1f s, "
            "peak RSS %.0f MiB\n",
            model, out, (long long)s.quantized_params, s.avg_bits_formula, s.avg_bits_real, 100.0 * s.outlier_share,
            s.seconds, rss_mb);
    if (s.tuned_blocks > 0)
        fprintf(stderr, "spqr quantize: block tuning kept in %d of %d blocks, calibration MSE %.6g -> %.6g (summed over blocks), %.1f s\n",
                s.tuned_blocks_kept, s.tuned_blocks, s.tune_loss_before, s.tune_loss_after, s.tune_seconds);
    if (json) {
        cJSON *d = cJSON_Parse(desc);
        printf("{\"output\":\"%s\",\"method\":\"%s\",\"wbits\":%d,\"beta1\":%d,\"beta2\":%d,\"sbits\":%d,"
               "\"tau\":%.6g,\"quantized_params\":%lld,\"quantized_bytes\":%lld,\"avg_bits\":%.6f,"
               "\"avg_bits_formula\":%.6f,\"avg_bits_real\":%.6f,\"n_outliers\":%lld,\"outlier_share\":%.8f,"
               "\"seconds\":%.3f,\"peak_rss_mib\":%.1f,\"tuned_blocks\":%d,\"tuned_blocks_kept\":%d,"
               "\"tune_seconds\":%.3f,\"tune_loss_before\":%.8g,\"tune_loss_after\":%.8g,\"spilled_bytes\":%.0f,\"params\":%s}\n",
               out, method, (int)jnum(d, "wbits"), (int)jnum(d, "beta1"), (int)jnum(d, "beta2"),
               (int)jnum(d, "sbits"), jnum(d, "tau"), (long long)s.quantized_params, (long long)s.quantized_bytes,
               s.avg_bits_real, s.avg_bits_formula, s.avg_bits_real, (long long)s.n_outliers, s.outlier_share,
               s.seconds, rss_mb, s.tuned_blocks, s.tuned_blocks_kept, s.tune_seconds, s.tune_loss_before,
               s.tune_loss_after, s.spilled_bytes, desc);
        cJSON_Delete(d);
    }
    free(desc);
    return 0;
}
