/* test_pipeline.c - whole-model quantization on stories260K (llama2.c, hidden
 * 172 so groups are partial): the .spqr file written by the pipeline holds
 * exactly the layers the quantizer produced (dequantized bit for bit equal
 * to the simulated model), evaluating the file equals evaluating the
 * simulated model (|dnll| <= 1e-4), and bad options fail cleanly without
 * leaving an output file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eval/eval.h"
#include "io/container.h"
#include "formats/spqr/packed.h"
#include "model/model.h"
#include "quant/pipeline.h"
#include "quant/spqr/quantize.h"
#include "testutil.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOK "models/stories260K/tok512.bin"
#define TEXT "data/eval/tinystories_valid.txt"

static spqr_model *load(void) {
    char model[4200];
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    spqr_model *m = NULL;
    assert_int_equal(spqr_model_load(model, tu_shared(TOK), &m), SPQR_OK);
    return m;
}

static double eval_slice(spqr_model *m, const char *text, size_t n) {
    spqr_ppl_result r;
    assert_int_equal(spqr_eval_perplexity(m, text, n, 256, &r), SPQR_OK);
    return r.nll;
}

static void run_method(const char *method, int wbits, double tau) {
    if (!tu_have_shared(MODEL)) skip();
    char out[4200], calib[4200];
    snprintf(out, sizeof out, "%s/q-%s.spqr", tu_tmpdir(), method);
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    spqr_model *m = load();
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(calib, &text, &n), SPQR_OK);
    const spqr_quantizer *qz = spqr_quantizer_find(method);
    assert_non_null(qz);
    size_t slice = n < 20000 ? n : 20000;
    double fp = eval_slice(m, text + n - slice, slice);

    spqr_qparams qp;
    qz->defaults(&qp);
    qp.wbits = wbits;
    if (qp.method == SPQR_METHOD_SPQR) qp.tau = tau;
    else qp.beta1 = 32;
    spqr_quant_opts o;
    spqr_quant_opts_default(&o);
    o.method = qz;
    o.params = &qp;
    o.calib_path = calib;
    o.nsamples = 16;
    o.seqlen = 256;
    o.out_path = out;
    o.keep_simulated = 1;
    spqr_quant_summary s;
    spqr_status st = spqr_quantize_model(m, &o, &s);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    double sim = eval_slice(m, text + n - slice, slice);

    spqr_model *q = NULL;
    assert_int_equal(spqr_model_load(out, NULL, &q), SPQR_OK);
    /* every layer in the file dequantizes bit for bit to the simulated weights */
    const spqr_config *c = spqr_model_config(m);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
            const spqr_linear *a = &m->blocks[l].lin[k], *b = &q->blocks[l].lin[k];
            const spqr_dense *ad = spqr_linear_dense(a);
            assert_non_null(ad);
            assert_int_equal(ad->dt, SPQR_DT_F32);
            assert_string_equal(b->fmt->name, "spqr");
            float *w = malloc(sizeof(float) * (size_t)a->rows * a->cols);
            assert_int_equal(b->fmt->dequantize(b->payload, w), SPQR_OK);
            assert_memory_equal(w, ad->data, sizeof(float) * (size_t)a->rows * a->cols);
            free(w);
        }
    double file = eval_slice(q, text + n - slice, slice);
    printf("  method %s, %d bits: fp nll %.5f, simulated %.5f, from file %.5f (|d| %.2g), avg bits %.3f formula "
           "%.3f file, outliers %.3f%%\n",
           method, wbits, fp, sim, file, fabs(sim - file), s.avg_bits_formula, s.avg_bits_real,
           100 * s.outlier_share);
    assert_true(fabs(sim - file) <= 1e-4);
    assert_true(sim > fp - 0.01);     /* quantization does not help */
    assert_true(sim < fp * 1.25);     /* ... but stays close at these bit widths */
    spqr_model_free(q);
    spqr_model_free(m);
    free(text);
}

