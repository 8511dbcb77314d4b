/* test_tokenizer.c - tokenizers: SentencePiece-exact ids on the reference
 * eval texts, hand cases checked against SentencePiece 0.1.97, llama2.c
 * tokenizer.bin, crafted models for the rarer SentencePiece rules, and
 * malformed input. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"

/* ---- helpers ---------------------------------------------------------------- */

static char *read_all(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        size_t got = fread(b + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
        if (len == cap) b = realloc(b, (cap *= 2) + 1);
    }
    fclose(f);
    b[len] = 0;
    *n = len;
    return b;
}

static size_t crlf_to_lf(char *s, size_t n) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') continue;
        s[w++] = s[i];
    }
    return w;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static spqr_tokenizer *load_ok(const char *path) {
    spqr_tokenizer *t = NULL;
    spqr_status st = spqr_tokenizer_load(path, &t);
    if (st != SPQR_OK) fprintf(stderr, "load %s: %s\n", path, spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    assert_non_null(t);
    return t;
}

/* Encode s (no BOS) and compare with the expected ids. */
static void expect_ids(const spqr_tokenizer *t, const char *s, size_t len, const int32_t *want,
                       size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(spqr_tokenizer_encode(t, s, len, 0, &ids, &n), SPQR_OK);
    if (n != n_want || (n && memcmp(ids, want, n * sizeof *ids) != 0)) {
        fprintf(stderr, "text \"%.*s\": got", (int)len, s);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, ", want");
        for (size_t i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
        fail();
    }
    spqr_free(ids);
}

#define EXPECT(t, str, ...)                                                    \
    do {                                                                       \
        static const int32_t want_[] = {__VA_ARGS__};                          \
        expect_ids(t, str, sizeof(str) - 1, want_, sizeof want_ / sizeof *want_); \
    } while (0)
static const int32_t k_no_ids[1] = {0};
#define EXPECT_NONE(t, str) expect_ids(t, str, sizeof(str) - 1, k_no_ids, 0)

/* Concatenation of decode() over ids, starting after prev. */
static char *decode_all(const spqr_tokenizer *t, int32_t prev, const int32_t *ids, size_t n, size_t *len) {
    size_t cap = 64, w = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = spqr_tokenizer_decode(t, prev, ids[i], &l);
        while (w + l + 1 > cap) out = realloc(out, cap *= 2);
        memcpy(out + w, p, l);
        w += l;
        prev = ids[i];
    }
    out[w] = 0;
    *len = w;
    return out;
}

/* ---- ref-40m (LLaMA-2 32000 vocabulary) ------------------------------------ */

#define REF "models/ref-40m/"

