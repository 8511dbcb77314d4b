/* cmd_generate.c - spqr generate MODEL [--prompt TEXT] [-n N] [--temp T]
 * [--top-p P] [--seed S] [--tokenizer FILE]
 * Like llama2.c's run: BOS + prompt, N steps (prompt tokens included, capped
 * at the context), prompt echoed, stop at BOS/EOS; stdout carries only the
 * generated text (no newline is appended, unlike llama2.c's run). */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(void) {
    printf("usage: spqr generate MODEL [--prompt TEXT] [-n N] [--temp T] [--top-p P] [--seed S]\n"
           "                      [--tokenizer FILE] [--threads N] [--gpu]\n"
           "Streams text to stdout. --temp 0 is greedy (argmax). Defaults: -n 256, --temp 1.0,\n"
           "--top-p 0.9, --seed from the clock. Diagnostics go to stderr.\n"
           "--gpu decodes on the CUDA device (falls back to the CPU without one).\n");
}

static uint64_t g_rng;
static float rng_f32(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((g_rng * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

typedef struct { float p; int i; } prob_idx;
static int cmp_prob(const void *a, const void *b) {
    float x = ((const prob_idx *)a)->p, y = ((const prob_idx *)b)->p;
    return x > y ? -1 : x < y ? 1 : 0;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* temperature + nucleus sampling */
static int sample(const float *logits, int n, float temp, float topp, float *probs, prob_idx *pi) {
    float mx = logits[0];
    for (int i = 1; i < n; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += probs[i] = expf((logits[i] - mx) / temp);
    for (int i = 0; i < n; i++) probs[i] = (float)(probs[i] / sum);
    float r = rng_f32();
    if (topp <= 0 || topp >= 1) {
        float c = 0;
        for (int i = 0; i < n; i++) {
            c += probs[i];
            if (r < c) return i;
        }
        return n - 1;
    }
    int k = 0;
    float cutoff = (1.0f - topp) / (float)(n - 1);
    for (int i = 0; i < n; i++)
        if (probs[i] >= cutoff) pi[k++] = (prob_idx){probs[i], i};
    qsort(pi, (size_t)k, sizeof *pi, cmp_prob);
    float cum = 0;
    int last = k - 1;
    for (int i = 0; i < k; i++) {
        cum += pi[i].p;
        if (cum > topp) {
            last = i;
            break;
        }
    }
    float rr = r * cum, c = 0;
    for (int i = 0; i <= last; i++) {
        c += pi[i].p;
        if (rr < c) return pi[i].i;
    }
    return pi[last].i;
}

static void safe_print(const char *p, size_t len) {
    if (len == 0) return;
    if (len == 1 && !(isprint((unsigned char)p[0]) || isspace((unsigned char)p[0]))) return;
    fwrite(p, 1, len, stdout);
    fflush(stdout);
}

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *prompt = "";
    long steps = 256, seed = -1, threads = 0;
    double temp = 1.0, topp = 0.9;
    bool verbose = false, gpu = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--gpu")) {
            gpu = true;
        } else if (!strcmp(a, "--prompt") || !strcmp(a, "-n") || !strcmp(a, "--temp") || !strcmp(a, "--seed") ||
                   !strcmp(a, "--tokenizer") || !strcmp(a, "--top-p") || !strcmp(a, "--threads")) {
            if (i + 1 >= argc) return cli_usage("generate", "%s needs a value", a);
            const char *v = argv[++i];
            bool ok = true;
            if (!strcmp(a, "--prompt")) prompt = v;
            else if (!strcmp(a, "--tokenizer")) tokp = v;
            else if (!strcmp(a, "-n")) ok = cli_parse_int(v, 1, 1 << 24, &steps);
            else if (!strcmp(a, "--seed")) ok = cli_parse_int(v, 0, 0x7fffffffffffffffL, &seed);
            else if (!strcmp(a, "--threads")) ok = cli_parse_int(v, 0, 4096, &threads);
            else if (!strcmp(a, "--temp")) ok = cli_parse_double(v, &temp) && temp >= 0;
            else ok = cli_parse_double(v, &topp) && topp >= 0 && topp <= 1;
            if (!ok) return cli_usage("generate", "bad value '%s' for %s", v, a);
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("generate", "unknown option %s", a);
        } else if (!model) {
            model = a;
        } else {
            return cli_usage("generate", "unexpected argument '%s'", a);
        }
    }
    if (!model) return cli_usage("generate", "no MODEL given");
    cli_install_log(verbose);
    spqr_set_num_threads((int)threads);
    g_rng = seed >= 0 ? (uint64_t)seed * 0x9E3779B97F4A7C15ull + 1 : (uint64_t)(cli_now() * 1e9) | 1;
    spqr_model *m = NULL;
    spqr_status st = spqr_model_load(model, tokp, &m);
    if (st) return cli_fail(st);
    spqr_tokenizer *tok = spqr_model_tokenizer(m);
    if (!tok) {
        spqr_model_free(m);
        return cli_error("%s: no tokenizer; give one with --tokenizer", model);
    }
    int32_t *ids = NULL;
    size_t np = 0;
    st = spqr_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &np);
    spqr_session *s = NULL;
    if (!st && gpu) st = spqr_model_set_device(m, SPQR_DEVICE_AUTO);
    if (!st) st = spqr_session_new(m, &s);
    const spqr_config *cfg = spqr_model_config(m);
    int V = cfg->vocab_size;
    float *probs = malloc(sizeof(float) * (size_t)V);
    prob_idx *pi = malloc(sizeof(prob_idx) * (size_t)V);
    int rc = 0;
    if (!st && (!probs || !pi)) rc = cli_error("out of memory");
    if (steps > cfg->max_seq_len) steps = cfg->max_seq_len;
    double t0 = cli_now(), t1 = 0;
    int generated = 0;
    int32_t token = st || rc ? 0 : ids[0];
    for (long pos = 0; !st && !rc && pos < steps; pos++) {
        const float *logits;
        st = spqr_session_step(s, token, &logits);
        if (st) break;
        int32_t next;
        if ((size_t)pos + 1 < np) next = ids[pos + 1];
        else if (temp == 0) next = argmax(logits, V);
        else next = sample(logits, V, (float)temp, (float)topp, probs, pi);
        if (next == cfg->bos_id || next == cfg->eos_id) break;
        size_t len;
        const char *piece = spqr_tokenizer_decode(tok, token, next, &len);
        safe_print(piece, len);
        token = next;
        if (pos == 0) t1 = cli_now();
        generated++;
    }
    fflush(stdout); /* stdout holds exactly the generated text: no trailing newline added */
    free(ids);
    free(probs);
    free(pi);
    spqr_session_free(s);
    spqr_model_free(m);
    if (rc) return rc;
    if (st) return cli_fail(st);
    double el = cli_now() - (t1 > 0 ? t1 : t0);
    if (generated > 1) fprintf(stderr, "spqr generate: %d tokens, %.1f tokens/s\n", generated, (generated - 1) / el);
    return 0;
}