static void test_spqr_file_matches_simulation(void **s) {
    (void)s;
    run_method("spqr", 4, 0.2);
}
static void test_gptq_file_matches_simulation(void **s) {
    (void)s;
    run_method("gptq", 4, 0);
}
static void test_rtn_file_matches_simulation(void **s) {
    (void)s;
    run_method("rtn", 8, 0);
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void expect_cli_error(const char *opts, const char *needle) {
    if (!tu_have_shared(MODEL)) skip();
    char args[20000], out[4200], model[4200], tok[4200], *err = NULL;
    snprintf(out, sizeof out, "%s/bad.spqr", tu_tmpdir());
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    snprintf(tok, sizeof tok, "%s", tu_shared(TOK));
    snprintf(args, sizeof args, "quantize '%s' --tokenizer '%s' --method spqr %s -o '%s'", model, tok, opts, out);
    int rc = tu_run_cli(args, NULL, &err);
    printf("  %s -> rc %d: %s", opts, rc, err);
    assert_true(rc > 0);
    assert_non_null(strstr(err, needle));
    assert_false(file_exists(out));
    /* no temporary file left either */
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -q 'bad.spqr'", tu_tmpdir());
    assert_int_not_equal(system(cmd), 0);
    free(err);
}

static void test_bad_bits(void **s) {
    (void)s;
    expect_cli_error("--bits 9", "--bits");
    expect_cli_error("--bits 1", "--bits");
}
static void test_group_does_not_fit(void **s) {
    (void)s;
    expect_cli_error("--group-size 100000", "group size");
}
static void test_calib_too_short(void **s) {
    (void)s;
    char p[4200], opts[4400];
    snprintf(p, sizeof p, "%s/short.txt", tu_tmpdir());
    const char *t = "Once upon a time there was a tiny calibration text.";
    assert_int_equal(tu_write_file(p, t, strlen(t)), 0);
    snprintf(opts, sizeof opts, "--calib '%s' --nsamples 4 --seqlen 64", p);
    expect_cli_error(opts, "fewer than");
}

/* NaN in the weights reaches the calibration activations and the Hessian:
 * quantize stops with a clear error naming it and leaves no file. */
static void test_nan_hessian(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL) || !tu_have_shared(TEXT)) skip();
    char *buf = NULL;
    size_t n = 0;
    assert_int_equal(spqr_read_file(tu_shared(MODEL), &buf, &n), SPQR_OK);
    int32_t hdr[7];
    memcpy(hdr, buf, sizeof hdr);
    const int dim = hdr[0], vocab = hdr[5] < 0 ? -hdr[5] : hdr[5];
    /* the first weight of block 0's attention RMSNorm follows the embeddings */
    const size_t at = 28 + (size_t)vocab * dim * 4;
    assert_true(at + 4 <= n);
    const float nan = NAN;
    memcpy(buf + at, &nan, 4);
    char bad[4200], opts[20000];
    snprintf(bad, sizeof bad, "%s/nan.bin", tu_tmpdir());
    assert_int_equal(tu_write_file(bad, buf, n), 0);
    free(buf);
    char out[4200], tok[4200], calib[4200], *err = NULL;
    snprintf(out, sizeof out, "%s/nan.spqr", tu_tmpdir());
    snprintf(tok, sizeof tok, "%s", tu_shared(TOK));
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    snprintf(opts, sizeof opts, "quantize '%s' --tokenizer '%s' --method gptq --group-size 16 --calib '%s' --nsamples 4 --seqlen 64 -o '%s'",
             bad, tok, calib, out);
    int rc = tu_run_cli(opts, NULL, &err);
    printf("  NaN weight -> rc %d: %s", rc, err);
    assert_true(rc > 0);
    assert_non_null(strstr(err, "Hessian")); /* the error, not only the load warning */
    assert_non_null(strstr(err, "NaN"));
    assert_false(file_exists(out));
    free(err);
}

/* Copy a .spqr file through the container API, editing its metadata with
 * edit() and dropping the tensor called drop (if any). */
static void rewrite(const char *src, const char *dst, void (*edit)(char *), const char *drop) {
    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(src, &c), SPQR_OK);
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(dst, &w), SPQR_OK);
    for (size_t i = 0; i < spqr_container_count(c); i++) {
        spqr_ctensor t;
        assert_int_equal(spqr_container_tensor(c, i, &t), SPQR_OK);
        if (drop && !strcmp(t.name, drop)) continue;
        assert_int_equal(spqr_cwriter_add(w, t.name, t.dtype, t.ndim, t.dims, t.data, t.nbytes), SPQR_OK);
    }
    char *meta = strdup(spqr_container_metadata(c));
    if (edit) edit(meta);
    assert_int_equal(spqr_cwriter_set_metadata(w, meta), SPQR_OK);
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
    free(meta);
    spqr_container_close(c);
}