static void test_reference_counts(void **state) {
    (void)state;
    if (!tu_have_shared(REF "REFERENCE.json") || !tu_have_shared(REF "tokenizer.model") ||
        !tu_have_shared(REF "tokenizer.json") || !tu_have_shared("data/eval/corpus_valid.txt"))
        skip();
    size_t rn;
    char *rj = read_all(tu_shared(REF "REFERENCE.json"), &rn);
    assert_non_null(rj);
    cJSON *ref = cJSON_Parse(rj);
    assert_non_null(ref);
    const cJSON *eval = cJSON_GetObjectItemCaseSensitive(ref, "eval");
    assert_non_null(eval);

    spqr_tokenizer *spm = load_ok(tu_shared(REF "tokenizer.model"));
    spqr_tokenizer *hf = load_ok(tu_shared(REF "tokenizer.json"));
    assert_int_equal(spqr_tokenizer_kind(spm), SPQR_TOK_SPM);
    assert_int_equal(spqr_tokenizer_kind(hf), SPQR_TOK_HF_JSON);
    assert_int_equal(spqr_tokenizer_vocab_size(spm), 32000);
    assert_int_equal(spqr_tokenizer_vocab_size(hf), 32000);

    static const struct {
        const char *key, *file;
        long expect;
    } texts[] = {
        {"corpus_valid@128", "data/eval/corpus_valid.txt", 612256},
        {"wikitext2_test@128", "data/eval/wikitext2_test.raw", 332755},
        {"ptb_test@128", "data/eval/ptb_test.txt", 114488},
        {"c4_sample@128", "data/eval/c4_sample.utf8", 86631},
    };
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        if (!tu_have_shared(texts[k].file)) continue;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(eval, texts[k].key);
        const cJSON *tt = cJSON_GetObjectItemCaseSensitive(e, "tokens_total");
        assert_true(cJSON_IsNumber(tt));
        assert_int_equal((long)tt->valuedouble, texts[k].expect);

        size_t n;
        char *text = read_all(tu_shared(texts[k].file), &n);
        assert_non_null(text);
        n = crlf_to_lf(text, n);
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        double t0 = now_s();
        assert_int_equal(spqr_tokenizer_encode(spm, text, n, 1, &a, &na), SPQR_OK);
        double t1 = now_s();
        assert_int_equal(spqr_tokenizer_encode(hf, text, n, 1, &b, &nb), SPQR_OK);
        double t2 = now_s();
        printf("%-16s %zu bytes: %zu tokens (reference %ld); tokenizer.model %.3f s, tokenizer.json %.3f s\n",
               texts[k].file + 10, n, na, (long)tt->valuedouble, t1 - t0, t2 - t1);
        assert_int_equal((long)na, (long)tt->valuedouble);
        /* O(n log n): about 0.4 s for the 2.2 MB corpus_valid (1 s under ASan);
         * a quadratic merge loop would take minutes */
        assert_true(t1 - t0 < 15.0 && t2 - t1 < 15.0);
        assert_int_equal(a[0], 1);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        spqr_free(a);
        spqr_free(b);
        free(text);
    }
    spqr_tokenizer_free(spm);
    spqr_tokenizer_free(hf);
    cJSON_Delete(ref);
    free(rj);
}

