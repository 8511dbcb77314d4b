/* cmd_quantize.c - spqr quantize MODEL --method rtn|gptq|spqr [...] -o OUT */
#include <math.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"
#include "quant/pipeline.h"
#include "util/common.h"

static void help(void) {
    printf("usage: spqr quantize MODEL --method rtn|gptq|spqr -o OUT.spqr [options]\n"
           "  --bits B                 weight bits 2..8 (4)\n"
           "  --group-size G           first-level group size beta1 (spqr 16, rtn/gptq 128; 0 = per row)\n"
           "  --stat-bits S            bits of the quantized scales/zeros (3; spqr)\n"
           "  --stat-group-size G2     second-level group beta2 (spqr 16; 0 = fp16 statistics)\n"
           "  --outlier-threshold TAU  SpQR outlier threshold tau (0.2; 0 = no outliers)\n"
           "  --simplified-outliers    skip the leave-one-out statistics fitting\n"
           "  --perm act-order|identity  column order (act-order; rtn always identity)\n"
           "  --percdamp P             Hessian dampening, fraction of mean diag (0.01)\n"
           "  --calib FILE             calibration text ($SPQR_SHARED/data/calib/corpus_calib.txt)\n"
           "  --nsamples N             calibration windows (128)\n"
           "  --seqlen S               tokens per window (min(2048, context))\n"
           "  --seed K                 window sampling seed (0)\n"
           "  --threads N, --tokenizer FILE, --quiet, --json\n"
           "Progress per layer goes to stderr; with --json the last stdout line is a JSON summary.\n");
}

typedef struct {
    bool quiet;
} ui_t;

static void on_layer(void *user, const spqr_layer_done *d) {
    ui_t *ui = user;
    if (ui->quiet) return;
    cli_progress_done();
    fprintf(stderr,
            "[%2d/%d] %-9s %5dx%-5d  err %.4f  herr %.4f  outliers %.3f%%  bits %.3f (file %.3f)  %.2fs  "
            "elapsed %.0fs  ETA %.0fs\n",
            d->block + 1, d->n_blocks, d->name, d->rows, d->cols, d->rep.weight_rel_err, d->rep.hessian_rel_err,
            100.0 * d->rep.outlier_share, d->rep.formula_bits, d->real_bits, d->seconds, d->elapsed, d->eta);
}

static void on_stage(void *user, int block, const char *stage) {
    ui_t *ui = user;
    if (!ui->quiet) cli_progress("block %d: %s ...", block + 1, stage);
}