static void edit_wbits(char *m) { /* first layer claims 3-bit codes: section sizes disagree */
    char *p = strstr(m, "\"layers\"");
    assert_non_null(p);
    p = strstr(p, "\"wbits\":4");
    assert_non_null(p);
    p[8] = '3';
}
static void edit_rows(char *m) { /* first layer claims other rows than the config implies */
    char *p = strstr(m, "\"layers\"");
    assert_non_null(p);
    p = strstr(p, "\"rows\":");
    assert_non_null(p);
    p[7] = p[7] == '9' ? '1' : (char)(p[7] + 1);
}

static void edit_ocw(char *m) { /* first layer: an outlier count width that does not exist */
    char *p = strstr(m, "\"layers\"");
    assert_non_null(p);
    p = strstr(p, "\"ocw\":1");
    assert_non_null(p);
    p[6] = '3';
}
static void edit_ocw_width(char *m) { /* first layer: 2-byte counts, but the section holds 1-byte ones */
    char *p = strstr(m, "\"layers\"");
    assert_non_null(p);
    p = strstr(p, "\"ocw\":1");
    assert_non_null(p);
    p[6] = '2';
}
static void set_version(char *m, char v) {
    char *p = strstr(m, "\"model_format_version\":");
    assert_non_null(p);
    p[23] = v;
}
static void edit_version(char *m) { set_version(m, '9'); } /* a model layout from the future */
static void edit_layout_unknown(char *m) { /* first layer in a format this build does not know */
    char *p = strstr(m, "\"layout\":\"spqr\"");
    assert_non_null(p);
    memcpy(p + 10, "zzzz", 4);
}
static void drop_layout_keys(char *m, bool all) { /* "layout" -> "layouX": an unknown key */
    for (char *p = m; (p = strstr(p, "\"layout\":")) != NULL && (all || p == strstr(m, "\"layout\":")); p++) p[6] = 'X';
}
static void edit_no_layout(char *m) { drop_layout_keys(m, false); } /* layout 3 without the key */
static void edit_as_layout2(char *m) { /* what a file of model layout 2 looks like */
    drop_layout_keys(m, true);
    set_version(m, '2');
}

static void test_corrupt_model_files(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    char good[4200], bad[4300], model[4200], calib[4200];
    snprintf(good, sizeof good, "%s/good.spqr", tu_tmpdir());
    snprintf(bad, sizeof bad, "%s/corrupt.spqr", tu_tmpdir());
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    snprintf(model, sizeof model, "%s", tu_shared(MODEL));
    spqr_model *m = load();
    /* through the public API */
    spqr_quant_config *qc = NULL;
    assert_int_equal(spqr_quant_config_new("spqr", &qc), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "calib", calib), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "nsamples", "4"), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "seqlen", "64"), SPQR_OK);
    spqr_quant_summary sum;
    assert_int_equal(spqr_quantize(m, qc, good, &sum), SPQR_OK);
    spqr_quant_config_free(qc);
    spqr_model_free(m);
    struct { void (*edit)(char *); const char *drop; const char *needle; } cases[] = {
        {edit_wbits, NULL, "blk.0.q_proj"},
        {edit_rows, NULL, "blk.0.q_proj"},
        {NULL, "blk.2.up_proj.codes", "blk.2.up_proj.codes"},
        {NULL, "blk.1.o_proj.perm", "blk.1.o_proj.perm"},
        {edit_ocw, NULL, "outlier count width 3"},
        {edit_ocw_width, NULL, "ol_count"},
        {edit_no_layout, NULL, "has no \"layout\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite(good, bad, cases[i].edit, cases[i].drop);
        spqr_model *q = NULL;
        spqr_status st = spqr_model_load(bad, NULL, &q);
        printf("  corrupt case %zu -> %s: %s\n", i, spqr_status_string(st), spqr_last_error());
        assert_int_equal(st, SPQR_ERR_FORMAT);
        assert_null(q);
        assert_non_null(strstr(spqr_last_error(), "corrupt.spqr"));
        assert_non_null(strstr(spqr_last_error(), cases[i].needle));
    }
    { /* a newer model layout is refused by name, not misread */
        rewrite(good, bad, edit_version, NULL);
        spqr_model *q = NULL;
        spqr_status st = spqr_model_load(bad, NULL, &q);
        printf("  future layout -> %s: %s\n", spqr_status_string(st), spqr_last_error());
        assert_int_equal(st, SPQR_ERR_UNSUPPORTED);
        assert_null(q);
        assert_non_null(strstr(spqr_last_error(), "newer spqr"));
    }
    { /* a layer of a format this build does not know is refused by its name */
        rewrite(good, bad, edit_layout_unknown, NULL);
        spqr_model *q = NULL;
        spqr_status st = spqr_model_load(bad, NULL, &q);
        printf("  unknown layout -> %s: %s\n", spqr_status_string(st), spqr_last_error());
        assert_int_equal(st, SPQR_ERR_UNSUPPORTED);
        assert_non_null(strstr(spqr_last_error(), "'zzzz'"));
    }
    { /* files of model layout 2 (no "layout" keys: SpQR-packed layers) load and evaluate the same */
        rewrite(good, bad, edit_as_layout2, NULL);
        spqr_model *a = NULL, *b = NULL;
        assert_int_equal(spqr_model_load(good, NULL, &a), SPQR_OK);
        assert_int_equal(spqr_model_load(bad, NULL, &b), SPQR_OK);
        assert_string_equal(b->blocks[0].lin[SPQR_LIN_Q].fmt->name, "spqr");
        char *text = NULL;
        size_t n = 0;
        assert_int_equal(spqr_read_file(calib, &text, &n), SPQR_OK);
        double na = eval_slice(a, text, 8000), nb = eval_slice(b, text, 8000);
        printf("  layout 2 file: nll %.6f, layout 3 file: nll %.6f\n", nb, na);
        assert_true(na == nb);
        free(text);
        spqr_model_free(a);
        spqr_model_free(b);
    }
    /* a flipped code byte: loads (codes are not range-checked) but --verify names the tensor */
    rewrite(good, bad, NULL, NULL);
    spqr_container *c = NULL;
    spqr_ctensor t;
    FILE *f = fopen(bad, "r+b");
    assert_non_null(f);
    /* file offset of the tensor: data section starts at byte 128 with tensor 0 */
    assert_int_equal(spqr_container_open(bad, &c), SPQR_OK);
    assert_int_equal(spqr_container_find(c, "blk.3.down_proj.codes", &t), SPQR_OK);
    spqr_ctensor first;
    assert_int_equal(spqr_container_tensor(c, 0, &first), SPQR_OK);
    long pos = 128 + (long)((const char *)t.data - (const char *)first.data);
    spqr_container_close(c);
    assert_int_equal(fseek(f, pos + 3, SEEK_SET), 0);
    int ch = fgetc(f);
    assert_int_equal(fseek(f, pos + 3, SEEK_SET), 0);
    fputc(ch ^ 0x40, f);
    fclose(f);
    char args[9000], *err = NULL;
    snprintf(args, sizeof args, "inspect '%s' --verify", bad);
    int rc = tu_run_cli(args, NULL, &err);
    printf("  flipped code byte -> rc %d: %s", rc, err);
    assert_true(rc > 0);
    assert_non_null(strstr(err, "blk.3.down_proj.codes"));
    free(err);
}