/* Expected ids come from SentencePiece 0.1.97 on tokenizer.model. */
static void hand_cases(const spqr_tokenizer *t) {
    EXPECT(t, "Hello world", 15043, 3186);
    EXPECT(t, "\n", 29871, 13);
    EXPECT(t, " leading", 29871, 8236);
    EXPECT(t, "  two", 259, 1023);
    EXPECT(t, " ", 259);
    EXPECT(t, "x", 921);
    EXPECT_NONE(t, "");
    /* emoji and a rare CJK character fall back to bytes */
    EXPECT(t, "\xF0\x9F\x98\x80", 29871, 243, 162, 155, 131);
    EXPECT(t, "\xE9\xBE\x98\xE4\xB8\x80", 29871, 236, 193, 155, 30287);
    /* special-token strings are plain text */
    EXPECT(t, "<s> hi </s> <unk>", 529, 29879, 29958, 7251, 1533, 29879, 29958, 529, 2960, 29958);
    /* invalid UTF-8: each bad byte reads as U+FFFD (spm_encode agrees) */
    EXPECT(t, "a\xFF" "b \xE4\xB8 c\xED\xA0\x80" "d\xEF\xBF\xBD", 263, 30140, 29890, 29871, 26308, 274, 26308,
           30140, 29881, 30140);

    /* the length is honoured: no NUL terminator needed */
    static const int32_t hw[] = {15043, 3186};
    expect_ids(t, "Hello worldXYZ", 11, hw, 2);
    /* add_bos */
    int32_t *ids;
    size_t n;
    assert_int_equal(spqr_tokenizer_encode(t, "Hello world", 11, 1, &ids, &n), SPQR_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 15043);
    spqr_free(ids);
    assert_int_equal(spqr_tokenizer_encode(t, NULL, 0, 1, &ids, &n), SPQR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    spqr_free(ids);
    assert_int_equal(spqr_tokenizer_bos(t), 1);
    assert_int_equal(spqr_tokenizer_eos(t), 2);
}

static void decode_cases(const spqr_tokenizer *t) {
    size_t l = 99;
    const char *s = spqr_tokenizer_decode(t, 1, 15043, &l);
    assert_int_equal(l, 5);
    assert_memory_equal(s, "Hello", 5);
    s = spqr_tokenizer_decode(t, 15043, 3186, &l);
    assert_int_equal(l, 6);
    assert_memory_equal(s, " world", 6);
    s = spqr_tokenizer_decode(t, 15043, 15043, &l);
    assert_int_equal(l, 6);
    assert_memory_equal(s, " Hello", 6);
    s = spqr_tokenizer_decode(t, 1, 13, &l); /* <0x0A> */
    assert_int_equal(l, 1);
    assert_int_equal(s[0], '\n');
    s = spqr_tokenizer_decode(t, 5, 243, &l); /* <0xF0> */
    assert_int_equal(l, 1);
    assert_int_equal((unsigned char)s[0], 0xF0);
    s = spqr_tokenizer_decode(t, 0, 1, &l); /* control tokens print nothing */
    assert_int_equal(l, 0);
    s = spqr_tokenizer_decode(t, 0, 32000, &l);
    assert_int_equal(l, 0);
    assert_string_equal(s, "");
    l = 7;
    s = spqr_tokenizer_decode(t, 0, -5, &l);
    assert_int_equal(l, 0);
    assert_string_equal(s, "");

    /* round trip */
    const char *text = "The quick brown fox \xF0\x9F\x98\x80 jumps  over\tthe lazy dog.\n\xE9\xBE\x98!";
    int32_t *ids;
    size_t n, dl;
    assert_int_equal(spqr_tokenizer_encode(t, text, strlen(text), 1, &ids, &n), SPQR_OK);
    char *back = decode_all(t, ids[0], ids + 1, n - 1, &dl);
    assert_int_equal(dl, strlen(text));
    assert_memory_equal(back, text, dl);
    free(back);
    spqr_free(ids);
}

static void test_ref40m_model(void **state) {
    (void)state;
    if (!tu_have_shared(REF "tokenizer.model")) skip();
    spqr_tokenizer *t = load_ok(tu_shared(REF "tokenizer.model"));
    hand_cases(t);
    decode_cases(t);
    spqr_tokenizer_free(t);
}

static void test_ref40m_json(void **state) {
    (void)state;
    if (!tu_have_shared(REF "tokenizer.json")) skip();
    spqr_tokenizer *t = load_ok(tu_shared(REF "tokenizer.json"));
    hand_cases(t);
    decode_cases(t);
    spqr_tokenizer_free(t);
}

static void test_raw_and_load_mem(void **state) {
    (void)state;
    if (!tu_have_shared(REF "tokenizer.model") || !tu_have_shared(REF "tokenizer.json")) skip();
    const char *files[] = {REF "tokenizer.model", REF "tokenizer.json"};
    for (int k = 0; k < 2; k++) {
        size_t n;
        char *bytes = read_all(tu_shared(files[k]), &n);
        assert_non_null(bytes);
        spqr_tokenizer *t = load_ok(tu_shared(files[k]));
        size_t rn = 0;
        const void *raw = spqr_tokenizer_raw(t, &rn);
        assert_int_equal(rn, n);
        assert_memory_equal(raw, bytes, n);
        /* reload from the raw bytes, with the kind given and detected */
        spqr_tokenizer *u = NULL, *v = NULL;
        assert_int_equal(spqr_tokenizer_load_mem(spqr_tokenizer_kind(t), raw, rn, "embedded", &u), SPQR_OK);
        assert_int_equal(spqr_tokenizer_load_mem(SPQR_TOK_AUTO, raw, rn, "embedded", &v), SPQR_OK);
        assert_int_equal(spqr_tokenizer_kind(u), spqr_tokenizer_kind(t));
        assert_int_equal(spqr_tokenizer_kind(v), spqr_tokenizer_kind(t));
        free(bytes); /* the tokenizers keep their own copy */
        EXPECT(u, "Hello world", 15043, 3186);
        EXPECT(v, "Hello world", 15043, 3186);
        spqr_tokenizer_free(u);
        spqr_tokenizer_free(v);
        spqr_tokenizer_free(t);
    }
    spqr_tokenizer_free(NULL);
}

/* ---- stories260K tok512.bin (llama2.c) --------------------------------------- */

static void test_stories260k(void **state) {
    (void)state;
    if (!tu_have_shared("models/stories260K/tok512.bin")) skip();
    spqr_tokenizer *t = load_ok(tu_shared("models/stories260K/tok512.bin"));
    assert_int_equal(spqr_tokenizer_kind(t), SPQR_TOK_LLAMA2C);
    assert_int_equal(spqr_tokenizer_vocab_size(t), 512);
    assert_int_equal(spqr_tokenizer_bos(t), 1);
    assert_int_equal(spqr_tokenizer_eos(t), 2);

    /* byte tokens <0xXX> are ids 3 + XX and decode to the raw byte */
    for (int b = 0; b < 256; b++) {
        size_t l;
        const char *s = spqr_tokenizer_decode(t, 5, 3 + b, &l);
        assert_int_equal(l, 1);
        assert_int_equal((unsigned char)s[0], b);
    }
    /* ids from llama2.c's encoder (dummy prefix " ", byte fallback) */
    EXPECT(t, "\xC3\xBC" "ber caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80", 410, 198, 191, 430, 285, 280,
           412, 431, 485, 410, 233, 154, 168, 233, 159, 175, 410, 243, 162, 155, 131);
    EXPECT(t, "\t tab", 410, 12, 259, 412, 430);
    EXPECT_NONE(t, "");

    /* BOS rule: the leading space of the first piece is dropped after BOS */
    const char *text = "Once upon a time, there was a little girl named Lily.";
    int32_t *ids;
    size_t n, dl;
    assert_int_equal(spqr_tokenizer_encode(t, text, strlen(text), 1, &ids, &n), SPQR_OK);
    assert_true(n > 3);
    assert_int_equal(ids[0], 1);
    size_t l1, l2;
    const char *after_bos = spqr_tokenizer_decode(t, 1, ids[1], &l1);
    const char *after_tok = spqr_tokenizer_decode(t, ids[1], ids[1], &l2);
    assert_int_equal(after_tok[0], ' ');
    assert_int_equal(l2, l1 + 1);
    assert_memory_equal(after_bos, after_tok + 1, l1);
    char *back = decode_all(t, 1, ids + 1, n - 1, &dl);
    assert_int_equal(dl, strlen(text));
    assert_memory_equal(back, text, dl);
    free(back);
    spqr_free(ids);
    spqr_tokenizer_free(t);
}

/* ---- crafted SentencePiece models -------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    while (b->n + n > b->cap) b->p = realloc(b->p, b->cap = b->cap ? b->cap * 2 : 256);
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_varint(buf *b, uint64_t v) {
    do {
        uint8_t c = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) c |= 0x80;
        put(b, &c, 1);
    } while (v);
}
static void put_ld(buf *b, int field, const void *d, size_t n) {
    put_varint(b, (uint64_t)field << 3 | 2);
    put_varint(b, n);
    put(b, d, n);
}
static void put_vi(buf *b, int field, int64_t v) {
    put_varint(b, (uint64_t)field << 3);
    put_varint(b, (uint64_t)v);
}
static void put_piece(buf *b, const char *s, float score, int type) {
    buf m = {0};
    put_ld(&m, 1, s, strlen(s));
    put_varint(&m, 2 << 3 | 5);
    put(&m, &score, 4);
    put_vi(&m, 3, type);
    put_ld(b, 1, m.p, m.n);
    free(m.p);
}

/* The same models as a Python script fed to SentencePiece 0.1.97. */
static buf craft_model(bool bytes, bool byte_fallback, bool remove_ws, bool dummy_prefix) {
    buf b = {0};
    put_piece(&b, "<unk>", 0, 2);
    put_piece(&b, "<s>", 0, 3);
    put_piece(&b, "</s>", 0, 3);
    if (bytes)
        for (int i = 0; i < 256; i++) {
            char s[8];
            snprintf(s, sizeof s, "<0x%02X>", i);
            put_piece(&b, s, 0, 6);
        }
    const char *chars[] = {"\xE2\x96\x81", "a", "b", "c", "d", "e"};
    for (int i = 0; i < 6; i++) put_piece(&b, chars[i], -10.0f - (float)i, 1);
    static const struct {
        const char *s;
        float score;
        int type;
    } merges[] = {{"ab", -1, 1},     {"bc", -2, 1},     {"abc", -1.5f, 1}, {"\xE2\x96\x81" "a", -0.5f, 1},
                  {"cd", -0.1f, 5},  {"cda", -3, 1},    {"dc", -2.5f, 5},  {"dcd", -0.2f, 1},
                  {"ea", -1, 5},     {"eab", -0.3f, 1}, {"\xE2\x96\x81\xE2\x96\x81", -4, 1},
                  {"XY", 0, 4},      {"XYa", -0.7f, 1}, {"a\xE2\x96\x81", -5, 1}, {"<s>a", -0.1f, 1}};
    for (size_t i = 0; i < sizeof merges / sizeof *merges; i++)
        put_piece(&b, merges[i].s, merges[i].score, merges[i].type);
    buf tr = {0};
    put_vi(&tr, 3, 2); /* BPE */
    put_vi(&tr, 35, byte_fallback);
    put_vi(&tr, 40, 0);
    put_vi(&tr, 41, 1);
    put_vi(&tr, 42, 2);
    put_vi(&tr, 43, -1);
    put_ld(&b, 2, tr.p, tr.n);
    buf ns = {0};
    put_ld(&ns, 1, "identity", 8);
    put_vi(&ns, 3, dummy_prefix);
    put_vi(&ns, 4, remove_ws);
    put_vi(&ns, 5, 1);
    put_ld(&b, 3, ns.p, ns.n);
    free(tr.p);
    free(ns.p);
    return b;
}

static spqr_tokenizer *load_buf(const buf *b, spqr_tok_kind kind) {
    spqr_tokenizer *t = NULL;
    spqr_status st = spqr_tokenizer_load_mem(kind, b->p, b->n, "crafted", &t);
    if (st != SPQR_OK) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    return t;
}

/* Expected ids: SentencePiece 0.1.97 (spm_encode for the invalid byte). */
static void test_crafted_spm(void **state) {
    (void)state;
    /* A: no byte pieces, remove_extra_whitespaces: UNUSED pieces are split
     * again, USER_DEFINED pieces never merge, unknowns fuse */
    buf a = craft_model(false, false, true, true);
    spqr_tokenizer *t = load_buf(&a, SPQR_TOK_AUTO);
    assert_int_equal(spqr_tokenizer_kind(t), SPQR_TOK_SPM);
    assert_int_equal(spqr_tokenizer_vocab_size(t), 24);
    EXPECT(t, "cd", 3, 6, 7);
    EXPECT(t, "eab", 3, 18);
    EXPECT(t, "XYa", 3, 20, 4);
    EXPECT(t, " zz z", 3, 0, 3, 0);
    EXPECT(t, "a cd dcd", 12, 3, 6, 7, 3, 16);
    EXPECT(t, "  ab  c  ", 12, 5, 3, 6);
    EXPECT(t, "ab\xFF" "c", 12, 5, 0, 6);
    EXPECT_NONE(t, "   ");
    spqr_tokenizer_free(t);
    free(a.p);

    /* B: byte fallback, whitespace kept */
    buf b = craft_model(true, true, false, true);
    t = load_buf(&b, SPQR_TOK_SPM);
    EXPECT(t, "cd", 259, 262, 263);
    EXPECT(t, "eab", 259, 274);
    EXPECT(t, "XYa", 259, 276, 260);
    EXPECT(t, " zz z", 275, 125, 125, 259, 125);
    EXPECT(t, "a cd dcd", 268, 259, 262, 263, 259, 272);
    EXPECT(t, "  ab  c  ", 275, 268, 261, 275, 262, 275);
    EXPECT(t, "ab\xFF" "c", 268, 261, 242, 194, 192, 262);
    spqr_tokenizer_free(t);
    free(b.p);

    /* C: no dummy prefix */
    buf c = craft_model(false, false, false, false);
    t = load_buf(&c, SPQR_TOK_SPM);
    EXPECT(t, "cd", 6, 7);
    EXPECT(t, "eab", 18);
    EXPECT(t, "XYa", 20, 4);
    EXPECT(t, " zz z", 3, 0, 3, 0);
    EXPECT(t, "a cd dcd", 22, 6, 7, 3, 16);
    EXPECT(t, "  ab  c  ", 3, 12, 5, 19, 6, 19);
    EXPECT(t, "ab\xFF" "c", 9, 0, 6);
    size_t l;
    const char *s = spqr_tokenizer_decode(t, 5, 0, &l); /* <unk> */
    assert_int_equal(l, 5);
    assert_memory_equal(s, " \xE2\x81\x87 ", 5);
    spqr_tokenizer_free(t);
    free(c.p);
}

/* ---- crafted tokenizer.json --------------------------------------------------- */

static const char *k_json_head =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
    "{\"id\":1,\"content\":\"<s>\",\"special\":true},{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xE2\x96\x81\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"}]},"
    "\"pre_tokenizer\":null,"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
    "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2,\"<0x63>\":3,\"<0x0A>\":4,\"\xE2\x96\x81\":5,\"a\":6,"
    "\"b\":7,\"ab\":8,\"\xE2\x96\x81" "ab\":9,\"\xE2\x96\x81" "a\":10},";