int cmd_quantize(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *tok = NULL, *method = NULL, *perm = "act-order";
    long bits = 4, group = -1, sbits = 3, sgroup = -1, nsamples = 128, seqlen = 0, seed = 0, threads = 0;
    double tau = 0.2, percdamp = 0.01;
    bool json = false, simplified = false, tau_given = false;
    ui_t ui = {false};
    static char calib_default[4096];
    const char *sh = getenv("SPQR_SHARED");
    snprintf(calib_default, sizeof calib_default, "%s/data/calib/corpus_calib.txt", sh && *sh ? sh : "../shared");
    const char *calib = calib_default;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            ui.quiet = true;
        } else if (!strcmp(a, "--simplified-outliers")) {
            simplified = true;
        } else if (a[0] == '-' && a[1]) {
            static const char *const with_value[] = {"--method", "--bits", "--group-size", "--stat-bits",
                                                     "--stat-group-size", "--outlier-threshold", "--perm",
                                                     "--percdamp", "--calib", "--nsamples", "--seqlen", "--seed",
                                                     "-o", "--output", "--tokenizer", "--threads", NULL};
            bool known = false;
            for (int k = 0; with_value[k]; k++) known |= !strcmp(a, with_value[k]);
            if (!known) return cli_usage("quantize", "unknown option %s", a);
            if (i + 1 >= argc) return cli_usage("quantize", "%s needs a value", a);
            const char *v = argv[++i];
            bool ok = true;
            if (!strcmp(a, "--method")) method = v;
            else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
            else if (!strcmp(a, "--calib")) calib = v;
            else if (!strcmp(a, "--tokenizer")) tok = v;
            else if (!strcmp(a, "--perm")) perm = v;
            else if (!strcmp(a, "--bits")) ok = cli_parse_int(v, -1000, 1000, &bits);
            else if (!strcmp(a, "--group-size")) ok = cli_parse_int(v, -1, 1 << 30, &group);
            else if (!strcmp(a, "--stat-bits")) ok = cli_parse_int(v, -1000, 1000, &sbits);
            else if (!strcmp(a, "--stat-group-size")) ok = cli_parse_int(v, -1, 1 << 30, &sgroup);
            else if (!strcmp(a, "--nsamples")) ok = cli_parse_int(v, 1, 1 << 24, &nsamples);
            else if (!strcmp(a, "--seqlen")) ok = cli_parse_int(v, 2, 1 << 24, &seqlen);
            else if (!strcmp(a, "--seed")) ok = cli_parse_int(v, 0, 0x7fffffffffffffffL, &seed);
            else if (!strcmp(a, "--threads")) ok = cli_parse_int(v, 0, 4096, &threads);
            else if (!strcmp(a, "--percdamp")) ok = cli_parse_double(v, &percdamp);
            else if (!strcmp(a, "--outlier-threshold")) {
                ok = cli_parse_double(v, &tau) && tau >= 0;
                tau_given = true;
            }
            if (!ok) return cli_usage("quantize", "bad value '%s' for %s", v, a);
        } else if (!model) {
            model = a;
        } else {
            return cli_usage("quantize", "unexpected argument '%s'", a);
        }
    }
    if (!model) return cli_usage("quantize", "no MODEL given");
    if (!method) return cli_usage("quantize", "no --method given (rtn, gptq or spqr)");
    if (!out) return cli_usage("quantize", "no output given (-o OUT.spqr)");
    spqr_quant_opts o;
    spqr_quant_opts_default(&o);
    spqr_qmethod meth;
    if (!strcmp(method, "rtn")) meth = SPQR_METHOD_RTN;
    else if (!strcmp(method, "gptq")) meth = SPQR_METHOD_GPTQ;
    else if (!strcmp(method, "spqr")) meth = SPQR_METHOD_SPQR;
    else return cli_usage("quantize", "unknown --method '%s' (rtn, gptq or spqr)", method);
    spqr_qparams_default(&o.qp, meth);
    if (bits < 2 || bits > 8) return cli_usage("quantize", "--bits %ld is outside 2..8", bits);
    o.qp.wbits = (int)bits;
    if (group >= 0) o.qp.beta1 = (int)group;
    if (sgroup >= 0) o.qp.beta2 = (int)sgroup;
    if (o.qp.beta2 > 0 && (sbits < 1 || sbits > 8)) return cli_usage("quantize", "--stat-bits %ld is outside 1..8", sbits);
    o.qp.sbits = o.qp.zbits = (int)sbits;
    if (meth == SPQR_METHOD_SPQR) o.qp.tau = tau;
    else if (tau_given && tau > 0) return cli_usage("quantize", "--outlier-threshold needs --method spqr");
    o.qp.simplified_outliers = simplified;
    if (!strcmp(perm, "act-order")) o.qp.act_order = meth != SPQR_METHOD_RTN;
    else if (!strcmp(perm, "identity")) o.qp.act_order = 0;
    else return cli_usage("quantize", "unknown --perm '%s' (act-order or identity)", perm);
    if (!(percdamp > 0 && percdamp <= 1)) return cli_usage("quantize", "--percdamp must be in (0, 1]");
    o.qp.percdamp = percdamp;
    o.calib_path = calib;
    o.nsamples = (int)nsamples;
    o.seqlen = (int)seqlen;
    o.seed = (uint64_t)seed;
    o.out_path = out;
    o.on_layer = on_layer;
    o.on_stage = on_stage;
    o.user = &ui;
    cli_install_log(false);
    spqr_set_num_threads((int)threads);

    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(model, tok, &m);
    if (st) return cli_fail(st);
    spqr_quant_summary s;
    st = spqr_quantize_model(m, &o, &s);
    cli_progress_done();
    spqr_model_free(m);
    if (st) return cli_fail(st);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = (double)ru.ru_maxrss / 1024.0;
    fprintf(stderr,
            "spqr quantize: %s -> %s: %lld params, avg bits %.4f (formula) / %.4f (file), outliers %.4f%%, %.1f s, "
            "peak RSS %.0f MiB\n",
            model, out, (long long)s.quantized_params, s.avg_bits_formula, s.avg_bits_real, 100.0 * s.outlier_share,
            s.seconds, rss_mb);
    if (json)
        printf("{\"output\":\"%s\",\"method\":\"%s\",\"wbits\":%d,\"beta1\":%d,\"beta2\":%d,\"sbits\":%d,"
               "\"tau\":%.6g,\"quantized_params\":%lld,\"quantized_bytes\":%lld,\"avg_bits\":%.6f,"
               "\"avg_bits_formula\":%.6f,\"avg_bits_real\":%.6f,\"n_outliers\":%lld,\"outlier_share\":%.8f,"
               "\"seconds\":%.3f,\"peak_rss_mib\":%.1f}\n",
               out, method, o.qp.wbits, o.qp.beta1, o.qp.beta2, o.qp.sbits, o.qp.tau, (long long)s.quantized_params,
               (long long)s.quantized_bytes, s.avg_bits_real, s.avg_bits_formula, s.avg_bits_real,
               (long long)s.n_outliers, s.outlier_share, s.seconds, rss_mb);
    return 0;
}