static int teardown(void **s) {
    (void)s;
    tu_cleanup();
    return 0;
}



static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* The metadata text with the value of "seconds" cut out. */
static char *meta_without_seconds(const unsigned char *f, size_t n) {
    uint64_t off = le64(f + 64), len = le64(f + 72);
    assert_true(off <= n && len <= n - off);
    char *t = calloc(len + 1, 1);
    assert_non_null(t);
    memcpy(t, f + off, len);
    char *k = strstr(t, "\"seconds\":");
    assert_non_null(k);
    char *v = k + strlen("\"seconds\":"), *e = v;
    while (*e && strchr("0123456789.eE+-", *e)) e++;
    memmove(v, e, strlen(e) + 1);
    return t;
}

/* Two .spqr files are equal byte for byte apart from the wall time: the
 * header fields that depend on the metadata's length (file size, metadata
 * size) and its checksum, and the value of provenance "seconds". */
static void assert_same_but_wall_time(const char *a, const char *b) {
    char *fa = NULL, *fb = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(spqr_read_file(a, &fa, &na), SPQR_OK);
    assert_int_equal(spqr_read_file(b, &fb, &nb), SPQR_OK);
    const unsigned char *ua = (const unsigned char *)fa, *ub = (const unsigned char *)fb;
    assert_true(na > 128 && nb > 128);
    uint64_t moa = le64(ua + 64), mob = le64(ub + 64);
    assert_true(moa == mob && moa <= na);
    for (size_t i = 0; i < moa; i++) {
        if ((i >= 16 && i < 24) || (i >= 72 && i < 80) || (i >= 120 && i < 128)) continue;
        if (ua[i] != ub[i]) fail_msg("%s and %s differ at byte %zu", a, b, i);
    }
    assert_true(na - le64(ua + 72) == nb - le64(ub + 72));
    char *ma = meta_without_seconds(ua, na), *mb = meta_without_seconds(ub, nb);
    assert_string_equal(ma, mb);
    free(ma), free(mb), free(fa), free(fb);
}