static spqr_tokenizer *load_json(const char *merges) {
    char text[2048];
    snprintf(text, sizeof text, "%s\"merges\":%s}}", k_json_head, merges);
    spqr_tokenizer *t = NULL;
    spqr_status st = spqr_tokenizer_load_mem(SPQR_TOK_AUTO, text, strlen(text), "crafted.json", &t);
    if (st != SPQR_OK) fprintf(stderr, "%s\n", spqr_last_error());
    assert_int_equal(st, SPQR_OK);
    assert_int_equal(spqr_tokenizer_kind(t), SPQR_TOK_HF_JSON);
    return t;
}

static void test_crafted_json(void **state) {
    (void)state;
    /* merge order decides: "a b" before "▁ a" gives ▁ab; the reverse ▁a b */
    const char *as_strings = "[\"a b\",\"\xE2\x96\x81 ab\",\"\xE2\x96\x81 a\"]";
    const char *as_arrays = "[[\"a\",\"b\"],[\"\xE2\x96\x81\",\"ab\"],[\"\xE2\x96\x81\",\"a\"]]";
    const char *reversed = "[[\"\xE2\x96\x81\",\"a\"],[\"a\",\"b\"],[\"\xE2\x96\x81\",\"ab\"]]";
    for (int k = 0; k < 2; k++) {
        spqr_tokenizer *t = load_json(k ? as_arrays : as_strings);
        assert_int_equal(spqr_tokenizer_vocab_size(t), 11);
        assert_int_equal(spqr_tokenizer_bos(t), 1);
        assert_int_equal(spqr_tokenizer_eos(t), 2);
        EXPECT(t, "ab ab", 9, 9);
        EXPECT(t, "abc\n", 9, 3, 4); /* c and \n by byte fallback */
        EXPECT(t, "a<s>", 10, 0); /* "<s>" is text; '<' 's' '>' fuse into one <unk> */
        size_t l;
        const char *s = spqr_tokenizer_decode(t, 1, 9, &l);
        assert_int_equal(l, 2);
        assert_memory_equal(s, "ab", 2);
        s = spqr_tokenizer_decode(t, 9, 9, &l);
        assert_int_equal(l, 3);
        assert_memory_equal(s, " ab", 3);
        s = spqr_tokenizer_decode(t, 9, 4, &l);
        assert_int_equal(l, 1);
        assert_int_equal(s[0], '\n');
        spqr_tokenizer_free(t);
    }
    spqr_tokenizer *t = load_json(reversed);
    EXPECT(t, "ab ab", 10, 7, 10, 7);
    spqr_tokenizer_free(t);
}

/* Metaspace pre-tokenizer (newer LLaMA-family tokenizer.json): the prefix is
 * added only when the text does not start with a space, and with split=true
 * no merge crosses a U+2581. */
static void test_crafted_json_metaspace(void **state) {
    (void)state;
    for (int split = 0; split < 2; split++) {
        char text[1024];
        snprintf(text, sizeof text,
                 "{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\","
                 "\"prepend_scheme\":\"always\",\"split\":%s},\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\","
                 "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2,\"\xE2\x96\x81\":3,\"a\":4,\"b\":5,\"ab\":6,"
                 "\"\xE2\x96\x81" "ab\":7,\"\xE2\x96\x81" "a\":8,\"b\xE2\x96\x81\":9},"
                 "\"merges\":[\"b \xE2\x96\x81\",\"a b\",\"\xE2\x96\x81 ab\",\"\xE2\x96\x81 a\"]}}",
                 split ? "true" : "false");
        spqr_tokenizer *t = NULL;
        assert_int_equal(spqr_tokenizer_load_mem(SPQR_TOK_HF_JSON, text, strlen(text), "meta.json", &t), SPQR_OK);
        EXPECT(t, " ab", 7);
        if (split) {
            EXPECT(t, "ab ab", 7, 7);
        } else {
            EXPECT(t, "ab ab", 8, 9, 6);
        }
        spqr_tokenizer_free(t);
    }
}