/* The same inputs give the same file on 1 and 2 threads (issue: threaded
 * BLAS and LAPACK split sums by the thread count; blas_fixed.h, hinv.c):
 * equal content digests and equal bytes in every tensor; a different
 * calibration seed gives a different digest (the digest sees the content). */
static uint64_t quantize_digest(const char *method, const char *const *opts, int threads, const char *seed,
                                const char *out) {
    char calib[4200];
    snprintf(calib, sizeof calib, "%s", tu_shared(TEXT));
    spqr_model *m = load();
    spqr_quant_config *qc = NULL;
    assert_int_equal(spqr_quant_config_new(method, &qc), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "calib", calib), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "nsamples", "4"), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "seqlen", "128"), SPQR_OK);
    assert_int_equal(spqr_quant_config_set(qc, "seed", seed), SPQR_OK);
    for (int i = 0; opts[i]; i += 2) assert_int_equal(spqr_quant_config_set(qc, opts[i], opts[i + 1]), SPQR_OK);
    spqr_set_num_threads(threads);
    spqr_quant_summary sum;
    spqr_status st = spqr_quantize(m, qc, out, &sum);
    spqr_set_num_threads(0);
    if (st) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    spqr_quant_config_free(qc);
    spqr_model_free(m);
    spqr_file_info *fi = NULL;
    assert_int_equal(spqr_inspect_file(out, 1, &fi), SPQR_OK);
    uint64_t d = fi->content_digest;
    spqr_file_info_free(fi);
    return d;
}

static void test_same_file_on_any_thread_count(void **s) {
    (void)s;
    if (!tu_have_shared(MODEL)) skip();
    static const char *const gptq[] = {"bits", "3", "group-size", "16", NULL};
    static const char *const spqr[] = {"bits", "3", "group-size", "16", "stat-group-size", "16",
                                       "outlier-threshold", "0.2", NULL};
    static const char *const cc[] = {"clusters", "64", "cluster-dim", "4", "tune", "layer+block", "tune-epochs", "1",
                                     NULL};
    struct { const char *method; const char *const *opts; } cases[] = {{"gptq", gptq}, {"spqr", spqr},
                                                                       {"cluscomp", cc}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/t1-%s.spqr", tu_tmpdir(), cases[i].method);
        snprintf(b, sizeof b, "%s/t2-%s.spqr", tu_tmpdir(), cases[i].method);
        uint64_t d1 = quantize_digest(cases[i].method, cases[i].opts, 1, "0", a);
        uint64_t d2 = quantize_digest(cases[i].method, cases[i].opts, 2, "0", b);
        printf("  %s: content digest %016llx on 1 thread, %016llx on 2\n", cases[i].method, (unsigned long long)d1,
               (unsigned long long)d2);
        assert_true(d1 == d2);
        spqr_container *ca = NULL, *cb = NULL;
        assert_int_equal(spqr_container_open(a, &ca), SPQR_OK);
        assert_int_equal(spqr_container_open(b, &cb), SPQR_OK);
        assert_int_equal(spqr_container_count(ca), spqr_container_count(cb));
        for (size_t k = 0; k < spqr_container_count(ca); k++) {
            spqr_ctensor ta, tb;
            assert_int_equal(spqr_container_tensor(ca, k, &ta), SPQR_OK);
            assert_int_equal(spqr_container_tensor(cb, k, &tb), SPQR_OK);
            assert_string_equal(ta.name, tb.name);
            assert_int_equal(ta.nbytes, tb.nbytes);
            assert_memory_equal(ta.data, tb.data, ta.nbytes);
        }
        spqr_container_close(ca);
        spqr_container_close(cb);
        assert_same_but_wall_time(a, b);
        if (i == 0) { /* the digest sees the content: another calibration sample, another digest */
            uint64_t d3 = quantize_digest(cases[i].method, cases[i].opts, 2, "1", b);
            assert_true(d3 != d1);
        }
        remove(a);
        remove(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spqr_file_matches_simulation), cmocka_unit_test(test_gptq_file_matches_simulation),
        cmocka_unit_test(test_rtn_file_matches_simulation),  cmocka_unit_test(test_bad_bits),
        cmocka_unit_test(test_group_does_not_fit),           cmocka_unit_test(test_calib_too_short),
        cmocka_unit_test(test_nan_hessian),
        cmocka_unit_test(test_corrupt_model_files),
        cmocka_unit_test(test_same_file_on_any_thread_count),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