/* ---- malformed input ----------------------------------------------------------- */

static void expect_load_error(const char *path, const char *must_contain) {
    spqr_tokenizer *t = (spqr_tokenizer *)(uintptr_t)1;
    spqr_status st = spqr_tokenizer_load(path, &t);
    if (st == SPQR_OK) fprintf(stderr, "%s: loaded but should not\n", path);
    assert_int_not_equal(st, SPQR_OK);
    assert_null(t);
    const char *msg = spqr_last_error();
    if (!strstr(msg, path) || (must_contain && !strstr(msg, must_contain))) {
        fprintf(stderr, "message \"%s\" lacks \"%s\" / \"%s\"\n", msg, path, must_contain ? must_contain : "");
        fail();
    }
}

static void write_tmp(const char *name, const void *d, size_t n, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", tu_tmpdir(), name);
    assert_int_equal(tu_write_file(path, d, n), 0);
}

static void test_malformed(void **state) {
    (void)state;
    char path[512];
    /* garbage bytes */
    uint8_t junk[4096];
    tu_seed(42);
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)tu_rand_u64();
    write_tmp("garbage.bin", junk, sizeof junk, path, sizeof path);
    expect_load_error(path, NULL);
    junk[0] = 0x0A; /* looks like a protobuf */
    write_tmp("garbage.model", junk, sizeof junk, path, sizeof path);
    expect_load_error(path, NULL);
    write_tmp("empty.model", "", 0, path, sizeof path);
    expect_load_error(path, "empty");
    write_tmp("zeros.bin", "\0\0\0\0\0\0\0\0", 8, path, sizeof path);
    expect_load_error(path, NULL);
    expect_load_error("/nonexistent/dir/tokenizer.model", NULL);

    /* tokenizer.json problems */
    const char *no_vocab = "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}";
    write_tmp("novocab.json", no_vocab, strlen(no_vocab), path, sizeof path);
    expect_load_error(path, "model.vocab");
    const char *bad_json = "{\"model\":{\"vocab\":{\"a\":0,";
    write_tmp("broken.json", bad_json, strlen(bad_json), path, sizeof path);
    expect_load_error(path, "JSON");
    const char *bad_merge = "{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}";
    write_tmp("badmerge.json", bad_merge, strlen(bad_merge), path, sizeof path);
    expect_load_error(path, "merge 0");
    const char *bad_id = "{\"model\":{\"vocab\":{\"a\":-3}}}";
    write_tmp("badid.json", bad_id, strlen(bad_id), path, sizeof path);
    expect_load_error(path, "invalid id");
    const char *bytelevel = "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"vocab\":{\"a\":0}}}";
    write_tmp("bytelevel.json", bytelevel, strlen(bytelevel), path, sizeof path);
    expect_load_error(path, "byte-level");

    /* llama2.c tokenizer.bin cut inside a record */
    if (tu_have_shared("models/stories260K/tok512.bin")) {
        size_t n;
        char *d = read_all(tu_shared("models/stories260K/tok512.bin"), &n);
        write_tmp("tok_cut.bin", d, n - 3, path, sizeof path);
        expect_load_error(path, "llama2.c");
        free(d);
    }

    /* truncated tokenizer.model, at many lengths */
    if (tu_have_shared(REF "tokenizer.model")) {
        size_t n;
        char *d = read_all(tu_shared(REF "tokenizer.model"), &n);
        size_t cuts[] = {1, 2, 5, 100, 1000, 12345, n / 2, n - 100, n - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
            write_tmp("trunc.model", d, cuts[i], path, sizeof path);
            expect_load_error(path, NULL);
        }
        free(d);
    }

    /* a model with a non-BPE type is refused clearly */
    buf m = craft_model(false, false, false, true);
    buf u = {0};
    put(&u, m.p, m.n);
    buf tr = {0};
    put_vi(&tr, 3, 1); /* UNIGRAM, merged into trainer_spec */
    put_ld(&u, 2, tr.p, tr.n);
    write_tmp("unigram.model", u.p, u.n, path, sizeof path);
    expect_load_error(path, "UNIGRAM");
    free(m.p);
    free(u.p);
    free(tr.p);

    /* encode argument checks */
    if (tu_have_shared("models/stories260K/tok512.bin")) {
        spqr_tokenizer *t = load_ok(tu_shared("models/stories260K/tok512.bin"));
        int32_t *ids;
        size_t n;
        assert_int_equal(spqr_tokenizer_encode(t, NULL, 5, 0, &ids, &n), SPQR_ERR_INVALID_ARG);
        assert_int_equal(spqr_tokenizer_encode(t, "x", 1, 0, NULL, &n), SPQR_ERR_INVALID_ARG);
        spqr_tokenizer_free(t);
    }
}

/* Random corruption of real files: errors are fine, crashes are not (run this
 * under ASan/UBSan). Whatever loads must also encode. */
static void test_corruption(void **state) {
    (void)state;
    const char *files[] = {REF "tokenizer.model", "models/stories260K/tok512.bin"};
    tu_seed(7);
    for (int k = 0; k < 2; k++) {
        if (!tu_have_shared(files[k])) continue;
        size_t n;
        uint8_t *orig = (uint8_t *)read_all(tu_shared(files[k]), &n);
        uint8_t *d = malloc(n);
        int loaded = 0;
        for (int it = 0; it < 60; it++) {
            memcpy(d, orig, n);
            int flips = 1 + (int)(tu_rand_u64() % 8);
            for (int f = 0; f < flips; f++) {
                size_t at = (size_t)(tu_rand_u64() % n);
                if (it % 2) at %= 64; /* often hit the headers */
                d[at] = (uint8_t)tu_rand_u64();
            }
            size_t len = it % 3 == 0 ? (size_t)(tu_rand_u64() % n) : n;
            spqr_tokenizer *t = NULL;
            if (spqr_tokenizer_load_mem(SPQR_TOK_AUTO, d, len, files[k], &t) == SPQR_OK) {
                loaded++;
                int32_t *ids;
                size_t ni;
                const char *txt = "Hello world \xF0\x9F\x98\x80\n a\xFF";
                if (spqr_tokenizer_encode(t, txt, strlen(txt), 1, &ids, &ni) == SPQR_OK) {
                    for (size_t i = 0; i < ni; i++) {
                        assert_true(ids[i] >= 0 && ids[i] < spqr_tokenizer_vocab_size(t));
                        size_t l;
                        spqr_tokenizer_decode(t, i ? ids[i - 1] : -1, ids[i], &l);
                    }
                    spqr_free(ids);
                }
                spqr_tokenizer_free(t);
            } else {
                assert_non_null(strstr(spqr_last_error(), files[k]));
            }
        }
        printf("%s: %d of 60 corrupted copies still loaded\n", files[k], loaded);
        free(d);
        free(orig);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_counts), cmocka_unit_test(test_ref40m_model),
        cmocka_unit_test(test_ref40m_json),      cmocka_unit_test(test_raw_and_load_mem),
        cmocka_unit_test(test_stories260k),      cmocka_unit_test(test_crafted_spm),
        cmocka_unit_test(test_crafted_json),     cmocka_unit_test(test_crafted_json_metaspace),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_corruption),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_cleanup();
    return rc;
}
